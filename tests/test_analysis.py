"""Downstream analysis of a run folder: markers recover planted genes, ORA finds planted sets, refusals are clean.

The run folder is written from the built-in simulator WITHOUT training (labels = ground truth, embedding = one-hot of
the truth plus noise): the test is about the analysis, not the model.
"""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cli import app
from spamo.analysis import (ENRICHMENT_COLUMNS, MARKER_COLUMNS, PAGA_COLUMNS, benjamini_hochberg,
                            fetch_enrichr_library, parse_gmt_text)
from spamo import run_folder
from spamo.datasets import load_folder
from spamo.errors import MissingDependencyError, SpamoInputError
from spamo.simulate import simulate

N_SPOTS = 600
MODALITY_FILES = {"RNA": "adata_RNA.h5ad", "ADT": "adata_ADT.h5ad", "ATAC": "adata_ATAC.h5ad"}


def write_run_folder(run_dir: Path, data_dir: Path, sim, seed: int = 0, drop_every: int = 50) -> list[str]:
    """A `spamo run`-shaped folder: embedding.h5ad (truth as domains, noisy one-hot embedding) and labels.txt."""
    data_dir.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, adata in sim.modalities.items():
        adata.write_h5ad(data_dir / MODALITY_FILES[name])
    (data_dir / "GT_1.txt").write_text("\n".join(str(int(v)) for v in sim.truth) + "\n")
    spot_names = np.asarray(next(iter(sim.modalities.values())).obs_names).astype(str)
    kept = np.arange(len(spot_names)) % drop_every != 7  # a few spots filtered out, like preprocessing does
    truth = sim.truth[kept]
    rng = np.random.default_rng(seed)
    fused = np.zeros((kept.sum(), 64), dtype=np.float32)
    fused[np.arange(kept.sum()), truth] = 1.0
    fused += rng.normal(0, 0.3, size=fused.shape).astype(np.float32)
    fused /= np.linalg.norm(fused, axis=1, keepdims=True)
    embedding = run_folder.RunEmbedding(
        spot_names=spot_names[kept], coords=np.asarray(sim.coords, dtype=np.float64)[kept], fused=fused,
        per_modality={name: fused for name in sim.modalities}, labels=truth, truth=truth, data_type="Simulation",
        dataset="sim", sources={n: str((data_dir / MODALITY_FILES[n]).resolve()) for n in sim.modalities})
    run_folder.write_embedding(embedding, run_dir / run_folder.EMBEDDING_FILE)
    run_folder.write_labels(truth, run_dir / run_folder.LABELS_FILE)
    return list(spot_names[kept])


def write_gmt(path: Path, planted: dict, genes: list[str], seed: int = 1, n_decoys: int = 20) -> Path:
    """The planted set of each domain plus decoy sets of random genes of the same size.

    The first planted set is written upper-case, as human gene sets meet mouse gene names.
    """
    rng = np.random.default_rng(seed)
    lines = [f"PLANTED_{d}\tplanted in domain {d}\t" + "\t".join(n.upper() if i == 0 else n for n in names)
             for i, (d, names) in enumerate(planted.items())]
    size = len(next(iter(planted.values())))
    for i in range(n_decoys):
        lines.append(f"DECOY_{i}\trandom genes\t" + "\t".join(rng.choice(genes, size, replace=False)))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """One simulated run folder analysed through the CLI (markers, PAGA, ORA + prerank on a test GMT)."""
    root = tmp_path_factory.mktemp("analysis")
    sim = simulate(N_SPOTS, seed=3, layout="sim")
    write_run_folder(root / "run", root / "data", sim)
    rna = sim.modalities["RNA"]
    planted = {str(k): list(v) for k, v in rna.uns["planted_features"].items()}
    gmt = write_gmt(root / "test_sets.gmt", planted, list(rna.var_names))
    result = CliRunner().invoke(app, ["analyze", str(root / "run"), "--gene-sets", str(gmt), "--quiet",
                                      "--permutations", "50"])
    assert result.exit_code == 0, result.output
    return {"root": root, "sim": sim, "planted": planted, "gmt": gmt, "out": root / "run" / "analysis"}


def test_outputs_and_parquet_schemas(analysed):
    out = analysed["out"]
    for name in ("markers.parquet", "enrichment.parquet", "paga.parquet", "markers_RNA.png", "markers_ADT.png",
                 "markers_ATAC.png", "top_markers_spatial.png", "paga.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert pq.read_schema(out / "markers.parquet").names == MARKER_COLUMNS
    assert pq.read_schema(out / "enrichment.parquet").names == ENRICHMENT_COLUMNS
    assert pq.read_schema(out / "paga.parquet").names == PAGA_COLUMNS
    markers = pq.read_table(out / "markers.parquet").to_pandas()
    assert set(markers["modality"]) == {"RNA", "ADT", "ATAC"}
    assert set(markers["domain"]) == {"0", "1", "2", "3", "4"}
    assert markers["pval_adj"].between(0, 1).all() and (markers["pval_adj"] >= markers["pval"] - 1e-12).all()
    enrichment = pq.read_table(out / "enrichment.parquet").to_pandas()
    assert set(enrichment["method"]) == {"ora", "prerank"}
    assert set(enrichment["source"]) == {"test_sets.gmt"}
    assert enrichment.loc[enrichment["method"] == "ora", "nes"].isna().all()
    assert enrichment.loc[enrichment["method"] == "prerank", "nes"].notna().all()
    paga = pq.read_table(out / "paga.parquet").to_pandas()
    assert len(paga) == 5 * 4 // 2 and paga["connectivity"].between(0, 1).all()
    assert not list(out.parent.glob(".analysis.*")), "temporary folder left behind"


def test_top_markers_recover_planted_genes(analysed):
    """Every domain RNA separates: >= 80 % of its top 20 RNA markers are its planted genes (per modality too)."""
    markers = pd.read_parquet(analysed["out"] / "markers.parquet")
    for modality, adata in analysed["sim"].modalities.items():
        planted = adata.uns["planted_features"]
        assert planted, modality
        for domain, names in planted.items():
            top = markers[(markers["modality"] == modality) & (markers["domain"] == str(domain))]
            top = top.sort_values("rank").head(20)
            precision = np.isin(top["feature"], list(names)).mean()
            assert precision >= 0.8, (modality, domain, precision)
            assert (top["logfoldchange"].head(5) > 0).all()


def test_ora_ranks_planted_set_first(analysed):
    enrichment = pd.read_parquet(analysed["out"] / "enrichment.parquet")
    for method in ("ora", "prerank"):
        for domain in analysed["planted"]:
            rows = enrichment[(enrichment["method"] == method) & (enrichment["domain"] == domain)]
            if method == "prerank":
                rows = rows.sort_values(["nes"], ascending=False)
            assert rows.iloc[0]["gene_set"] == f"PLANTED_{domain}", (method, domain, rows.head(3))
            assert rows.iloc[0]["p_adj"] < 0.05
    var_names = set(analysed["sim"].modalities["RNA"].var_names)
    reported = {g for genes in enrichment["genes"] for g in genes.split(";") if g}
    assert reported and reported <= var_names, "genes must be reported by their feature names"
    ora = enrichment[enrichment["method"] == "ora"]
    decoys = ora[ora["gene_set"].str.startswith("DECOY")]
    assert (decoys["p_adj"] > 0.05).all()


def test_python_api_is_deterministic_and_honours_groupby(analysed, tmp_path):
    """Same seed, same tables; another label key and t-test work through the function the evaluation calls."""
    from spamo.analysis import analyze

    run = analysed["root"] / "run"
    first = analyze(run, groupby="truth", method="t-test", out_dir=tmp_path / "a", n_top=10, seed=5)
    second = analyze(run, groupby="truth", method="t-test", out_dir=tmp_path / "b", n_top=10, seed=5)
    pd.testing.assert_frame_equal(first.markers, second.markers)
    pd.testing.assert_frame_equal(first.paga, second.paga)
    assert first.markers.groupby(["domain", "modality"]).size().eq(10).all()
    assert first.enrichment.empty and pq.read_schema(tmp_path / "a" / "enrichment.parquet").names == \
        ENRICHMENT_COLUMNS
    assert set(first.figures) >= {"paga", "top_markers_spatial", "markers_RNA"}


def test_in_memory_analysis_gives_the_run_folder_tables_and_writes_nothing_without_out_dir(analysed, tmp_path):
    """analyze_data on the loaded data in memory = analyze on the run folder (one code path, one raw-file reader)."""
    from spamo.analysis import analyze, analyze_data

    run = analysed["root"] / "run"
    from_folder = analyze(run, groupby="truth", out_dir=tmp_path / "folder", n_top=15, seed=2, permutations=0)
    stored = ad.read_h5ad(run / "embedding.h5ad")
    sim = load_folder(analysed["root"] / "data", "Simulation", modality_files=MODALITY_FILES)  # as `spamo run` does
    labels = stored.obs["truth"].astype(int).to_numpy()  # integers, as a RunResult holds them
    in_memory = analyze_data(sim, labels, stored.obsm["X_spamo"], spot_names=stored.obs_names, groupby="truth",
                             n_top=15, seed=2, permutations=0)
    assert in_memory.out_dir is None and not in_memory.figures
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]
    pd.testing.assert_frame_equal(in_memory.markers, from_folder.markers)
    pd.testing.assert_frame_equal(in_memory.paga, from_folder.paga)
    with pytest.raises(SpamoInputError, match="labels"):
        analyze_data(sim, labels[:-1], stored.obsm["X_spamo"], spot_names=stored.obs_names)


# ------------------------------------------------------------------------------------------------ refusals


def _refused(args: list[str], out: Path) -> str:
    result = CliRunner().invoke(app, ["analyze", *args, "--out", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not out.exists(), "a refused analysis wrote output"
    assert not list(out.parent.glob(f".{out.name}.*")), "temporary folder left behind"
    return lines[0]


def test_refuses_folder_without_embedding(tmp_path):
    (tmp_path / "empty_run").mkdir()
    line = _refused([str(tmp_path / "empty_run")], tmp_path / "out")
    assert "embedding.h5ad" in line


def test_refuses_unknown_label_key_listing_available(analysed, tmp_path):
    line = _refused([str(analysed["root"] / "run"), "--groupby", "celltype"], tmp_path / "out")
    assert "celltype" in line and "domain" in line and "truth" in line


def test_refuses_missing_gmt(analysed, tmp_path):
    line = _refused([str(analysed["root"] / "run"), "--gene-sets", str(tmp_path / "nope.gmt")], tmp_path / "out")
    assert "nope.gmt" in line


@pytest.mark.parametrize("text, problem", [
    ("SET_A\tdesc\tG1\tG2\nSET_B\tonly-two-fields\n", "line 2: fewer than 3"),
    ("SET_A\tdesc\tG1\nSET_B\tdesc\t\t\n", "line 2: gene set 'SET_B' is empty"),
    ("SET_A\tdesc\tG1\n\nSET_A\tdesc\tG2\n", "line 3: duplicate gene-set name 'SET_A'"),
])
def test_refuses_malformed_gmt(analysed, tmp_path, text, problem):
    gmt = tmp_path / "bad.gmt"
    gmt.write_text(text)
    line = _refused([str(analysed["root"] / "run"), "--gene-sets", str(gmt)], tmp_path / "out")
    assert problem in line and "bad.gmt" in line


def test_refuses_vanished_modality_file(analysed, tmp_path):
    emb = ad.read_h5ad(analysed["root"] / "run" / "embedding.h5ad")
    meta = dict(emb.uns["spamo"])
    meta["sources"] = dict(meta["sources"], ADT=str(tmp_path / "moved" / "adata_ADT.h5ad"))
    emb.uns["spamo"] = meta
    (tmp_path / "run").mkdir()
    emb.write_h5ad(tmp_path / "run" / "embedding.h5ad")
    line = _refused([str(tmp_path / "run")], tmp_path / "out")
    assert "adata_ADT.h5ad" in line and "no longer exists" in line


def test_refuses_unreachable_enrichr_and_unknown_method(analysed, tmp_path, monkeypatch):
    import socket

    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("SPAMO_ENRICHR_URL", f"http://127.0.0.1:{port}/Enrichr")
    line = _refused([str(analysed["root"] / "run"), "--online-gene-sets", "GO_Biological_Process_2023"],
                    tmp_path / "out")
    assert "--online-gene-sets" in line and "cannot reach Enrichr" in line
    line = _refused([str(analysed["root"] / "run"), "--method", "logreg"], tmp_path / "out")
    assert "--method" in line


# ------------------------------------------------------------------------------------------------ small parts


def test_enrichr_library_over_loopback_http(monkeypatch):
    """The online source: Enrichr's text format (empty description, trailing tabs, ",1.0" weights) from a real
    HTTP server on loopback; an unknown library is a clean refusal."""
    body = "SET_ONE\t\tGENE1,1.0\tGENE2,1.0\t\nSET_TWO\t\tGENE3\tGENE4\tGENE5\t\n".encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            if "libraryName=Known" in self.path:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("SPAMO_ENRICHR_URL", f"http://127.0.0.1:{server.server_address[1]}/Enrichr")
        assert fetch_enrichr_library("Known") == {"SET_ONE": ["GENE1", "GENE2"],
                                                  "SET_TWO": ["GENE3", "GENE4", "GENE5"]}
        with pytest.raises(SpamoInputError, match="no library 'Unknown'") as info:
            fetch_enrichr_library("Unknown")
        assert not isinstance(info.value, MissingDependencyError)
    finally:
        server.shutdown()
        server.server_close()


def test_gmt_parser_and_bh():
    sets = parse_gmt_text("A\td\tx\ty\tx\n\nB\thttp://x\tz\n", "t.gmt")
    assert sets == {"A": ["x", "y"], "B": ["z"]}
    with pytest.raises(SpamoInputError, match="line 1: empty gene-set name"):
        parse_gmt_text("\td\tx\n", "t.gmt")
    with pytest.raises(SpamoInputError, match="no gene sets"):
        parse_gmt_text("\n\n", "t.gmt")
    p = np.array([0.01, 0.04, 0.03, 0.5])
    np.testing.assert_allclose(benjamini_hochberg(p), [0.04, 0.16 / 3, 0.16 / 3, 0.5])
    from scipy.stats import false_discovery_control

    rng = np.random.default_rng(0)
    q = rng.uniform(size=200) ** 3
    np.testing.assert_allclose(benjamini_hochberg(q), false_discovery_control(q, method="bh"))
