"""Tests for toy_manifold.py (Section 3.2, Figure 3, Equation 1).

Run: python -m pytest tests/test_toy_manifold.py
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import toy_manifold as tm
from conftest import ROOT

def _dist_to_strokes(pts):
    """Distance of each point to the nearest stroke centre line (densely sampled)."""
    centre = np.concatenate(tm.ps_strokes(points_per_unit=2000))
    from scipy.spatial import cKDTree
    return cKDTree(centre).query(pts, k=1)[0]


def test_ps_sampler_lies_on_the_strokes_with_the_stated_width():
    width = 0.03
    pts = tm.sample_ps(20000, torch.Generator().manual_seed(0), width=width).numpy()
    d = _dist_to_strokes(pts)
    # isotropic 2D jitter: the distance to the line is |N(0, width)| across the stroke,
    # so its RMS is ~width and almost nothing lies beyond 5 widths
    assert 0.7 * width < np.sqrt((d ** 2).mean()) < 1.1 * width
    assert (d > 5 * width).mean() < 1e-3
    # both letters carry mass: "P" left of x = 0, "S" right of it
    left = (pts[:, 0] < 0).mean()
    assert 0.3 < left < 0.7
    # seeded: the same generator seed gives the same points, another seed other points
    again = tm.sample_ps(20000, torch.Generator().manual_seed(0), width=width)
    assert torch.equal(again, torch.from_numpy(pts))
    other = tm.sample_ps(20000, torch.Generator().manual_seed(1), width=width)
    assert not torch.equal(again, other)


@pytest.mark.parametrize("h", [2, 8, 128])
def test_isometry_has_orthonormal_columns(h):
    Q = tm.random_isometry(h, torch.Generator().manual_seed(h))
    assert Q.shape == (h, 2)
    torch.testing.assert_close(Q.T @ Q, torch.eye(2, dtype=Q.dtype), atol=1e-12, rtol=0)
    # it preserves distances: |Q z1 - Q z2| = |z1 - z2|
    z = torch.randn(50, 2, dtype=Q.dtype)
    torch.testing.assert_close(torch.cdist(z @ Q.T, z @ Q.T), torch.cdist(z, z))


def test_optimal_velocity_of_a_single_point_is_the_straight_line():
    # one data point x0: the posterior is certain, so E[eps - x0 | x_t] = (x_t - x0) / t
    x0 = torch.tensor([[0.3, -0.2, 1.0]], dtype=torch.float64)
    xt = torch.randn(7, 3, dtype=torch.float64)
    t = torch.rand(7, dtype=torch.float64) * 0.9 + 0.1
    v = tm.optimal_velocity(xt, t, x0)
    torch.testing.assert_close(v, (xt - x0) / t[:, None])


def test_optimal_velocity_minimises_the_flow_matching_loss():
    # the closed form is the regression minimiser: any perturbation raises the Monte-Carlo loss
    g = torch.Generator().manual_seed(0)
    data = tm.sample_ps(64, g)                                     # (N, 2) float64
    n = 20000
    x0 = data[torch.randint(0, 64, (n,), generator=g)]
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.9 + 0.1
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    xt = (1 - t[:, None]) * x0 + t[:, None] * eps
    v = tm.optimal_velocity(xt, t, data)
    loss = ((v - (eps - x0)) ** 2).sum(1).mean()
    for delta in (0.05, -0.05):
        assert ((v + delta - (eps - x0)) ** 2).sum(1).mean() > loss
    assert (((1 + 0.05) * v - (eps - x0)) ** 2).sum(1).mean() > loss


@pytest.mark.parametrize("h", [3, 8, 64])
def test_equation_1_holds_to_float_precision(h):
    r = tm.check_eq1(h=h, dtype=torch.float64)
    assert r["max_rel_dev"] < 1e-10
    r32 = tm.check_eq1(h=h, dtype=torch.float32)
    assert r32["max_rel_dev"] < 1e-4


def test_equation_1_needs_the_off_manifold_term():
    # without (1/t)(I - QQ^T) x_t the two sides disagree: the check is able to fail
    g = torch.Generator().manual_seed(0)
    z = tm.sample_ps(128, g)
    Q = tm.random_isometry(8, g)
    xt = torch.randn(32, 8, generator=g, dtype=torch.float64)
    t = torch.rand(32, generator=g, dtype=torch.float64) * 0.9 + 0.1
    v_x = tm.optimal_velocity(xt, t, z @ Q.T)
    v_in_plane = tm.optimal_velocity(xt @ Q, t, z) @ Q.T
    assert (v_x - v_in_plane).abs().max() > 0.1
    torch.testing.assert_close(v_x, tm.eq1_rhs(xt, t, z, Q))


def test_euler_sampler_follows_the_time_convention():
    # t = 1 is noise, t = 0 data: with the exact velocity of one point the Euler path is the
    # straight line from the noise to that point, which Euler integrates exactly
    x0 = torch.tensor([[0.5, -1.5]])

    def model(x, t):
        return (x - x0) / t[:, None]

    out = tm.euler_sample(model, torch.randn(5, 2), steps=7)
    torch.testing.assert_close(out, x0.expand(5, 2), atol=1e-5, rtol=0)


def test_tiny_run_lowers_its_loss_and_writes_the_documented_files(tmp_path):
    out = tmp_path / "toy"
    summary = tm.main(["--preset", "tiny", "--out", str(out)])
    for name in ("figure3.png", "figure3.json", "config.json"):
        assert (out / name).is_file(), name
    data = json.loads((out / "figure3.json").read_text())
    assert set(data["final"]) == {"2", "8"}
    for dim in ("2", "8"):
        curve = data["curves"][dim]
        assert [row["step"] for row in curve] == [30, 60]
        assert all({"step", "top5_mean", "top5_std"} <= set(row) for row in curve)
        assert data["final"][dim] == curve[-1]["top5_mean"]
    for run in data["runs"]:
        assert run["curve"][-1]["val_loss"] < run["val_loss_init"]
        if run["dim"] > 2:
            assert run["curve"][-1]["off_manifold"] >= 0
    assert summary["final"] == data["final"]
    with open(out / "figure3.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, message", [
    (["--dims", "1"], "--dims must all be at least 2"),
    (["--dims", "0"], "--dims must all be at least 2"),
    (["--dims", "two"], "invalid int value"),
    (["--steps", "1e3"], "invalid int value"),
    (["--lr", "fast"], "invalid float value"),
    (["--seeds", "0"], "--seeds must be a positive integer"),
])
def test_bad_arguments_end_with_one_clear_sentence(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        tm.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_unwritable_out_folder_is_reported(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as e:
        tm.main(["--preset", "tiny", "--out", str(blocker / "sub")])
    assert "cannot write to --out" in str(e.value.code)


def test_torchrun_two_processes_split_the_runs_and_match_one_process(tmp_path):
    """The same runs in this process, in two local one-thread processes (--procs 2, the default on
    2 cores) and under torchrun."""
    args = ["--preset", "tiny", "--seeds", "1"]
    one = tm.main(args + ["--procs", "1", "--out", str(tmp_path / "one")])
    local = tm.main(args + ["--procs", "2", "--out", str(tmp_path / "local")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--standalone", os.path.join(ROOT, "toy_manifold.py"),
           *args, "--out", str(tmp_path / "two")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "figure3.json").read_text())
    assert two["world_size"] == 2
    assert sorted((x["dim"], x["seed"]) for x in two["runs"]) == [(2, 0), (8, 0)]
    # every (dim, seed) run is seeded on its own, so where it ran does not matter
    for dim in ("2", "8"):
        for other in (two, local):
            np.testing.assert_allclose(other["final_per_seed"][dim], one["final_per_seed"][dim],
                                       rtol=1e-3, atol=1e-4)
