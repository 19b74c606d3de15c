"""The project's modules import each other one way: no import circle, not even through a function-level import; and
a command imports only what it uses (`spamo --help` no torch, `spamo run` no Ray)."""

from __future__ import annotations

import ast
import gc
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from spamo.gc_control import WALK_AFTER, imports_without_gc, thaw

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("spamo", "search", "evaluation")


def module_files() -> dict[str, Path]:
    files = {"cli": ROOT / "cli.py"}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    return files


def import_graph(within_packages: bool = False) -> dict[str, set[str]]:
    """Module -> the project's modules it imports anywhere in its file (top level or inside a function); a package's
    imports of its own submodules (and theirs of it) are left out unless `within_packages`."""
    files = module_files()

    def owner(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {owner(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {owner(node.module)} | {owner(f"{node.module}.{alias.name}") for alias in node.names}
        # a package and its own submodules import each other by design (the package re-exports them)
        graph[module] = {t for t in targets - {None, module}
                         if within_packages or (not module.startswith(t + ".") and not t.startswith(module + "."))}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_among_the_projects_modules():
    graph = import_graph()
    assert len(graph) > 40 and "spamo.clustering.base" in graph and graph["spamo.datasets"]
    assert circles(graph) == []


def test_the_circle_check_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# ---------------------------------------------------------------------------------------------------------- weight
HEAVY = ("torch", "sklearn", "ray", "optuna", "scanpy", "anndata", "mudata", "umap", "igraph", "gseapy")
LOADED = r"""
import sys
sys.argv = ["spamo", *sys.argv[1:]]
import cli
try:
    cli.main()
except SystemExit:
    pass
print("\nLOADED:", " ".join(sorted(m for m in HEAVY if m in sys.modules)))
"""


def modules_loaded_by(*args: str, cwd: Path) -> set[str]:
    """The heavy libraries a `spamo` command line has imported by the time it exits (in a fresh interpreter)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{LOADED}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(done.stdout.rpartition("\nLOADED:")[2].split())


@pytest.mark.slow
def test_a_run_imports_torch_scikit_learn_and_anndata_and_none_of_the_other_heavy_libraries(tmp_path):
    """A 1-epoch `spamo run` (R's mclust where installed, the picture drawn) on a small simulation: no scanpy (only
    the selection of highly variable genes, for more than 3,000 genes, needs it), no umap or numba (the picture's
    default layout is spamo's own), no igraph (community clustering only), no Ray, Optuna, mudata or gseapy."""
    from spamo.simulate import write_simulation

    write_simulation(tmp_path / "data", n_spots=300, seed=0, layout="hln", n_domains=4)
    loaded = modules_loaded_by("run", "--data-dir", str(tmp_path / "data"), "--data-type", "10x", "--n-clusters", "4",
                               "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet", cwd=tmp_path)
    assert loaded == {"torch", "sklearn", "anndata"}
    assert (tmp_path / "run" / "domains.png").exists()


def test_help_imports_none_of_the_heavy_libraries(tmp_path):
    """`spamo --help` and a command's help read the settings' declarations only (the allowed values come from
    spamo.choices): no torch, scikit-learn, Ray, Optuna or scanpy."""
    assert modules_loaded_by("--help", cwd=tmp_path) == set()
    assert modules_loaded_by("run", "--help", cwd=tmp_path) == set()


def third_party_imports(path: Path) -> set[str]:
    """The top-level names of every library a file imports (anywhere in it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_a_single_run_imports_neither_ray_nor_optuna_nor_the_analysis_stack():
    """What `spamo run` and `spamo.fit` can reach (spamo.api_run and everything it imports, function-level imports
    included) holds no search, evaluation or analysis module and no import of Ray, Optuna or gseapy.
    Checked on the import graph rather than in a fresh interpreter: the answer is the same, without importing torch
    for it."""
    graph, files = import_graph(within_packages=True), module_files()
    reached, todo = set(), ["spamo.api_run"]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph[module])
    assert {"spamo.pipeline", "spamo.training", "spamo.datasets.load", "spamo.clustering.mixture"} <= reached
    assert not {m for m in reached if m.startswith(("search", "evaluation", "spamo.analysis", "spamo.api_search"))}
    libraries = set().union(*(third_party_imports(files[m]) for m in reached))
    assert "torch" in libraries and not libraries & {"ray", "optuna", "gseapy"}  # scanpy: HVG selection needs it


# ---------------------------------------------------------------------------------------------------------- collector
def test_import_blocks_share_one_pause_of_the_collector_across_threads_and_keep_it_off_if_it_was():
    """The pause ends when the last block ends, in whichever thread; a collector switched off before stays off."""
    assert gc.isenabled()
    started, release = threading.Event(), threading.Event()

    def helper():
        with imports_without_gc():
            started.set()
            release.wait(timeout=60)

    with imports_without_gc():
        with imports_without_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
        thread = threading.Thread(target=helper)
        thread.start()
        assert started.wait(timeout=60)
    assert not gc.isenabled()  # the helper's block still runs
    release.set()
    thread.join()
    assert gc.isenabled()
    gc.disable()
    try:
        with imports_without_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_freeze_ended_pause_freezes_instead_of_walking_and_thaw_gives_back_only_its_own_freeze():
    """`imports_without_gc(freeze=True)` over more than WALK_AFTER new objects leaves them frozen (no full walk) and
    the collector on; `thaw()` unfreezes them; where objects were frozen already the pause walks as before and
    `thaw()` leaves that freeze alone."""
    assert gc.isenabled() and gc.get_freeze_count() == 0
    walks = []

    def count_full_walks(phase, info):
        if phase == "start" and info["generation"] == 2:
            walks.append(info)

    gc.callbacks.append(count_full_walks)
    try:
        with imports_without_gc(freeze=True):
            kept = [[i] for i in range(WALK_AFTER + 10_000)]
        assert gc.isenabled() and gc.get_freeze_count() >= len(kept) and walks == []
        thaw()
        assert gc.get_freeze_count() == 0
        thaw()  # nothing left to give back
        gc.freeze()  # someone else's freeze
        theirs = gc.get_freeze_count()
        with imports_without_gc(freeze=True):
            more = [[i] for i in range(WALK_AFTER + 10_000)]
        assert len(walks) == 1 and gc.get_freeze_count() == theirs  # walked, not frozen
        thaw()
        assert gc.get_freeze_count() == theirs
    finally:
        gc.callbacks.remove(count_full_walks)
        gc.unfreeze()
    assert len(kept) == len(more)


def test_after_a_run_the_process_exits_with_every_object_frozen_and_the_earlier_exit_handlers_run():
    """`pipeline.run` asks for it (`spamo.gc_control.no_cycle_search_at_exit`); asking twice freezes once, and the
    exit handlers registered before it still run, after it (atexit runs the last registered first)."""
    script = ("import atexit, gc\n"
              "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0))\n"
              "from spamo.gc_control import no_cycle_search_at_exit\n"
              "no_cycle_search_at_exit(); no_cycle_search_at_exit()\n"
              "print('frozen before exit:', gc.get_freeze_count() > 0)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["frozen before exit: False", "frozen at exit: True"]


# ---------------------------------------------------------------------------------------------------------- size
MAX_LINES = 400


def test_no_module_of_the_package_is_over_400_lines():
    """One job per module (aim: 300 lines); a module that grows past 400 is split into a sub-package by job."""
    sizes = {path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines())
             for path in (ROOT / "spamo").rglob("*.py")}
    assert len(sizes) > 40
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
