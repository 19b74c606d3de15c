"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Small problems run fastest, and reproducibly, on one thread (CI has two cores shared with Ray workers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def simulated_folder(tmp_path_factory):
    """A function (name, n_spots, seed=3) -> the folder of a built-in simulation (the sim layout) of that size,
    written once per session under its own temporary folder `name`: the data the real-Ray searches train on."""
    from spamo.simulate import write_simulation

    def write(name: str, n_spots: int, seed: int = 3):
        out = tmp_path_factory.mktemp(name) / "sim"
        write_simulation(out, n_spots=n_spots, seed=seed)
        return out

    return write
