"""tokenizer.py, stage 0 in SigLIP2's role (Table 3, --stage0-objective siglip): the sigmoid loss against a direct
per-pair sum, a tiny encoder that learns and hands its weights to stages 1 and 2 with the 0.05 : 1 loss weights,
zero-shot caption matching, and 2 processes = 1 process.

Run: python -m pytest tests/test_siglip_stage0.py          (CPU, one thread per process, about half a minute)
"""
import json
import math
import os
import shutil

import pytest
import torch

from conftest import torchrun
import tokenizer as T
import world as W

TINY = ["--preset", "tiny", "--device", "cpu", "--stage0-objective", "siglip"]


def run(out, *args):
    return T.main([*TINY, "--out", str(out), *map(str, args)])


def metrics(out, stage, key="loss"):
    recs = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return {r["step"]: r[key] for r in recs if r["stage"] == stage and key in r}


def unit(*shape):
    return torch.nn.functional.normalize(torch.randn(*shape), dim=-1)


# ---- the loss ---------------------------------------------------------------------------------------------------

def test_sigmoid_loss_is_the_papers_sum_over_pairs():
    """SigLIP (Zhai et al. 2023), Eq. 1: -1/|B| sum_i sum_j log 1 / (1 + exp(z_ij (-t x_i.y_j - b))), written out
    pair by pair; z_ij = 1 on the diagonal, -1 elsewhere."""
    torch.manual_seed(0)
    B = 5
    img, txt = unit(B, 8), unit(B, 8)
    t_prime, b = torch.tensor(1.7), torch.tensor(-3.0)
    by_hand = 0.0
    for i in range(B):
        for j in range(B):
            z = 1.0 if i == j else -1.0
            logit = math.exp(t_prime.item()) * float(img[i] @ txt[j]) + b.item()
            by_hand += -math.log(1.0 / (1.0 + math.exp(-z * logit)))
    loss = T.sigmoid_loss(img, txt, t_prime, b)
    assert loss.item() == pytest.approx(by_hand / B, rel=1e-5)  # summed over texts j, averaged over images i
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the loss stays in fp32 under autocast
        assert T.sigmoid_loss(img, txt, t_prime, b).item() == pytest.approx(loss.item(), rel=1e-6)


def test_sigmoid_loss_is_lower_for_matched_than_for_shuffled_pairs():
    torch.manual_seed(1)
    img = unit(16, 32)
    txt = torch.nn.functional.normalize(img + 0.05 * torch.randn(16, 32), dim=-1)  # each text near its image
    t_prime, b = torch.tensor(math.log(10.0)), torch.tensor(-10.0)  # SigLIP's initial values
    shuffled = txt.roll(1, dims=0)  # every image paired with another's text
    assert T.sigmoid_loss(img, txt, t_prime, b) < 0.5 * T.sigmoid_loss(img, shuffled, t_prime, b)


# ---- a tiny SigLIP-role encoder, then stages 1 and 2 on it --------------------------------------------------------

@pytest.fixture(scope="module")
def stage0(tmp_path_factory):
    """12 steps on one fixed batch: 4 (image, caption) pairs, the whole training set, every step."""
    out = tmp_path_factory.mktemp("siglip")
    run(out, "--stage", 0, "--steps", 12, "--n-train", 4, "--batch-size", 4, "--ckpt-every", 6, "--n-val", 12)
    return out


def test_stage0_lowers_the_sigmoid_loss_and_keeps_the_checkpoint_format(stage0):
    loss = metrics(stage0, 0)
    assert sorted(loss) == list(range(1, 13))
    assert loss[1] == pytest.approx(10.0, abs=2.0)  # at t = 10, b = -10: each true pair costs about 10 - 10 cos
    assert max(loss[s] for s in (10, 11, 12)) < 0.5 * loss[1], loss
    assert all(r in metrics(stage0, 0, "t") for r in loss) and not metrics(stage0, 0, "ce_shape")  # no labels
    assert all(0 <= v <= 1 for v in metrics(stage0, 0, "val_zero_shot").values())
    ck = torch.load(stage0 / "stage0.pt", map_location="cpu", weights_only=True)
    assert ck["stage"] == 0 and ck["config"]["stage0_objective"] == "siglip"
    # later stages read "encoder", as from the twins' stage 0; the towers and t', b stay in "model"
    assert all(torch.equal(ck["model"]["encoder." + k], v) for k, v in ck["encoder"].items())
    rest = {k.split(".")[0] for k in ck["model"] if not k.startswith("encoder.")}
    assert rest == {"image_head", "text", "t_prime", "b"}


def test_stages_1_and_2_train_on_the_siglip_encoder_with_its_loss_weights(tmp_path, stage0):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(stage0 / "stage0.pt", out / "stage0.pt")
    run(out, "--stage", 1, "--steps", 4)
    run(out, "--stage", 2, "--steps", 3)
    cfg = json.load(open(out / "config.json"))
    assert all((cfg[f"stage{s}"]["semantic_weight"], cfg[f"stage{s}"]["pixel_weight"]) == (0.05, 1.0) for s in (1, 2))
    assert all(math.isfinite(v) for s in (1, 2) for v in metrics(out, s).values()) and len(metrics(out, 2)) == 3
    enc0 = torch.load(out / "stage0.pt", weights_only=True)["encoder"]
    enc1 = torch.load(out / "stage1.pt", weights_only=True)["model"]
    assert all(torch.equal(enc1["encoder." + k], v) for k, v in enc0.items())  # stage 1 starts from it, frozen


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run(a, "--stage", 0, "--steps", 6)
    run(b, "--stage", 0, "--steps", 3)
    run(b, "--stage", 0, "--steps", 6, "--resume")
    assert metrics(a, 0) == metrics(b, 0) and sorted(metrics(b, 0)) == list(range(1, 7))
    ca, cb = (torch.load(o / "stage0.pt", weights_only=True)["model"] for o in (a, b))
    assert all(torch.equal(ca[k], cb[k]) for k in ca)


def test_the_objective_sets_the_loss_weights_and_must_match_the_encoders():
    def weights(*args):
        cfg = T.parse_args(["--stage", "1", "--preset", "cpu", *args])
        return cfg["semantic_weight"], cfg["pixel_weight"], cfg["out"]
    assert weights() == (0.1, 1.0, os.path.join("runs", "tokenizer-cpu"))
    assert weights("--stage0-objective", "siglip") == (0.05, 1.0, os.path.join("runs", "tokenizer-cpu-siglip"))
    assert weights("--stage0-objective", "siglip", "--semantic-weight", "1")[:2] == (1.0, 1.0)  # flags still win


def test_a_stage_without_the_flag_on_a_siglip_encoder_stops_with_one_sentence(tmp_path, stage0):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(stage0 / "stage0.pt", out / "stage0.pt")
    with pytest.raises(SystemExit) as e:
        T.main(["--preset", "tiny", "--device", "cpu", "--out", str(out), "--stage", "1", "--steps", "1"])
    assert "stage0_objective='siglip'" in str(e.value) and "--stage0-objective siglip" in str(e.value)
    with pytest.raises(SystemExit) as e:
        T.main(["--preset", "paper", "--stage", "1", "--stage0-objective", "siglip", "--out", str(out)])
    assert "without --stage0-objective" in str(e.value) and "\n" not in str(e.value)


# ---- zero-shot caption matching -----------------------------------------------------------------------------------

def test_caption_matching_is_one_on_a_perfect_toy_and_zero_when_every_pair_is_wrong():
    torch.manual_seed(2)
    emb = unit(6, 16)
    captions = [f"caption {i}" for i in range(6)]
    assert T.caption_matching(emb, emb, captions) == 1.0  # text embedding = image embedding
    assert T.caption_matching(emb, emb.roll(1, dims=0), captions) == 0.0
    same = ["a red circle"] * 2 + captions[2:]  # a caption saying the same words as the true one is right
    assert T.caption_matching(emb, emb[[1, 0, 2, 3, 4, 5]], same) == 1.0


def test_zero_shot_matching_of_the_stage0_and_of_a_later_encoder(tmp_path, stage0):
    ck = torch.load(stage0 / "stage0.pt", map_location="cpu", weights_only=True)
    model = T.SigLIPStageZero(T.build_encoder(ck["config"]["encoder"]))
    model.load_state_dict(ck["model"])
    ds = W.WorldCaptions("val", 12, 32)
    images, captions = torch.stack([ds[i][0] for i in range(12)]), [ds[i][1] for i in range(12)]
    acc = T.zero_shot_matching(model, images, captions)
    assert 0.0 <= acc <= 1.0
    assert acc == T.zero_shot_matching(model, images, captions, encoder=model.encoder, batch=5)  # batches: same
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(stage0 / "stage0.pt", out / "stage0.pt")
    run(out, "--stage", 1, "--steps", 2)
    run(out, "--stage", 2, "--steps", 2)  # the encoder learns here
    tok = T.load_tokenizer(str(out / "stage2.pt"))
    assert 0.0 <= T.zero_shot_matching(model, images, captions, encoder=tok.encoder, size=tok.encoder_size) <= 1.0


# ---- 2 processes = 1 process --------------------------------------------------------------------------------------

def pairs(n=4):
    ds = W.WorldCaptions("train", n, 32)
    return torch.stack([ds[i][0] for i in range(n)]), [ds[i][1] for i in range(n)]


def gradients(model, fwd, images, captions):
    model.zero_grad()
    T.siglip_loss(fwd, model, images, captions)[0].backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


def main(argv):
    """Not a test: run by tests/ddp_runs.py in each of 2 processes (gloo). Every rank takes its half of the global
    batch (rows rank::2), one DDP backward; rank 0 saves the averaged gradients to argv[0]."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.manual_seed(0)
    model = T.SigLIPStageZero(T.build_encoder("world-tiny"))
    (images, captions), rank = pairs(), dist.get_rank()
    grads = gradients(model, DDP(model), images[rank::2], captions[rank::2])
    if rank == 0:
        torch.save(grads, argv[0])


def test_two_processes_match_one(tmp_path):
    """torchrun (gloo, 2 processes, global batch 4 = 2 + 2) vs 1 process with batch 4. The embeddings are gathered
    with their gradients, so after DDP's average every weight's gradient is one process's (a gather without them
    would scale the towers' gradients by 1/2, which Adam's steps hide), and a run logs the same losses (fp32, 1e-4)."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--stage", 0, "--steps", 3, "--batch-size", 4]
    run(one, *args)
    torchrun([("tokenizer", [*TINY, "--out", two, *args]), ("test_siglip_stage0", [tmp_path / "grads.pt"])], tmp_path)
    assert torch.load(two / "stage0.pt", weights_only=True)["world_size"] == 2
    for key in ("loss", "t", "b"):
        m1, m2 = metrics(one, 0, key), metrics(two, 0, key)
        assert sorted(m1) == sorted(m2) == [1, 2, 3]
        assert all(abs(m2[s] - m1[s]) <= max(1e-4 * abs(m1[s]), 1e-5) for s in m1), (key, m1, m2)
    torch.manual_seed(0)
    model = T.SigLIPStageZero(T.build_encoder("world-tiny"))
    g1, g2 = gradients(model, model, *pairs()), torch.load(tmp_path / "grads.pt", weights_only=True)
    scale = max(g.abs().max().item() for g in g1.values())  # the keys' bias has a zero gradient, up to rounding
    assert set(g1) == set(g2) and all(torch.allclose(g2[k], g1[k], rtol=1e-4, atol=1e-6 * scale) for k in g1)
