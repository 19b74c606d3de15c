"""The attention's precision setting (`attention_precision`): float32 is exact and the default; bfloat16 rounds q, k
and v for PyTorch's fused kernel and is a CUDA option, so off CUDA it is refused before any data is read (`spamo
run`, `spamo.fit`) or any trial starts (`spamo tune`). Its effect on a trained embedding is checked on a GPU in
tests/test_cuda.py; benchmarks/check_attention_precision.py measures it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import spamo
from spamo.choices import ATTENTION_PRECISIONS
from spamo.config import SpamoConfig
from spamo.errors import SpamoInputError
from spamo.model.attention import PRECISIONS, attention
from spamo.model.module import SpamoModule
from spamo.training import check_device

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals of a machine without CUDA")

BF16_SPACE = """
[space]
lr = { type = "loguniform", low = 1.0e-3, high = 2.0e-2 }

[fixed]
attention_precision = "bfloat16"
"""


def test_the_precisions_the_config_accepts_are_the_ones_the_attention_computes():
    assert tuple(PRECISIONS) == ATTENTION_PRECISIONS
    assert SpamoConfig().attention_precision == "float32" and PRECISIONS["float32"] is None


def test_bfloat16_rounds_the_fused_kernels_inputs_and_gives_float32_back():
    torch.manual_seed(0)
    q, k, v = (torch.randn(700, 64, dtype=torch.float64, requires_grad=True) for _ in range(3))
    exact = attention(q, k, v, 0.0)
    low = attention(q, k, v, 0.0, precision="bfloat16")
    assert low.dtype == torch.float64
    error = (low - exact).abs().max().item() / exact.abs().max().item()
    assert 1e-5 < error < 3e-2  # rounded (8-bit mantissa), not garbage
    rounded = [x.detach().to(torch.bfloat16).double() for x in (q, k, v)]
    assert torch.allclose(low, attention(*rounded, 0.0), atol=3e-2 * exact.abs().max().item())
    (grad_exact,) = torch.autograd.grad(exact.square().sum(), q)
    (grad_low,) = torch.autograd.grad(low.square().sum(), q)
    assert grad_low.dtype == torch.float64
    assert (grad_low - grad_exact).norm() / grad_exact.norm() < 5e-2


def test_an_unknown_precision_and_cpu_dropout_in_bfloat16_are_refused():
    q = k = v = torch.randn(50, 8)
    with pytest.raises(ValueError, match="precision must be one of"):
        attention(q, k, v, 0.0, precision="float16")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            attention(q, k, v, 0.1, precision="bfloat16")


def test_the_module_passes_its_precision_to_every_cross_attention():
    config = SpamoConfig(data_type="10x", attention_precision="bfloat16").resolve(3, 100)
    module = SpamoModule([10, 12, 8], config)
    assert [c.precision for c in module.fusion.cross] == ["bfloat16"] * 3


def test_a_precision_outside_the_choices_is_refused_in_one_line_before_anything_runs(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "run", "--dataset", "sim", "--data-root",
                           str(tmp_path / "data"), "--attention-precision", "float16", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "error: attention_precision: must be one of float32, bfloat16, got 'float16'"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no data generated, no output folder


@NO_CUDA
def test_off_cuda_bfloat16_is_refused_before_the_data_is_read(tmp_path):
    with pytest.raises(SpamoInputError, match="attention_precision: bfloat16 runs on a CUDA device only"):
        check_device(SpamoConfig(attention_precision="bfloat16"))
    assert check_device(SpamoConfig()).type == "cpu"
    with pytest.raises(SpamoInputError) as refused:
        spamo.fit({"RNA": object()}, data_type="10x", attention_precision="bfloat16")
    assert refused.value.where == "attention_precision"  # not the data, which would be refused next
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "run", "--data-dir", str(tmp_path / "no-such-data"),
                           "--data-type", "10x", "--attention-precision", "bfloat16", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: attention_precision: bfloat16"), done.stderr
    assert "device is cpu" in lines[0]
    assert not out.exists()


@NO_CUDA
@pytest.mark.ray
def test_a_search_whose_trials_have_no_gpu_refuses_bfloat16_before_any_trial(simulated_folder, tmp_path):
    data = simulated_folder("precision_sim", 300)
    space = tmp_path / "space.toml"
    space.write_text(BF16_SPACE)
    storage = tmp_path / "runs"
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "tune", "--data-dir", str(data), "--data-type",
                           "Simulation", "--n-clusters", "5", "--space", str(space), "--num-samples", "2",
                           "--gpus-per-trial", "0", "--cpus-per-trial", "1", "--storage", str(storage),
                           "--name", "bf16"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "attention_precision: bfloat16 runs on a CUDA device only" in done.stderr
    assert "no GPU share (--gpus-per-trial 0)" in done.stderr
    assert not (storage / "bf16").exists()
