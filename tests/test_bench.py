"""experiments/bench.py: FLOPs counted per sample, independent of the batch, for the generator and
a tokenizer stage; MFU against the peaks measured in the same run; the attention FLOPs by hand;
the preset latent shapes and the datasheet peaks; the --amp / --compile choices.

Run: python -m pytest tests/test_bench.py        (a few seconds)
"""
import json
import os
import shutil
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "experiments"))
import bench  # noqa: E402


def test_bench_counts_flops_per_sample_independent_of_batch_and_writes_json(tmp_path):
    """`experiments/bench.py generator` on CPU: FLOPs per sample do not depend on the batch;
    attention is counted (the CPU's fused kernel is not known to the counter); the paper's latent
    (96 x 16 x 16 from DINOv2-B at 224 px) is the default shape of the paper preset."""
    for what in ("generator", "tokenizer"):
        common = [what, "--preset", "tiny", "--device", "cpu", "--seconds", "0"]
        a = bench.main([*common, "--batch-size", "2"])
        b = bench.main([*common, "--batch-size", "6", "--json", str(tmp_path / "b.json")])
        assert a["gflop_per_sample"] == pytest.approx(b["gflop_per_sample"], rel=1e-3) and a["gflop_per_sample"] > 0
        assert json.load(open(tmp_path / "b.json"))["batch"] == 6 and b["samples_per_s"] > 0
        # MFU against both peaks measured in the same run, on a CPU too
        assert b["fp32_matmul_tflops"] > 0 and b["bf16_matmul_tflops"] > 0
        assert b["mfu_fp32_matmul_tflops"] == pytest.approx(b["achieved_tflops"] / b["fp32_matmul_tflops"], rel=2e-2)

    class Attention(torch.nn.Module):  # attention alone, q, k, v = x scaled by learnt vectors
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3, 16))

        def forward(self, x, t, cond):
            q, k, v = (x * self.w[i] for i in range(3))  # (B, H, L, d)
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    # forward: Q K^T and P V, 2 B H L^2 d each; backward: two products per forward product
    x = torch.randn(4, 2, 8, 16)  # B 4, H 2, L 8, d 16
    assert bench.train_step_flops(Attention(), x, None, torch.rand(4), torch.randn_like(x)) == 6 * 2 * 4 * 2 * 8 * 8 * 16
    assert bench.preset_latent_shape("paper") == (96, 16, 16) and bench.preset_latent_shape("world") == (24, 8, 8)
    assert bench.datasheet_peak("NVIDIA H100 80GB HBM3") == 989.4 and bench.datasheet_peak("NVIDIA H100 PCIe") == 756.0
    assert bench.datasheet_peak("NVIDIA GeForce RTX 4090") is None


def test_auto_precision_and_compilation_say_what_they_chose():
    """auto: bf16 on a CPU only with bf16 units; compilation only for long runs; forced modes obey."""
    from common import choose_amp, choose_compile, cpu_has_bf16
    dtype, why = choose_amp("auto", torch.device("cpu"))
    assert (dtype is torch.bfloat16) == cpu_has_bf16() and why.startswith("auto: ")
    assert choose_amp("bf16", torch.device("cpu"))[0] is torch.bfloat16 and choose_amp("off", torch.device("cpu"))[0] is None
    cpu = torch.device("cpu")
    assert not choose_compile("auto", cpu, 6)[0] and "too few" in choose_compile("auto", cpu, 6)[1]
    assert choose_compile("auto", cpu, 10**6)[0] == (shutil.which("cc") is not None or shutil.which("gcc") is not None)
    assert choose_compile("on", cpu, 6)[0] and not choose_compile("off", cpu, 10**6)[0]
