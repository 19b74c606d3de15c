"""A clustering backend registered in the driver (`spamo.clustering.register_backend`) is known in Ray's workers: a
search's trials and an evaluation's seed runs cluster with it, and one that cannot travel is refused in one line
before anything starts.

The end-to-end case runs as a user's script in a fresh interpreter, the backend defined in its `__main__` (as in a
notebook), with a real local Ray; the backend leaves a marker file per call, named by the process that ran it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from spamo.choices import CLUSTER_METHODS
from spamo.clustering.base import BACKENDS, register_backend, user_backends
from spamo.errors import SpamoInputError

ROOT = Path(__file__).resolve().parents[1]

USER_SCRIPT = textwrap.dedent("""
    import json, os, sys, uuid
    from pathlib import Path

    import numpy as np
    import ray
    import spamo
    from spamo.clustering import register_backend

    base = Path(sys.argv[1])
    MARKERS = str(base / "markers")

    @register_backend("marker-bands")
    def marker_bands(points, n_clusters, request):
        '''K bands of equal size along the first principal component; leaves a marker named by its process.'''
        Path(MARKERS, f"{os.getpid()}-{uuid.uuid4().hex}").write_text(str(len(points)))
        edges = np.quantile(points[:, 0], np.linspace(0, 1, n_clusters + 1)[1:-1])
        return np.searchsorted(edges, points[:, 0])

    Path(MARKERS).mkdir()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = spamo.tune(data_dir=base / "sim", data_type="10x", n_clusters=4, num_samples=1, epochs=2,
                            name="registered", space=str(base / "space.toml"), scheduler="none", max_concurrent=1,
                            storage=str(base / "ray"), report_every=1, cpus_per_trial=1, gpus_per_trial=0,
                            metric="ari")
        tuned = sorted(os.listdir(MARKERS))
        tables = spamo.evaluate([result.path], top_k=1, seeds=1, out=base / "eval", cross=False, plots=False)
    finally:
        ray.shutdown()
    print(json.dumps({"driver": os.getpid(), "statuses": list(result.trials["status"]),
                      "methods": [json.loads(c)["cluster_method"] for c in result.trials["config_json"]],
                      "tuned": tuned, "all": sorted(os.listdir(MARKERS)),
                      "seed_runs": tables["seed_runs"].num_rows}))
""")

SPACE = """
[space]
lr = { type = "loguniform", low = 1.0e-3, high = 1.0e-2 }

[fixed]
cluster_method = "marker-bands"
"""


@pytest.mark.ray
def test_a_backend_registered_in_the_drivers_main_clusters_the_trials_and_the_seed_runs(tmp_path):
    from spamo.simulate import write_simulation

    write_simulation(tmp_path / "sim", n_spots=300, seed=2, layout="hln", n_domains=4)
    (tmp_path / "space.toml").write_text(SPACE)
    script = tmp_path / "user_script.py"
    script.write_text(USER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["statuses"] == ["finished"] and summary["methods"] == ["marker-bands"]
    # the trial's final clustering ran the backend in a Ray worker, not in the driver
    tuned_pids = {int(name.split("-")[0]) for name in summary["tuned"]}
    assert tuned_pids and summary["driver"] not in tuned_pids
    # and the evaluation's seed run (trained again in a worker) clustered with it too
    assert summary["seed_runs"] == 1
    evaluated_pids = {int(name.split("-")[0]) for name in set(summary["all"]) - set(summary["tuned"])}
    assert evaluated_pids and summary["driver"] not in evaluated_pids


@pytest.fixture
def registered():
    """Backends registered through the public function for one test, taken back after it."""
    names = []

    def register(name, func):
        names.append(name)
        return register_backend(name)(func)

    before = dict(BACKENDS)
    yield register
    for name in names:
        if name in before:
            BACKENDS[name] = before[name]
        else:
            BACKENDS.pop(name, None)
            CLUSTER_METHODS.discard(name)


def test_only_the_users_backends_travel_and_one_that_replaces_a_built_in_name_does(registered):
    assert user_backends() == {}  # the built-in ones every worker has from importing spamo

    def halves(points, n_clusters, request):
        return (points[:, 0] > np.median(points[:, 0])).astype(int)

    registered("halves", halves)
    registered("kmeans", halves)
    assert user_backends() == {"halves": halves, "kmeans": halves}


def test_a_backend_that_cannot_be_pickled_is_refused_in_one_line_before_the_search_or_evaluation_starts(
        registered, tmp_path):
    import spamo
    from spamo.clustering import register_backend

    lock = threading.Lock()

    def locked_bands(points, n_clusters, request):
        with lock:
            return np.zeros(len(points), dtype=int)

    registered("locked-bands", locked_bands)
    with pytest.raises(SpamoInputError) as tuned:
        spamo.tune("sim", num_samples=1, epochs=1, name="locked", storage=str(tmp_path / "runs"))
    line = str(tuned.value)
    assert "\n" not in line and line.startswith("cluster_method: the backend 'locked-bands'") and "lock" in line
    assert "cannot be sent to Ray's workers" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing written

    (tmp_path / "a_run").mkdir()
    with pytest.raises(SpamoInputError) as evaluated:
        spamo.evaluate([tmp_path / "a_run"], out=tmp_path / "eval")
    assert str(evaluated.value) == line and not (tmp_path / "eval").exists()
