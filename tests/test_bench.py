"""experiments/bench.py: FLOPs counted per sample, independent of the batch; the attention
FLOPs by hand; the preset latent shapes and the datasheet peaks.

Run: python -m pytest tests/test_bench.py        (a few seconds)
"""
import json
import os
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
    common = ["generator", "--preset", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "1"]
    a = bench.main([*common, "--batch-size", "2"])
    b = bench.main([*common, "--batch-size", "6", "--json", str(tmp_path / "b.json")])
    assert a["gflop_per_sample"] == pytest.approx(b["gflop_per_sample"], rel=1e-3) and a["gflop_per_sample"] > 0
    assert json.load(open(tmp_path / "b.json"))["batch"] == 6 and b["samples_per_s"] > 0
    assert "mfu" not in b  # no GPU peak to compare with on a CPU

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
