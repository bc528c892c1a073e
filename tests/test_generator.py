"""generator.py: the flow maths, the masks, the zero-initialised DDT head, learning, exact resume,
2 processes = 1 process, the latent cache, sampling, clear errors.

Run: python -m pytest tests/test_generator.py          (the 2-process test is included; ~15 s)
A tiny tokenizer (stages 0 and 1 of tokenizer.py, tiny preset) is trained once per module.
"""
import json
import os
import shutil

import pytest
import torch

from conftest import torchrun
import evaluate
import generator as G
import tokenizer as T
import world as W

TINY = ["--preset", "tiny", "--device", "cpu"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """A tiny stage-1 tokenizer checkpoint: (4, 4, 4) latents of 32 px images."""
    out = tmp_path_factory.mktemp("tok")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    for stage in (0, 1):
        T.main(["--preset", "tiny", "--device", "cpu", "--out", str(out), "--stage", str(stage)])
    torch.set_num_threads(n)
    return str(out / "stage1.pt")


def train(out, tok, *args, cache=None):
    return G.main([*TINY, "--tokenizer", tok, "--out", str(out), "--cache", str(cache or out / "cache"),
                   *map(str, args)])


def losses(out):
    return {r["step"]: r["loss"] for r in map(json.loads, open(os.path.join(out, "metrics.jsonl")))}


def random_model(head="ddt", text_len=6, shape=(4, 4, 4), patch=1, seed=0):
    """A tiny generator whose zero-initialised parts are randomised too (every path live)."""
    torch.manual_seed(seed)
    m = G.Generator(G.MODELS["tiny"], shape, patch, text_len, head)
    with torch.no_grad():
        for p in m.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    return m.eval()


# ---- the flow maths ----------------------------------------------------------------------------

def test_shift_rule():
    assert G.shift_factor(16, 2) == pytest.approx(2.0)       # Flux-VAE
    assert G.shift_factor(768, 1) == pytest.approx(6.93, abs=5e-3)  # DINOv2-B
    assert G.shift_factor(96, 1) == pytest.approx(2.45, abs=5e-3)   # PS-VAE 96c
    # t' = s t / (1 + (s - 1) t): by hand, s = 3, t = 0.5 -> 1.5 / 2; ends fixed; s = 1 identity
    assert G.shift_t(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)
    t = torch.linspace(0, 1, 11)
    assert torch.allclose(G.shift_t(t, 1.0), t)
    assert G.shift_t(torch.tensor([0.0, 1.0]), 6.93).tolist() == pytest.approx([0.0, 1.0])


def test_training_t_is_logit_normal_with_its_location_and_scale():
    """t = sigmoid(loc + scale n): its logit has mean loc and s.d. scale (before the shift, s = 1); the
    shift moves the median from sigmoid(loc) to shift_t(sigmoid(loc), s), as it moves every quantile."""
    idx = torch.arange(20000)
    for loc, scale in ((0.0, 1.0), (0.8, 1.0), (-0.5, 1.6)):
        t = G.flow_draws(idx, (1,), 0, 3, 1.0, loc, scale)[1]
        logit = torch.logit(t.double())
        assert logit.mean().item() == pytest.approx(loc, abs=0.04)
        assert logit.std().item() == pytest.approx(scale, rel=0.03)
        shifted = G.flow_draws(idx, (1,), 0, 3, 3.0, loc, scale)[1]
        want = G.shift_t(torch.sigmoid(torch.tensor(loc)), 3.0).item()
        assert shifted.median().item() == pytest.approx(want, abs=0.01)
    # the defaults are the standard logit-normal, the same draws as before the flags existed
    assert torch.equal(G.flow_draws(idx, (1,), 0, 3, 2.0)[1], G.flow_draws(idx, (1,), 0, 3, 2.0, 0.0, 1.0)[1])


def test_euler_sampler_is_exact_on_a_point_mass():
    """For data = one point c the true velocity is (x_t - c) / t (straight paths), which Euler
    integrates exactly on any grid: every sample lands on c, with or without guidance."""
    c = torch.randn(4, 2, 2)

    def field(x, t, cond):
        return (x - c) / t.view(-1, 1, 1, 1)

    noise = torch.randn(3, 4, 2, 2)
    cond = torch.zeros(3, 5, dtype=torch.long)
    for steps, shift, guidance in ((1, 1.0, 1.0), (7, 3.0, 1.0), (50, 3.0, 6.5)):
        x = G.flow_sample(field, noise, cond, steps, shift, guidance, null=cond)
        assert x.shape == noise.shape
        assert torch.allclose(x, c.expand_as(x), atol=1e-5)


def test_flow_loss_target_is_eps_minus_x0():
    """A model that returns eps - x0 exactly (it can: (x_t - x0) / t when x0 is known) has zero
    loss; one that returns x0 - eps has loss 4 mean (eps - x0)^2."""
    x0, eps, t = torch.randn(5, 3, 2, 2), torch.randn(5, 3, 2, 2), torch.rand(5) * 0.8 + 0.1
    perfect = lambda x_t, tt, cond: (x_t - x0) / tt.view(-1, 1, 1, 1)  # noqa: E731
    assert G.flow_loss(perfect, x0, None, t, eps).item() == pytest.approx(0.0, abs=1e-9)
    wrong = lambda x_t, tt, cond: x0 - eps  # noqa: E731
    assert G.flow_loss(wrong, x0, None, t, eps).item() == pytest.approx(4 * (eps - x0).pow(2).mean().item())


# ---- the network -------------------------------------------------------------------------------

def test_attention_mask_layout():
    m = random_model(text_len=3, shape=(4, 2, 2))  # 3 text + 4 image tokens
    M = m.mask.int().tolist()
    assert M == [[1, 0, 0, 0, 0, 0, 0],
                 [1, 1, 0, 0, 0, 0, 0],
                 [1, 1, 1, 0, 0, 0, 0]] + [[1] * 7] * 4


@pytest.mark.parametrize("head", ["ddt", "none"])
def test_masks_in_the_outputs(head):
    """Changing the image leaves every text output unchanged; changing text token k leaves the
    text outputs before k unchanged, and changes the image outputs."""
    m = random_model(head)
    x, t = torch.randn(2, 4, 4, 4), torch.rand(2)
    ids = torch.randint(2, len(G.TextTokenizer()), (2, 6))
    h = m.backbone(x, t, ids)
    h2 = m.backbone(x + torch.randn_like(x), t, ids)
    assert torch.allclose(h[:, :6], h2[:, :6], atol=1e-6)
    assert not torch.allclose(h[:, 6:], h2[:, 6:], atol=1e-3)
    k = 3
    ids2 = ids.clone()
    ids2[:, k] = (ids[:, k] + 7) % len(G.TextTokenizer())
    h3 = m.backbone(x, t, ids2)
    assert torch.allclose(h[:, :k], h3[:, :k], atol=1e-6)
    assert not torch.allclose(h[:, k:6], h3[:, k:6], atol=1e-3)
    assert not torch.allclose(m(x, t, ids), m(x, t, ids2), atol=1e-4)


def test_zero_init_ddt_head_ignores_the_backbone_at_first():
    torch.manual_seed(0)
    m = G.Generator(G.MODELS["tiny"], (4, 4, 4), 1, 6, "ddt").eval()
    x, t = torch.randn(2, 4, 4, 4), torch.rand(2)
    a, b = torch.randint(2, 300, (2, 6)), torch.randint(2, 300, (2, 6))
    assert m(x, t, a).abs().max() == 0  # zero output layer
    # give the output layer weights: with the modulation still zero, the head is a function of
    # x_t alone (its own embedder), whatever the text and whatever the backbone weights
    with torch.no_grad():
        m.head.out.weight.normal_()
        y = m(x, t, a)
        assert torch.allclose(y, m(x, t, b)) and torch.allclose(y, m(x, torch.rand(2), a))
        for p in m.layers.parameters():
            p.add_(torch.randn_like(p))
        assert torch.allclose(y, m(x, t, a), atol=1e-6)
        assert not torch.allclose(y, m(x + 1, t, a))
        # and once the modulation is non-zero, the backbone reaches the output
        m.head.final_mod[-1].weight.normal_()
        assert not torch.allclose(m(x, t, a), m(x, t, b))


def test_patchify_roundtrip_and_patch_sizes():
    x = torch.randn(2, 3, 4, 6)
    assert torch.equal(G.unpatchify(G.patchify(x, 2), 3, 4, 6, 2), x)
    assert G.patchify(x, 2).shape == (2, 6, 12)
    m = random_model(shape=(4, 4, 4), patch=2)
    assert m(torch.randn(1, 4, 4, 4), torch.rand(1), torch.zeros(1, 6, dtype=torch.long)).shape == (1, 4, 4, 4)


def test_text_tokenizer_world_words_and_byte_fallback():
    tt = G.TextTokenizer()
    for w in ("circle", "red", "two", "left"):
        assert len(tt.encode(w)) == 1 and tt.encode(w.upper()) == tt.encode(w)
    ids = tt.encode("a photo of a zebra")
    assert len(ids) == 4 + len(" zebra".encode())  # four world words, then six bytes
    assert tt.decode(ids) == "a photo of a zebra"
    assert tt.decode(tt.encode("ünïcode ok")) == "ünïcode ok"
    batch = tt(["two red circles", ""], 8)
    assert batch.shape == (2, 8) and batch[:, 0].tolist() == [G.BOS, G.BOS] and batch[1, 1:].eq(G.PAD).all()
    assert max(len(tt.encode(W.caption_scene(i)[1])) for i in range(300)) < 20  # cpu/world --text-len 20


# ---- training ----------------------------------------------------------------------------------

def test_tiny_run_lowers_the_loss_and_samples(tmp_path, tok):
    out = tmp_path / "run"
    train(out, tok, "--steps", 120, "--ckpt-every", 1000)
    L = losses(out)
    first = sum(L[s] for s in range(1, 11)) / 10
    last = sum(L[s] for s in range(101, 121)) / 20
    assert last < 0.85 * first, (first, last)
    ck = torch.load(out / "generator.pt", weights_only=True)
    assert ck["script"] == "generator.py" and ck["step"] == 120
    assert any(not torch.equal(ck["ema"][k], ck["model"][k]) for k in ck["model"])  # EMA moved apart
    assert os.path.isfile(out / "samples.png")
    # sampling: the latent's shape, decoded to the tokenizer's images, and a PNG via the CLI
    model, cfg, tok_path = G.load_generator(str(out))
    z = G.generate_latents(model, ["two red circles", "a blue square"], steps=4)
    assert z.shape == (2, 4, 4, 4) and torch.isfinite(z).all()
    png = tmp_path / "grid.png"
    G.main(["sample", "--ckpt", str(out), "--prompt", "two red circles", "--n", "3", "--out", str(png),
            "--steps", "3"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # mini-GenEval on it: per-category and overall accuracy, the last line a JSON object
    res = evaluate.main(["geneval", "--ckpt", str(out), "--preset", "tiny", "--steps", "3"])
    assert set(res["per_category"]) == set(W.CAPTION_CATEGORIES)
    assert 0 <= res["overall"] <= 1 and res["n_images"] == 6 * res["images_per_prompt"] * res["prompts_per_category"]
    # GenEval's own rules judge a subset of the strict checks: never a lower score, per category
    assert all(res["per_category_geneval_rules"][c] >= res["per_category"][c] for c in W.CAPTION_CATEGORIES)
    # the ceiling on this latent: the suite's own scenes through the tokenizer (no sampling)
    real = evaluate.main(["geneval", "--ckpt", str(out), "--preset", "tiny", "--baseline", "real"])
    assert real["baseline"] == "real" and real["n_images"] == res["n_images"]
    # ... which needs no generator: the tokenizer alone gives the same scores; neither is an error
    alone = evaluate.main(["geneval", "--tokenizer", tok_path, "--preset", "tiny", "--baseline", "real"])
    assert [alone[k] for k in ("overall", "overall_geneval_rules", "gfid")] == \
        [real[k] for k in ("overall", "overall_geneval_rules", "gfid")]
    with pytest.raises(SystemExit, match="--baseline real with --tokenizer"):
        evaluate.main(["geneval", "--preset", "tiny", "--baseline", "real"])


# every precision and compilation mode --amp auto / --compile auto can pick on some machine (bf16 on
# CPUs with bf16 units and GPUs; compiled for long runs there): exact resume and 2 processes = 1
# (fp32 compiled names --amp off: compiled runs take bf16 on their own on CPUs with bf16 units)
BF16, COMPILED, BF16_COMPILED = ("--amp", "bf16"), ("--amp", "off", "--compile", "on"), ("--amp", "bf16", "--compile", "on")
MODES = [("--amp", "off"), BF16, pytest.param(COMPILED, marks=pytest.mark.slow),
         pytest.param(BF16_COMPILED, marks=pytest.mark.slow)]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: "".join(m))
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, tok, mode):
    a, b = tmp_path / "a", tmp_path / "b"
    cache = tmp_path / "cache"
    common = ("--n-train", 16, "--n-samples", 0, "--ckpt-every", 3, *mode)  # 2 batches per epoch: crosses epochs
    train(a, tok, "--steps", 6, *common, cache=cache)
    train(b, tok, "--steps", 3, *common, cache=cache)
    # --resume without --tokenizer continues on the tokenizer the checkpoint names
    G.main([*TINY, "--out", str(b), "--cache", str(cache), "--steps", "6", "--resume", *map(str, common)])
    la, lb = losses(a), losses(b)
    assert sorted(lb) == list(range(1, 7)) and la == lb
    ca, cb = (torch.load(o / "generator.pt", weights_only=True) for o in (a, b))
    assert ca["step"] == cb["step"] == 6 and ca["data"] == cb["data"]
    for part in ("model", "ema"):
        assert all(torch.equal(ca[part][k], cb[part][k]) for k in ca[part])


def test_recipe_flags_reach_the_optimiser_and_the_time_draws(tmp_path, tok):
    """--beta2 is AdamW's second beta in the checkpoint; --t-loc / --t-scale change the training (other losses
    from the same seed), and the defaults are the run without them."""
    cache = tmp_path / "cache"
    common = ("--n-train", 16, "--n-samples", 0, "--steps", 2)
    runs = {name: tmp_path / name for name in ("default", "same", "beta2", "t")}
    train(runs["default"], tok, *common, cache=cache)
    train(runs["same"], tok, *common, "--beta2", 0.95, "--t-loc", 0, "--t-scale", 1, cache=cache)
    train(runs["beta2"], tok, *common, "--beta2", 0.99, cache=cache)
    train(runs["t"], tok, *common, "--t-loc", 1.0, "--t-scale", 0.5, cache=cache)
    betas = {n: torch.load(o / "generator.pt", weights_only=True)["opt"]["param_groups"][0]["betas"]
             for n, o in runs.items()}
    assert tuple(betas["default"]) == (0.9, 0.95) and tuple(betas["beta2"]) == (0.9, 0.99)
    assert losses(runs["same"]) == losses(runs["default"])
    # step 1 cannot tell (the zero-initialised output predicts v = 0 for any t); the first update can
    assert losses(runs["t"])[2] != losses(runs["default"])[2]


def test_time_limit_stops_at_a_step_with_a_checkpoint_and_resume_finishes_the_same_run(tmp_path, tok):
    a, b = tmp_path / "a", tmp_path / "b"
    cache = tmp_path / "cache"
    common = ("--n-train", 16, "--n-samples", 0, "--ckpt-every", 100)  # no periodic checkpoint before 5
    train(a, tok, "--steps", 5, *common, cache=cache)
    train(b, tok, "--steps", 5, "--time-limit", 1e-9, *common, cache=cache)  # up after the first step
    cb = torch.load(b / "generator.pt", weights_only=True)
    assert cb["step"] == 1 and sorted(losses(b)) == [1]
    G.main([*TINY, "--out", str(b), "--cache", str(cache), "--steps", "5", "--resume", *map(str, common)])
    assert losses(a) == losses(b)
    ca, cb = (torch.load(o / "generator.pt", weights_only=True) for o in (a, b))
    assert ca["step"] == cb["step"] == 5
    assert all(torch.equal(ca["ema"][k], cb["ema"][k]) for k in ca["ema"])


def two_processes_match_one(tmp_path, tok, modes):
    """torchrun (gloo, 2 processes, global batch 8 = 4 + 4; every mode in one launch) vs 1 process
    with batch 8. In bf16 the matrix products of 4 and of 8 rows may round differently (8-bit
    mantissas, a relative step of 4e-3): the losses agree to 1e-2 and the weights to 2e-2 instead
    of 1e-4 and 1e-5."""
    cache, runs = tmp_path / "cache", []
    for i, mode in enumerate(modes):
        args = ["--steps", 4, "--n-samples", 0, "--batch-size", 8, *mode]
        train(tmp_path / f"one{i}", tok, *args, cache=cache)  # also makes the cache the two processes read
        runs.append(("generator", [*TINY, "--tokenizer", tok, "--out", tmp_path / f"two{i}", "--cache", cache, *args]))
    torchrun(runs, tmp_path)
    for i, mode in enumerate(modes):
        one, two = tmp_path / f"one{i}", tmp_path / f"two{i}"
        rel, atol = (1e-2, 2e-2) if "bf16" in mode else (1e-4, 1e-5)
        l1, l2 = losses(one), losses(two)
        assert sorted(l1) == sorted(l2) == [1, 2, 3, 4]
        for s in l1:
            assert l2[s] == pytest.approx(l1[s], rel=rel, abs=rel / 100), (mode, s, l1[s], l2[s])
        c1, c2 = (torch.load(o / "generator.pt", weights_only=True) for o in (one, two))
        assert c2["world_size"] == 2 and all(torch.allclose(c1["model"][k], c2["model"][k], atol=atol) for k in c1["model"])


def test_two_processes_match_one(tmp_path, tok):
    two_processes_match_one(tmp_path, tok, [("--amp", "off"), BF16])


@pytest.mark.slow
def test_two_processes_match_one_compiled(tmp_path, tok):
    two_processes_match_one(tmp_path, tok, [COMPILED, BF16_COMPILED])


def test_latent_cache_is_made_once_and_follows_the_tokenizer(tmp_path, tok):
    cfg = G.parse_args([*TINY, "--n-train", "8", "--cache", str(tmp_path / "cache")])
    model, shape, size = G.open_tokenizer(tok)

    def cache(tok_model, path):
        return G.latent_cache(cfg, "latents", G.caption_dataset(cfg, size), path, size,
                              lambda b: {"latents": tok_model.encode(b[0]), "captions": list(b[1])})
    c1, p1 = cache(model, tok)
    x = torch.stack([W.WorldCaptions("train", 8, size)[i][0] for i in range(8)])
    one_by_one = torch.cat([model.encode(x[i:i + 1]) for i in range(8)])
    assert torch.allclose(c1["latents"], one_by_one, atol=1e-5)  # encoded in batches = one by one
    assert c1["captions"][0] == W.WorldCaptions("train", 8, size)[0][1]
    mtime = os.path.getmtime(p1)
    assert cache(model, tok)[1] == p1 and os.path.getmtime(p1) == mtime  # reused
    other = tmp_path / "retrained.pt"  # the same tokenizer with one weight changed: a new cache
    ck = torch.load(tok, weights_only=True)
    k = next(iter(ck["model"]))
    ck["model"][k] = ck["model"][k] + 1
    torch.save(ck, other)
    assert cache(T.load_tokenizer(str(other)), str(other))[1] != p1


# ---- bad input: one clear sentence each --------------------------------------------------------

def error_of(argv):
    with pytest.raises(SystemExit) as e:
        G.main(argv)
    msg = str(e.value)
    assert msg.startswith("generator.py: error: ") and "\n" not in msg and "Traceback" not in msg, msg
    return msg


def test_bad_inputs(tmp_path, tok):
    out = tmp_path / "run"
    train(out, tok, "--steps", 2, "--n-samples", 0)
    sample = ["sample", "--ckpt", str(out), "--n", "1", "--out", str(tmp_path / "g.png"), "--steps", "2"]
    assert "prompt is empty" in error_of(sample + ["--prompt", "   "])
    long = " ".join(["red circle"] * 20)
    msg = error_of(sample + ["--prompt", long])
    assert "40 tokens" in msg and "holds 15" in msg and "shorten" in msg
    missing = str(tmp_path / "no_such_tokenizer.pt")
    assert "does not exist" in error_of([*TINY, "--tokenizer", missing, "--out", str(tmp_path / "x")])
    assert "does not exist" in error_of(sample + ["--prompt", "a red circle", "--tokenizer", missing])
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    assert "cannot read" in error_of([*TINY, "--tokenizer", str(junk), "--out", str(tmp_path / "x")])
    msg = error_of([*TINY, "--tokenizer", str(out / "generator.pt"), "--out", str(tmp_path / "x")])
    assert "written by generator.py, not tokenizer.py" in msg
    assert "written by tokenizer.py, not generator.py" in error_of(
        ["sample", "--ckpt", tok, "--prompt", "a red circle"])
    assert "does not exist" in error_of(["sample", "--ckpt", str(tmp_path / "nope"), "--prompt", "x"])


def test_lr_schedule_warmup_constant_cooldown():
    cfg = dict(lr=1.0, warmup=4, steps=10, cooldown=0)
    assert [G.lr_at(s, cfg) for s in range(10)] == [0.25, 0.5, 0.75] + [1.0] * 7  # the paper: warm-up, constant
    cfg["cooldown"] = 4  # the last 4 steps decay linearly towards 0
    assert [G.lr_at(s, cfg) for s in range(10)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert G.lr_at(0, dict(lr=2.0, warmup=0, steps=4)) == 2.0  # a config from before --cooldown existed


def test_cooldown_run_logs_its_lr_and_resume_is_exact(tmp_path, tok, capsys):
    """Constant lr to step 3, then resumed to 6 with --cooldown 3, equals the same schedule in one run."""
    a, b = tmp_path / "a", tmp_path / "b"
    cache = tmp_path / "cache"
    common = ("--n-train", 16, "--n-samples", 0, "--lr", 1e-3)
    train(a, tok, "--steps", 6, "--cooldown", 3, *common, cache=cache)
    lrs = {r["step"]: r["lr"] for r in map(json.loads, open(a / "metrics.jsonl"))}
    assert [lrs[s] for s in range(1, 7)] == pytest.approx([1e-3] * 3 + [1e-3, 2e-3 / 3, 1e-3 / 3])
    train(b, tok, "--steps", 3, *common, cache=cache)
    G.main([*TINY, "--out", str(b), "--cache", str(cache), "--steps", "6", "--cooldown", "3", "--resume",
            *map(str, common)])
    assert losses(a) == losses(b)
    with pytest.raises(SystemExit):
        train(tmp_path / "c", tok, "--cooldown", -1)
    assert "-1 is negative" in capsys.readouterr().err


def test_resume_refuses_a_changed_tokenizer(tmp_path, tok):
    """The run's tokenizer file retrained (here: one weight changed) between two sessions: resuming
    would train on other latents, so it stops with a sentence, with or without --tokenizer."""
    mine = tmp_path / "stage1.pt"
    shutil.copy(tok, mine)
    out, cache = tmp_path / "run", tmp_path / "cache"
    train(out, str(mine), "--steps", 2, "--n-train", 16, "--n-samples", 0, cache=cache)
    ck = torch.load(mine, weights_only=False)
    name = next(k for k, v in ck["model"].items() if v.is_floating_point())
    ck["model"][name] = ck["model"][name] + 0.1
    torch.save(ck, mine)
    resume = [*TINY, "--out", str(out), "--cache", str(cache), "--steps", "3", "--resume", "--n-samples", "0",
              "--n-train", "16"]
    assert "differs from the file this generator was trained on" in error_of(resume)
    assert "differs from the file this generator was trained on" in error_of(resume + ["--tokenizer", str(mine)])
    shutil.copy(tok, mine)  # the original file back: the run continues
    G.main(resume)
    assert sorted(losses(out)) == [1, 2, 3]
