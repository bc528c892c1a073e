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
    """auto: bf16 on a CPU only with bf16 units and compiled kernels (eager bf16 autocast measured
    slower than fp32 there); compilation only for long runs; forced modes obey."""
    from common import choose_amp, choose_compile, cpu_has_bf16
    cpu = torch.device("cpu")
    dtype, why = choose_amp("auto", cpu, compiled=True)
    assert (dtype is torch.bfloat16) == cpu_has_bf16() and why.startswith("auto: ")
    dtype, why = choose_amp("auto", cpu, compiled=False)
    assert dtype is None and why.startswith("auto: fp32")
    for compiled in (False, True):
        assert choose_amp("bf16", cpu, compiled)[0] is torch.bfloat16 and choose_amp("off", cpu, compiled)[0] is None
    assert not choose_compile("auto", cpu, 6)[0] and "too few" in choose_compile("auto", cpu, 6)[1]
    assert choose_compile("auto", cpu, 10**6)[0] == (shutil.which("cc") is not None or shutil.which("gcc") is not None)
    assert choose_compile("on", cpu, 6)[0] and not choose_compile("off", cpu, 10**6)[0]


def write_metrics(run, records):
    os.makedirs(run, exist_ok=True)
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def test_curves_compare_a_mode_gap_with_the_seed_noise(tmp_path):
    """`bench.py curves`: windowed means of the logged loss (a step logged twice, as after a resume,
    counts once with its last value); a mode that shifts the curve by much less than two seeds
    differ is within the noise, one that shifts it by much more is not."""
    # loss = step, logged every 25 steps; step 50 first logged as 1000, then again (resumed) as 50
    recs = [{"step": s, "loss": float(s)} for s in range(25, 201, 25)]
    write_metrics(tmp_path / "hand", recs[:2] + [{"step": 50, "loss": 1000.0}] + recs[1:])
    assert bench.window_means(str(tmp_path / "hand"), 200, 100) == [62.5, 162.5]  # (25+50+75+100)/4, ...

    g = torch.Generator().manual_seed(0)
    steps = torch.arange(25, 1001, 25)

    def run(name, seed_noise, shift):
        loss = 2 / steps.sqrt() + seed_noise + shift
        write_metrics(tmp_path / name, [{"step": int(s), "loss": float(v)} for s, v in zip(steps, loss)])
        return str(tmp_path / name)

    noise = [0.02 * torch.randn(len(steps), generator=g) for _ in range(2)]
    a = [run(f"a{i}", noise[i], 0.0) for i in range(2)]
    close = [run(f"close{i}", noise[i], 0.001) for i in range(2)]
    far = [run(f"far{i}", noise[i], 0.1) for i in range(2)]
    res = bench.main(["curves", "--a", *a, "--b", *close, "--steps", "1000", "--window", "100",
                      "--json", str(tmp_path / "c.json"), "--figure", str(tmp_path / "c.png")])
    assert res["within_noise"] and res["rms_mode_gap"] == pytest.approx(0.001, rel=1e-3)
    assert len(res["mode_gap"]) == 10 and os.path.getsize(tmp_path / "c.png") > 0
    assert json.load(open(tmp_path / "c.json"))["rms_seed_spread_a"] == pytest.approx(res["rms_seed_spread_a"])
    assert not bench.curve_gap(a, far, 1000, 100)["within_noise"]
