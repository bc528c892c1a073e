"""evaluate.py's reconstruction metrics (PSNR, SSIM, rFID), linear probe, and the recon / probe /
table4 sub-commands, checked against independent computations.

Run: python -m pytest tests/test_metrics.py       (about 20 s on 2 cores; the tiny Table 4: -m slow)
"""
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch

import evaluate as E
import generator as G
import tokenizer as T
import world as W


def test_psnr_of_a_known_shift():
    """y = x + 0.1 in [-1, 1] units is a 0.05 error on the [0, 1] scale: PSNR = 20 log10(1 / 0.05)."""
    x = torch.rand(3, 3, 16, 16) * 1.6 - 0.8
    assert torch.allclose(T.psnr(x + 0.1, x), torch.full((3,), 20 * math.log10(20.0)), atol=1e-3)
    # clipping to [-1, 1] first: an all-white image against all-black is the largest error, 0 dB
    assert T.psnr(torch.ones(1, 3, 8, 8), -torch.ones(1, 3, 8, 8)).item() == pytest.approx(0.0, abs=1e-5)


def test_ssim_of_identical_and_constant_images():
    x = torch.rand(2, 3, 24, 24) * 2 - 1
    assert torch.allclose(E.ssim(x, x), torch.ones(2), atol=1e-6)
    # constant images a, b (on [0, 1]): no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = 0.01^2
    for a, b in ((0.2, 0.7), (0.5, 0.5), (0.0, 1.0)):
        want = (2 * a * b + 1e-4) / (a * a + b * b + 1e-4)
        got = E.ssim(torch.full((1, 1, 16, 16), 2 * a - 1), torch.full((1, 1, 16, 16), 2 * b - 1))
        assert got.item() == pytest.approx(want, abs=1e-6), (a, b)


def test_ssim_equals_a_window_by_window_computation():
    """Wang et al. 2004, written out: for every 11x11 window that fits, Gaussian-weighted means,
    variances and covariance; SSIM averaged over windows and channels."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (3, 14, 13))
    y = np.clip(0.7 * x + 0.2 + 0.1 * rng.normal(size=x.shape), 0, 1)
    ax = np.arange(11) - 5.0
    w = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * 1.5 ** 2))
    w /= w.sum()
    vals = []
    for c in range(3):
        for i in range(14 - 10):
            for j in range(13 - 10):
                a, b = x[c, i:i + 11, j:j + 11], y[c, i:i + 11, j:j + 11]
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
                cab = (w * (a - ma) * (b - mb)).sum()
                vals.append((2 * ma * mb + 1e-4) * (2 * cab + 9e-4) / ((ma ** 2 + mb ** 2 + 1e-4) * (va + vb + 9e-4)))
    to_t = lambda a: torch.from_numpy(a)[None] * 2 - 1  # noqa: E731  [0, 1] -> [-1, 1], (1, 3, H, W)
    assert E.ssim(to_t(y), to_t(x)).item() == pytest.approx(float(np.mean(vals)), abs=1e-6)
    # and it falls as the second image gets noisier
    noisy = [E.ssim(to_t(x), to_t(np.clip(x + s * rng.normal(size=x.shape), 0, 1))).item() for s in (0.02, 0.1, 0.3)]
    assert 1 > noisy[0] > noisy[1] > noisy[2]


def test_frechet_distance_of_diagonal_gaussians():
    """For diagonal covariances FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 0.25])
    want = 5.0 + (1 + 1 + 0)
    assert E.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, abs=1e-8)
    S = np.array([[2.0, 0.5], [0.5, 1.0]])
    assert E.frechet_distance(np.ones(2), S, np.ones(2), S) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_matches_the_matrix_square_root():
    """Full covariances: the trace of (S1 S2)^(1/2) against scipy's general matrix square root."""
    import scipy.linalg
    rng = np.random.default_rng(0)
    for d in (3, 40):
        A, B = rng.normal(size=(d, 2 * d)), rng.normal(size=(d, 2 * d))
        S1, S2, mu1, mu2 = A @ A.T / d, B @ B.T / d + 0.1 * np.eye(d), rng.normal(size=d), rng.normal(size=d)
        want = ((mu1 - mu2) ** 2).sum() + np.trace(S1 + S2) - 2 * np.trace(scipy.linalg.sqrtm(S1 @ S2)).real
        assert E.frechet_distance(mu1, S1, mu2, S2) == pytest.approx(want, rel=1e-9)
        assert E.frechet_distance(mu1, S1, mu2, S2) == pytest.approx(E.frechet_distance(mu2, S2, mu1, S1), rel=1e-9)


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    cache = tmp_path_factory.mktemp("evaluator")
    return cache, E.world_evaluator(steps=5, cache=str(cache), verbose=False)


def test_evaluator_is_seeded_and_cached(evaluator, tmp_path):
    cache, net = evaluator
    again = E.world_evaluator(steps=5, cache=str(cache))  # loaded from the cache
    fresh = E.world_evaluator(steps=5, cache=str(tmp_path), verbose=False)  # trained again, same seed
    for p, q, r in zip(net.state_dict().values(), again.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(p, q)  # the cache returns the very same weights
        # retraining with the same seed gives the same weights, up to the summation order of the
        # CPU kernels (other tests change the thread count, which changes the last bits)
        torch.testing.assert_close(p.float(), r.float(), rtol=1e-4, atol=1e-5)


def test_rfid_is_zero_for_identical_sets_and_grows_with_noise(evaluator):
    _, net = evaluator
    x = torch.stack([W.WorldImages("val", 96, 64)[i] for i in range(96)])
    g = torch.Generator().manual_seed(0)
    feats = lambda im: net.features(im.clamp(-1, 1))  # noqa: E731
    fx = feats(x)
    same = E.fid_of_features(fx, fx)  # 0 up to rounding, though the covariance is rank-deficient (96 < 128)
    assert abs(same) < 1e-6 * fx.var(0).sum().item()
    d = [E.fid_of_features(fx, feats(x + s * torch.randn(x.shape, generator=g))) for s in (0.1, 0.3, 0.6)]
    assert 10 * abs(same) < d[0] < d[1] < d[2], (same, d)


def test_the_fid_stderr_matches_the_spread_of_fresh_draws():
    """The bootstrap s.e. of gFID against the FID's actual spread over independently drawn sets."""
    g = torch.Generator().manual_seed(0)
    draw = lambda n: (torch.randn(n, 8, generator=g), 0.3 + torch.randn(n, 8, generator=g))  # noqa: E731
    for n in (100, 400):
        fresh = [E.fid_of_features(*draw(n)) for _ in range(30)]
        boot = [E.fid_and_stderr(*draw(n), seed=k)[1] for k in range(10)]
        spread, se = float(np.std(fresh, ddof=1)), float(np.mean(boot))
        assert 0.5 * spread < se < 2 * spread, (n, spread, se)


def test_linear_probe_separable_and_random_labels():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (400,), generator=g)
    f = 0.3 * torch.randn(400, 6, generator=g)
    f[torch.arange(400), y] += 3.0  # 4 well-separated clusters: a linear probe is exact
    assert E.linear_probe(f[:300], y[:300], f[300:], y[300:]) == 1.0
    f = torch.randn(400, 6, generator=g)
    r = torch.randint(0, 4, (400,), generator=g)  # labels unrelated to the features: near chance
    assert E.linear_probe(f[:300], r[:300], f[300:], r[300:]) < 0.45


def test_pixel_readout_of_the_pixels_a_constant_and_the_patch_means():
    """A latent that is its patches' pixels reads out exactly; a constant latent reads out the
    training set's mean patch, whose PSNR is computed here by hand; the patches' mean colours
    (3 of 48 values per 4x4 patch) lie in between."""
    data = W.WorldImages("val", 48, 32)
    x = torch.stack([data[i] for i in range(48)])  # (48, 3, 32, 32)
    xtr, xte = x[:32], x[32:]
    lat = lambda x: torch.nn.functional.pixel_unshuffle(x, 4)  # noqa: E731  (N, 48, 8, 8): the pixels
    assert E.pixel_readout(lat(xtr), xtr, lat(xte), xte) > 60
    one = lambda x: torch.ones(len(x), 1, 8, 8)  # noqa: E731
    mean_patch = lat(xtr).mean((0, 2, 3)).view(1, 48, 1, 1).expand(16, 48, 8, 8)
    by_hand = T.psnr(torch.nn.functional.pixel_shuffle(mean_patch, 4), xte).mean().item()
    assert E.pixel_readout(one(xtr), xtr, one(xte), xte) == pytest.approx(by_hand, abs=1e-3)
    means = lambda x: torch.nn.functional.avg_pool2d(x, 4)  # noqa: E731  (N, 3, 8, 8)
    mid = E.pixel_readout(means(xtr), xtr, means(xte), xte)
    assert by_hand + 3 < mid < 40


def test_balanced_accuracy_by_hand():
    """9 of class 0 and 1 of class 1: always guessing 0 is 90% accurate but 50% balanced; one
    right guess of class 1 and one class-0 miss: (8/9 + 1) / 2."""
    y = torch.tensor([0] * 9 + [1])
    assert (torch.zeros(10, dtype=torch.long) == y).float().mean().item() == pytest.approx(0.9)
    assert E.balanced_accuracy(torch.zeros(10, dtype=torch.long), y) == pytest.approx(0.5)
    pred = torch.tensor([1] + [0] * 8 + [1])
    assert E.balanced_accuracy(pred, y) == pytest.approx((8 / 9 + 1) / 2)


def test_latent_directions_counts_the_directions_the_data_fill():
    """A 16-channel latent made of 3 random mixtures (plus faint noise) fills 3 directions, whatever
    the channels' scales; white noise fills every channel; the share sets the count."""
    g = torch.Generator().manual_seed(0)
    mix, s = torch.randn(16, 3, generator=g), torch.randn(400, 3, 4, 4, generator=g)
    scales = torch.logspace(-2, 2, 16).view(1, 16, 1, 1)
    z = (torch.einsum("ck,nkhw->nchw", mix, s) + 1e-3 * torch.randn(400, 16, 4, 4, generator=g)) * scales
    assert E.latent_directions(z) == 3
    assert E.latent_directions(torch.randn(400, 8, 4, 4, generator=g)) == 8
    one_strong = torch.randn(400, 8, 4, 4, generator=g)
    one_strong[:, 1:] = one_strong[:, :1] + 0.1 * one_strong[:, 1:]  # 8 channels, nearly one direction
    assert E.latent_directions(one_strong, share=0.9) == 1 and E.latent_directions(one_strong, share=0.9999) == 8


def test_off_manifold_ratio_and_its_standard_error():
    """Nearest distances are exact on points at known places; samples drawn from one distribution
    give a ratio within three standard errors of 1, samples twice as far give 2; four times the
    samples halve the standard error (the bootstrap's 1/sqrt(n))."""
    b = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    a = torch.tensor([[1.0, 0.0], [7.0, 0.0], [10.0, 3.0]])
    assert torch.allclose(E.nn_distances(a, b), torch.tensor([1.0, 3.0, 3.0]))
    assert E.tail_mean(torch.arange(100.0), top=0.05) == sum(range(95, 100)) / 5
    g = torch.Generator().manual_seed(0)
    d = lambda n: torch.randn(n, generator=g).abs()  # noqa: E731
    ratio, se = E.tail_ratio(d(600), d(600))
    assert se > 0 and abs(ratio - 1) < 3 * se
    real = d(600)
    assert E.tail_ratio(2 * real, real)[0] == pytest.approx(2.0)
    ses = [sum(E.tail_ratio(d(n), d(n), seed=k)[1] for k in range(4)) / 4 for n in (600, 2400)]  # 4 draws each
    assert 0.35 < ses[1] / ses[0] < 0.7


def test_read_back_is_exact_on_renders_and_drops_texture_when_blurred():
    data = W.WorldImages("val", 40, 64)
    scenes = [data.scene(i) for i in range(40)]
    x = torch.stack([data[i] for i in range(40)])
    exact = E.read_back(x, scenes)
    assert all(v == 1.0 for v in exact.values()), exact
    # a 4x box-filter down- and up-sampling: stripes and dots go, colours and places stay
    blur = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 4), scale_factor=4, mode="bilinear")
    b = E.read_back(blur, scenes)
    textured = sum(o.texture != "solid" for s in scenes for o in s.objects)
    assert textured > 20 and b["read_texture"] < 0.8 and b["read_colour"] > 0.9 and b["read_matched"] > 0.9, b


def test_recon_and_probe_commands_on_a_tiny_tokenizer(tmp_path, evaluator, capsys):
    cache, _ = evaluator
    out = tmp_path / "run"
    T.main(["--preset", "tiny", "--device", "cpu", "--out", str(out), "--stage", "0"])
    T.main(["--preset", "tiny", "--device", "cpu", "--out", str(out), "--stage", "1", "--recipe", "rae",
            "--steps", "2"])
    capsys.readouterr()
    E.main(["recon", "--ckpt", str(out), "--n", "8", "--evaluator-steps", "5", "--evaluator-cache", str(cache)])
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["recipe"] == "rae" and r["ckpt"].endswith("stage1.pt") and r["n"] == 8
    assert 0 < r["psnr"] < 60 and -1 <= r["ssim"] <= 1 and r["rfid"] > 0
    assert r["lpips"] is None and r["lpips_reason"]
    assert all(0 <= r[f"read_{k}"] <= 1 for k in ("count", "matched", "shape", "colour", "texture", "size"))
    E.main(["probe", "--ckpt", str(out / "stage1.pt"), "--n-train", "16", "--n-test", "8"])
    p = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert p["latent"] == [32, 4, 4] and 0 <= p["probe"] <= 1
    assert set(p) >= {"token_shape", "token_colour", "token_texture", "pooled_count", "pooled_bg_colour"}
    assert 0 < p["readout_psnr"] < 60 and 0 < p["readout_psnr_mean_colour"] < 60
    with pytest.raises(SystemExit, match="holds no stage1/2/3.pt"):
        E.main(["recon", "--ckpt", str(tmp_path)])


@pytest.mark.slow
def test_table4_tiny(tmp_path):
    """The whole Table 4 command at the tiny preset: every recipe trained, one row each; at another
    budget the table and Figure 11 both carry it in their names (the preset's own stay untouched)."""
    B = E.TABLE4_SIZES["tiny"]["budget"] + 3
    r = E.main(["table4", "--preset", "tiny", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path),
                "--budget", str(B)])
    text = open(r["table"]).read()
    for name, _, _ in E.TABLE4_ROWS:
        assert f"| {name} |" in text
    assert os.path.basename(r["table"]) == f"table4_tiny_b{B}.md" and r["figure"] == str(tmp_path / f"channels_tiny_b{B}.png")
    assert os.path.getsize(r["figure"]) > 0 and len(r["channels"]) == 3 and not (tmp_path / "channels_tiny.png").exists()


def test_table4_subset_of_recipes_at_another_budget_keeps_the_presets_table(tmp_path):
    """--recipes and --budget write their own file: two rows, no channel sweep, no figure; --stage0
    brings a world encoder trained elsewhere (none is trained under --runs)."""
    T.main(["--preset", "tiny", "--device", "cpu", "--stage", "0", "--steps", "3", "--out", str(tmp_path / "s0")])
    s0 = str(tmp_path / "s0" / "stage0.pt")
    argv = ["table4", "--preset", "tiny", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path),
            "--recipes", "vae,rae", "--budget", "4", "--jobs", "1", "--stage0", s0]
    r = E.main(argv)
    assert not (tmp_path / "runs" / "stage0").exists() and f"`{s0}`, 3 steps" in open(r["table"]).read()
    assert os.path.basename(r["table"]) == "table4_tiny_b4_rae_vae.md" and r["channels"] == []
    text = open(r["table"]).read()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [line.split(" | ")[0] for line in rows] == ["| RAE", "| VAE (MAR-VAE role)"]  # table order
    assert "`python evaluate.py " + " ".join(argv) + "`" in text and "Figure 11" not in text
    batch = T.PRESETS["tiny"]["batch_size"]  # the tiny table trains at its preset's batch
    assert f"steps of batch {batch} in all" in text
    assert json.load(open(tmp_path / "runs" / "rae" / "config.json"))["stage1"]["batch_size"] == batch
    # one precision for the whole table, decided once and written into it: at 4 steps, fp32 eager
    # on every CPU (auto takes bf16 only for compiled runs), passed to every training as a flag
    assert "precision: fp32, eager, the same for every training of the table" in text
    for f in ("rae", "vae"):
        assert {k: json.load(open(tmp_path / "runs" / f / "config.json"))["stage1"][k] for k in ("amp", "compile")} \
            == {"amp": "off", "compile": "off"}
    assert not (tmp_path / "table4_tiny.md").exists() and not list(tmp_path.glob("*.png"))
    assert torch.load(tmp_path / "runs" / "rae" / "stage1.pt", weights_only=True)["step"] == 4
    # another seed of the latents trains beside the first (same stage 0), into its own table
    r1 = E.main([*argv[:argv.index("--recipes")], "--recipes", "rae", "--budget", "4", "--jobs", "1", "--stage0", s0,
                 "--seed", "1"])
    assert os.path.basename(r1["table"]) == "table4_tiny_b4_rae_seed1.md"
    assert json.load(open(tmp_path / "runs" / "rae-seed1" / "config.json"))["stage1"]["seed"] == 1
    w0, w1 = (torch.load(tmp_path / "runs" / f / "stage1.pt", weights_only=True)["model"] for f in ("rae", "rae-seed1"))
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # the seed reached the training
    # another batch: the latents train at it, into their own table; the table's text says it
    shutil.copytree(tmp_path / "runs" / "evaluator", tmp_path / "runs-bs" / "evaluator")  # rFID's network, reused
    rb = E.main(["table4", "--preset", "tiny", "--runs", str(tmp_path / "runs-bs"), "--results", str(tmp_path),
                 "--recipes", "rae", "--budget", "4", "--jobs", "1", "--stage0", s0, "--batch-size", str(batch // 2)])
    assert os.path.basename(rb["table"]) == f"table4_tiny_b4_bs{batch // 2}_rae.md"
    assert f"steps of batch {batch // 2} in all" in open(rb["table"]).read()
    assert json.load(open(tmp_path / "runs-bs" / "rae" / "config.json"))["stage1"]["batch_size"] == batch // 2


def test_table4_disc_start_reaches_every_training_and_is_never_reused_without_it(tmp_path):
    """--disc-start (when L_p's PatchGAN switches on) is passed to each training and named in the file;
    a finished training with another setting is refused, not reused."""
    T.main(["--preset", "tiny", "--device", "cpu", "--stage", "0", "--steps", "3", "--out", str(tmp_path / "s0")])
    argv = ["table4", "--preset", "tiny", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path),
            "--recipes", "rae", "--budget", "4", "--jobs", "1", "--stage0", str(tmp_path / "s0" / "stage0.pt")]
    r = E.main([*argv, "--disc-start", "2"])
    assert os.path.basename(r["table"]) == "table4_tiny_b4_rae_ds2.md"
    assert json.load(open(tmp_path / "runs" / "rae" / "config.json"))["stage1"]["disc_start"] == 2
    assert T.PRESETS["tiny"]["disc_start"] != 2
    with pytest.raises(SystemExit, match="disc_start 2 .asked " + str(T.PRESETS["tiny"]["disc_start"])):
        E.main(argv)


def test_table4_gen_trains_evaluates_reuses_and_continues(tmp_path):
    """Table 4's right half on an RAE latent: the same generator with and without its DDT head, then
    the editor, evaluated along the way; a second call reuses everything; another seed trains beside
    it; a larger budget continues it."""
    T.main(["--preset", "tiny", "--device", "cpu", "--stage", "0", "--steps", "3", "--out", str(tmp_path / "s0")])
    for seed in ("0", "1"):  # the generator's second seed reads the latent's second seed
        E.main(["table4", "--preset", "tiny", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path),
                "--recipes", "rae", "--budget", "4", "--jobs", "1", "--stage0", str(tmp_path / "s0" / "stage0.pt"),
                "--seed", seed])
    gen = ["table4-gen", "--preset", "tiny", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "gen"),
           "--recipes", "rae", "--jobs", "1"]
    g = E.main(gen)
    assert set(g["rows"]) == {"RAE", "RAE, no DDT head"} and all(r["off_manifold_ratio"] > 0 < r["off_manifold_stderr"]
                                                           for r in g["rows"].values())
    curve = json.load(open(tmp_path / "runs" / "rae" / "gen-ddt" / "curve.json"))
    assert sorted(map(int, curve)) == [2, 4] and "gedit" in g["rows"]["RAE"] and "gedit" not in g["rows"]["RAE, no DDT head"]
    assert "| RAE, no DDT head |" in open(g["table"]).read() and os.path.getsize(g["figure4"]) > 0
    assert all(1 <= r["directions"] <= r["channels"] for r in g["rows"].values())
    assert "directions / channels" in open(g["table"]).read()
    r, r_nohead = g["rows"]["RAE"], g["rows"]["RAE, no DDT head"]  # the training compute of each row
    assert r["samples"] == r_nohead["samples"] == E.GEN_SIZES["tiny"]["gen_steps"] * G.PRESETS["tiny"]["batch_size"]
    assert 0 < r_nohead["flops"] < r["flops"]  # the DDT head costs FLOPs; the same samples
    assert f"| {r['flops']:.2g} ({r['samples']}) |" in open(g["table"]).read()
    assert os.path.basename(g["table"]) == "table4_generation_tiny_rae.md"  # the preset's budgets, one latent
    assert "`python evaluate.py " + " ".join(gen) + "`" in open(g["table"]).read()
    ck = tmp_path / "runs" / "rae" / "gen-ddt" / "gen" / "generator.pt"
    mtime = os.path.getmtime(ck)
    assert E.main(gen)["rows"] == g["rows"]  # finished jobs are reused, measurements included
    assert json.load(open(tmp_path / "runs" / "rae" / "gen-ddt" / "curve.json")) == curve and os.path.getmtime(ck) == mtime
    # another training seed: a new generator beside the first, with its own table
    s1 = E.main([*gen, "--seed", "1", "--no-head-ablation", "--edit-budget", "0", "--every", "4", "--patch", "2"])
    ck1 = tmp_path / "runs" / "rae" / "gen-ddt-seed1" / "gen" / "generator.pt"
    assert sorted(map(int, json.load(open(ck1.parent.parent / "curve.json")))) == [4]  # Figure 7's points: --every, not the preset's 2
    w0, w1 = (torch.load(c, map_location="cpu", weights_only=True)["model"] for c in (ck, ck1))
    assert w0.keys() == w1.keys() and any(not torch.equal(w0[k], w1[k]) for k in w0)
    assert os.path.basename(s1["table"]) == "table4_generation_tiny_e0_rae_ddt_seed1_p2.md" and os.path.getmtime(ck) == mtime
    assert json.load(open(ck1.parent / "config.json"))["patch"] == 2 != G.PRESETS["tiny"].get("patch", 1)
    assert s1["rows"]["RAE"]["flops"] < r["flops"]  # a quarter of the image tokens
    # a larger budget continues the same generator and fine-tunes a new editor from it
    g6 = E.main([*gen, "--budget", "6", "--no-head-ablation"])
    curve6 = json.load(open(tmp_path / "runs" / "rae" / "gen-ddt" / "curve.json"))
    assert set(g6["rows"]) == {"RAE"} and sorted(map(int, curve6)) == [2, 4, 6]
    assert os.path.basename(g6["table"]) == "table4_generation_tiny_b6_rae_ddt.md"
    assert {k: v for k, v in curve6.items() if k != "6"} == curve
    assert torch.load(ck, weights_only=True)["step"] == 6
    assert (tmp_path / "runs" / "rae" / "gen-ddt" / "edit-from6" / "edit.pt").is_file()
    # editor budget 0: the generation part is reused as it is, no editor, empty GEdit columns
    g0 = E.main([*gen, "--budget", "6", "--edit-budget", "0", "--no-head-ablation"])
    assert "gedit" not in g0["rows"]["RAE"] and g0["rows"]["RAE"]["geneval"] == g6["rows"]["RAE"]["geneval"]
    assert os.path.basename(g0["table"]) == "table4_generation_tiny_b6_e0_rae_ddt.md"
    # the same generator on the seed-1 RAE latent trained above: its own run folder and table
    t1 = E.main([*gen, "--tokenizer-seed", "1", "--no-head-ablation", "--edit-budget", "0"])
    assert os.path.basename(t1["table"]) == "table4_generation_tiny_e0_rae_ddt_tok1.md"
    cfg1 = json.load(open(tmp_path / "runs" / "rae-seed1" / "gen-ddt" / "gen" / "config.json"))
    assert os.path.dirname(cfg1["tokenizer"]) == str(tmp_path / "runs" / "rae-seed1")
    with pytest.raises(SystemExit, match="table4 --preset tiny .* --seed 2` first"):
        E.main([*gen, "--tokenizer-seed", "2"])
    with pytest.raises(SystemExit, match="subset of psvae"):
        E.main(["table4", "--preset", "tiny", "--runs", str(tmp_path / "runs"), "--recipes", "rea"])
    with pytest.raises(SystemExit, match="does not exist; give a tokenizer.py --stage 0"):
        E.main(["table4", "--preset", "tiny", "--runs", str(tmp_path / "runs"), "--stage0", str(tmp_path / "no.pt")])


def test_table4_budget_is_the_same_for_every_latent():
    """Each recipe's stages add up to the budget exactly, split 20/80 or 40/30/30."""
    assert E.table4_steps(600, 1) == [600]
    assert E.table4_steps(600, 2) == [120, 480]
    assert E.table4_steps(600, 3) == [240, 180, 180]
    for budget in (7, 12, 101, 60000):
        for stages in (1, 2, 3):
            steps = E.table4_steps(budget, stages)
            assert sum(steps) == budget and len(steps) == stages and min(steps) >= 1
    with pytest.raises(ValueError, match="too small for a 3-stage recipe"):
        E.table4_steps(2, 3)


def stage0_of(tmp_path):
    T.main(["--preset", "tiny", "--device", "cpu", "--stage", "0", "--out", str(tmp_path / "s0")])
    return str(tmp_path / "s0" / "stage0.pt")


def test_table4_reuses_only_finished_stages(tmp_path):
    """A stage checkpoint short of its planned steps (an interrupted run, or a smaller budget) is
    resumed to the plan; one at the plan is reused as it is; one beyond it is an error."""
    out, s0 = str(tmp_path / "svae"), stage0_of(tmp_path)
    args = ["--preset", "tiny", "--device", "cpu", "--recipe", "svae"]
    T.main([*args, "--stage", "1", "--steps", "3", "--out", out, "--encoder-ckpt", s0])  # the "interrupted" run
    assert E.train_latent(out, args, [(1, 5)], s0) == 1
    assert torch.load(os.path.join(out, "stage1.pt"), weights_only=True)["step"] == 5
    mtime = os.path.getmtime(os.path.join(out, "stage1.pt"))
    assert E.train_latent(out, args, [(1, 5)], s0) == 0  # at the plan: not touched
    assert os.path.getmtime(os.path.join(out, "stage1.pt")) == mtime
    with pytest.raises(ValueError, match="more than the planned 4"):
        E.train_latent(out, args, [(1, 4)], s0)
    w_p = T.DEFAULT_LOSS_WEIGHTS[1]  # other loss weights: not reused
    with pytest.raises(ValueError, match=rf"trained with pixel_weight {w_p} \(asked {w_p * 10}\)"):
        E.train_latent(out, args + ["--pixel-weight", str(w_p * 10)], [(1, 5)], s0)


def test_table4_retrains_a_stage_whose_base_changed_and_refuses_another_encoder(tmp_path):
    """Extending stage 1 (a larger budget) trains stage 2 afresh on top of it, not on by resuming the
    old stage 2; a latent trained on one stage-0 encoder is not reused on another."""
    out, s0 = str(tmp_path / "psvae"), stage0_of(tmp_path)
    args = ["--preset", "tiny", "--device", "cpu", "--recipe", "psvae"]
    assert E.train_latent(out, args, [(1, 3), (2, 2)], s0) == 2
    first = torch.load(os.path.join(out, "stage2.pt"), weights_only=True)
    assert E.train_latent(out, args, [(1, 3), (2, 2)], s0) == 0  # all at the plan: reused
    assert E.train_latent(out, args, [(1, 4), (2, 2)], s0) == 2
    ck1, ck2 = (torch.load(os.path.join(out, f"stage{s}.pt"), weights_only=True) for s in (1, 2))
    assert ck1["step"] == 4 and ck2["step"] == 2
    assert any(not torch.equal(a, b) for a, b in zip(first["model"].values(), ck2["model"].values()))
    # stage 2's metrics were written once, by the fresh run: no step repeated
    steps2 = [r["step"] for r in map(json.loads, open(os.path.join(out, "metrics.jsonl")))
              if r.get("stage") == 2 and "loss" in r]
    assert steps2 == sorted(set(steps2)) and steps2[-1] == 2
    other = tmp_path / "other" / "stage0.pt"
    other.parent.mkdir()
    ck0 = torch.load(s0, weights_only=True)
    ck0["encoder"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ck0["encoder"].items()}
    torch.save(ck0, other)
    with pytest.raises(ValueError, match="trained on another stage-0 encoder"):
        E.train_latent(out, args, [(1, 4), (2, 2)], str(other))
    shutil.copy(s0, other)  # the same bytes under another name: reused
    assert E.train_latent(out, args, [(1, 4), (2, 2)], str(other)) == 0
