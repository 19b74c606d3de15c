"""The tune-run folder format (search/run_folder.py), without Ray: absolute paths, one-line refusals, one reader."""

from __future__ import annotations

import os
import shutil

import pytest

from search.run_folder import RUN_FILE, TuneRequest, load_prepared, read, read_request, write_request
from spamo.errors import SpamoInputError


@pytest.fixture
def data(tmp_path):
    from spamo.simulate import write_simulation

    folder = tmp_path / "sim"
    write_simulation(folder, n_spots=300, seed=1)
    return folder


def test_the_request_is_stored_with_absolute_paths_and_read_back_from_any_folder(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = tmp_path / "space.toml"
    space.write_text("[space]\nlr = { type = \"loguniform\", low = 1e-3, high = 1e-2 }\n")
    request = TuneRequest(name="r", num_samples=2, data_dir="sim", data_type="Simulation", n_clusters=5,
                          space="space.toml", storage="runs", max_retries=1, checkpoint_every=5)
    write_request(tmp_path / "runs" / "r", request)
    expected = request.resolved()
    text = (tmp_path / "runs" / "r" / RUN_FILE).read_text()
    assert f'data_dir = "{data}"' in text and f'space = "{space}"' in text and f'storage = "{tmp_path / "runs"}"' in text
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    back = read_request(tmp_path / "runs" / "r")
    assert back == expected and back.max_retries == 1 and back.checkpoint_every == 5
    prepared, base = load_prepared(back)  # the same data, found from another folder
    assert prepared.n_spots == 300 and base.n_clusters == 5
    assert not (elsewhere / "Data").exists()  # nothing generated here


def test_moved_data_unknown_fields_and_wrong_types_are_refused_in_one_line(data, tmp_path):
    run_dir = tmp_path / "run"
    write_request(run_dir, TuneRequest(name="r", num_samples=2, data_dir=str(data), data_type="Simulation"))
    shutil.move(data, tmp_path / "moved")
    with pytest.raises(SpamoInputError, match=f"data_dir {data} no longer exists .moved or deleted"):
        read_request(run_dir)
    text = (run_dir / RUN_FILE).read_text()
    (run_dir / RUN_FILE).write_text(text + 'colour = "blue"\n')
    with pytest.raises(SpamoInputError, match=r"unknown field\(s\) colour"):
        read_request(run_dir, check_paths=False)
    (run_dir / RUN_FILE).write_text(text.replace("num_samples = 2", 'num_samples = "two"'))
    with pytest.raises(SpamoInputError, match="'num_samples' should be a int"):
        read_request(run_dir, check_paths=False)
    with pytest.raises(SpamoInputError, match="the tune run has no trials.parquet"):
        read(run_dir)
    with pytest.raises(SpamoInputError, match="tune run folder not found"):
        read(tmp_path / "absent")
    assert os.path.isdir(run_dir)
