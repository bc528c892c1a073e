"""generator.py --fusion (Table 1's deep-fusion designs: transfusion, bagel, llamafusion) and
experiments/table1_fusion.py at the tiny preset: what each design trains and what it leaves alone,
the copy initialisation of the image branch, the text path equal to the LM's in every design,
resume refusing another design, parameter counts, 2 processes = 1, and the table end to end.

Run: python -m pytest tests/test_fusion.py        (~1 min on 2 cores: a tiny tokenizer and caption
LM are trained once per module; the torchrun test is one 2-process launch)
"""
import argparse
import json
import os
import shlex
import sys

import pytest
import torch

import generator as G
import tokenizer as T
from pretrained import read_safetensors
from test_generator import two_processes_match_one

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
import table1_fusion  # noqa: E402

TINY = ["--preset", "tiny", "--device", "cpu"]
SHAPE = (4, 4, 4)  # the tiny tokenizer's latent


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """A tiny stage-1 tokenizer checkpoint: (4, 4, 4) latents of 32 px images."""
    out = tmp_path_factory.mktemp("tok")
    for stage in (0, 1):
        T.main([*TINY, "--out", str(out), "--stage", str(stage)])
    return str(out / "stage1.pt")


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A tiny caption LM (generator.py section 7): the pre-trained LM every design starts from."""
    out = tmp_path_factory.mktemp("lm")
    G.main(["lm", *TINY, "--out", str(out)])
    return str(out)


def build(fusion, lm=None, seed=0, head="ddt"):
    torch.manual_seed(seed)
    model = G.build_model(dict(model="tiny", patch=1, text_len=8, head=head, lm=lm, fusion=fusion), SHAPE)
    if lm:
        model.load_lm(lm)
    return model.eval()


def branch(state, prefix):
    """The tensors of one branch's layers and final norm, by their name inside the branch."""
    norm = "norm.weight" if prefix == "layers." else "image_norm.weight"
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} | {"norm": state[norm]}


def same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_the_image_branch_starts_as_a_copy_of_the_language_branch(lm):
    """Bagel and LlamaFusion: the image layers and final norm are the language ones' copy, from random
    weights and from the LM (LlamaFusion, MoT); Transfusion has no second branch, and its tensor
    names are the ones checkpoints had before --fusion existed."""
    saved = read_safetensors(os.path.join(lm, "model.safetensors"))
    for fusion in ("bagel", "llamafusion"):
        for folder in (None, lm):
            sd = build(fusion, folder).state_dict()
            assert same(branch(sd, "layers."), branch(sd, "image_layers."))
        lm_layers = {k[len("model.layers."):]: v for k, v in saved.items() if k.startswith("model.layers.")}
        assert same(branch(sd, "image_layers."), lm_layers | {"norm": saved["model.norm.weight"]})
    names = set(build("transfusion").state_dict())
    assert not any("image_" in k for k in names) and "layers.0.self_attn.q_proj.weight" in names


def test_text_alone_is_the_lm_in_every_design(lm):
    """The image branch never touches text: text_forward is the LM's in every design, and inside the
    joint sequence the text states are text_forward's whatever the image or the image branch's weights."""
    ids = G.TextTokenizer()(["two red circles", "a blue square left of"], 8)
    ref = build("transfusion", lm).text_forward(ids)
    x, t = torch.randn(2, *SHAPE), torch.rand(2)
    for seed, fusion in enumerate(G.FUSIONS):
        model = build(fusion, lm, seed=seed + 1)  # other random image embedders and heads
        hidden, last, logits = model.text_forward(ids)
        assert torch.equal(last, ref[1]) and torch.equal(logits, ref[2])
        h = model.backbone(x, t, ids)
        assert torch.allclose(h[:, :8], last, atol=1e-5)
        if fusion != "transfusion":
            with torch.no_grad():
                for p in model.image_layers.parameters():
                    p.add_(torch.randn_like(p))
            h2 = model.backbone(x + 1, t, ids)
            assert torch.allclose(h2[:, :8], h[:, :8], atol=1e-6)  # text: unchanged
            assert not torch.allclose(h2[:, 8:], h[:, 8:], atol=1e-3)  # image: another branch now


def test_transfusion_is_the_shared_layer_exactly():
    """fused_layer with one layer for both parts is that layer; with two equal layers (a fresh
    bagel) the split-and-join attention gives the same states as the one shared layer."""
    torch.manual_seed(0)
    layer = G.Qwen2Layer(32, 2, 1, 64)
    twin = G.Qwen2Layer(32, 2, 1, 64)
    twin.load_state_dict(layer.state_dict())
    h = torch.randn(2, 7, 32)
    mask = torch.ones(7, 7, dtype=torch.bool).tril()
    mask[3:] = True  # 3 text tokens (causal), 4 image tokens (everything)
    rope = G.rope_tables([0, 1, 2] + [None] * 4, 16, 1e6)
    assert torch.equal(G.fused_layer(layer, layer, h, 3, mask, rope), layer(h, mask, rope))
    assert torch.allclose(G.fused_layer(layer, twin, h, 3, mask, rope), layer(h, mask, rope), atol=1e-6)


def trained(tmp_path, tok, lm, fusion, steps=3):
    out = tmp_path / fusion
    G.main([*TINY, "--tokenizer", tok, "--out", str(out), "--cache", str(tmp_path / "cache"), "--lm", lm,
            "--fusion", fusion, "--steps", str(steps), "--n-samples", "0", "--lr", "1e-2"])
    losses = [json.loads(line)["loss"] for line in open(out / "metrics.jsonl")]
    return torch.load(out / "generator.pt", weights_only=True), losses


def idle_language_tensors(fusion, saved):
    """The LM tensors a T2I training leaves as they were: all of them in LlamaFusion (frozen); none in
    Transfusion; in Bagel those that reach the loss, which reads image tokens only, through nothing:
    the final norm and the last language layer but for its keys and values (what image queries read)."""
    if fusion != "bagel":
        return set(saved) if fusion == "llamafusion" else set()
    last = f"layers.{G.MODELS['tiny'].depth - 1}."
    return {k for k in saved if k == "norm.weight" or k.startswith(last) and not any(
        part in k for part in ("input_layernorm", "k_proj", "v_proj"))}


@pytest.mark.parametrize("fusion", G.FUSIONS)
def test_each_design_trains_and_llamafusion_leaves_the_lm_untouched(tmp_path, tok, lm, fusion):
    """A few steps from the caption LM: finite losses; LlamaFusion's language branch (embedding,
    layers, final norm) stays the LM's bit for bit, in the model and its EMA, while every weight of
    its image branch moves; Bagel moves both branches; Transfusion its one. (A key's bias has no
    gradient in exact arithmetic, only rounding noise that Adam may or may not turn into a step: it
    is left out.)"""
    ck, losses = trained(tmp_path, tok, lm, fusion)
    assert len(losses) == 3 and all(map(torch.isfinite, torch.tensor(losses)))
    saved = {k[len("model."):]: v for k, v in read_safetensors(os.path.join(lm, "model.safetensors")).items()}
    idle = idle_language_tensors(fusion, saved)
    for state in (ck["model"], ck["ema"]):
        same_as_lm = {k for k in saved if torch.equal(state[k], saved[k])}
        assert {k for k in same_as_lm ^ idle if not k.endswith("k_proj.bias")} == set(), (same_as_lm, idle)
        if fusion != "transfusion":  # every weight matrix of the image branch has moved off the LM's copy
            image = branch(state, "image_layers.")
            assert all(not torch.equal(image[k], saved["layers." + k]) for k in image if k.endswith("proj.weight"))
    if fusion == "llamafusion":
        assert same_as_lm == set(saved)  # the key biases included


def test_a_checkpoint_of_one_design_refuses_to_resume_as_another(tmp_path, tok):
    args = [*TINY, "--tokenizer", tok, "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache"),
            "--n-samples", "0"]
    G.main([*args, "--fusion", "bagel", "--steps", "2"])
    with pytest.raises(SystemExit, match="fusion='bagel' but this run asks for 'transfusion'"):
        G.main([*args, "--steps", "3", "--resume"])  # (the default design)
    G.main([*args, "--fusion", "bagel", "--steps", "3", "--resume"])
    assert torch.load(tmp_path / "run" / "generator.pt", weights_only=True)["step"] == 3
    # a checkpoint from before --fusion (no such key) is a Transfusion one: it loads and resumes as one
    G.main([*args, "--out", str(tmp_path / "old"), "--steps", "2"])
    ck = torch.load(tmp_path / "old" / "generator.pt", weights_only=True)
    del ck["config"]["fusion"]
    torch.save(ck, tmp_path / "old" / "generator.pt")
    assert G.load_generator(str(tmp_path / "old"))[0].fusion == "transfusion"
    G.main([*args, "--out", str(tmp_path / "old"), "--steps", "3", "--resume"])
    assert torch.load(tmp_path / "old" / "generator.pt", weights_only=True)["config"]["fusion"] == "transfusion"


def numel(params):
    return sum(p.numel() for p in params)


@pytest.mark.parametrize("preset", ["tiny", "cpu"])
def test_two_branches_hold_twice_the_block_parameters(preset):
    """Bagel and LlamaFusion: their backbone blocks (both branches) hold twice Transfusion's, plus a
    second final norm, the rest alike; LlamaFusion trains all but the LM (embedding, language layers,
    final norm), the others all."""
    models = {f: G.build_model(dict(model=preset, patch=1, text_len=8, head="none", lm=None, fusion=f), SHAPE)
              for f in G.FUSIONS}
    tf = models["transfusion"]
    blocks = numel(tf.layers.parameters())
    assert numel(p for p in tf.parameters() if p.requires_grad) == numel(tf.parameters())
    for fusion in ("bagel", "llamafusion"):
        m = models[fusion]
        assert numel(m.layers.parameters()) + numel(m.image_layers.parameters()) == 2 * blocks
        assert numel(m.parameters()) == numel(tf.parameters()) + blocks + G.MODELS[preset].width  # + image_norm
        trained = numel(p for p in m.parameters() if p.requires_grad)
        assert trained == numel(m.parameters()) - (numel(m.text_parts().parameters()) if fusion == "llamafusion" else 0)


def test_two_processes_train_the_two_branch_designs_as_one(tmp_path, tok):
    """DDP (gloo, 2 x batch 4) = 1 process x batch 8 for Bagel and for LlamaFusion (its frozen LM
    has no gradients for DDP to reduce)."""
    two_processes_match_one(tmp_path, tok, [("--fusion", "bagel", "--amp", "off"),
                                            ("--fusion", "llamafusion", "--amp", "off")])


def test_table1_end_to_end_at_the_tiny_preset(tmp_path, tok, lm):
    """Four designs at equal samples, scored, one record each and the table; a second call reuses
    the records (no training), and the README's command parses with the script's parser."""
    argv = ["--preset", "tiny", "--tokenizer", tok, "--lm", lm, "--samples", "12", "--jobs", "1", "--out",
            str(tmp_path / "runs"), "--results", str(tmp_path / "table1_fusion"), "--cache", str(tmp_path / "cache")]
    records = table1_fusion.main(argv)
    assert [r["row"] for r in records] == list(table1_fusion.ROWS)
    assert {(r["steps"], r["batch"], r["samples"]) for r in records} == {(2, 8, 16)}  # 12 samples: 2 whole batches
    by = {r["row"]: r for r in records}
    assert by["llamafusion"]["params_total"] == by["bagel"]["params_total"] > by["llamafusion"]["params_trained"]
    assert by["transfusion_ddt"]["params_total"] > by["transfusion"]["params_total"]
    assert all(0 <= r["geneval_rules"] <= 1 and r["geneval_strict"] <= r["geneval_rules"] for r in records)
    text = open(tmp_path / "table1_fusion.md").read()
    assert "VA-VAE" in text and all(f"| {r['design']} |" in text for r in records) and "0.524 / 857M" in text
    assert len(os.listdir(tmp_path / "table1_fusion")) == 4
    ckpt = next((tmp_path / "runs").glob("bagel_*_tiny_s16_seed0")) / "generator.pt"
    mtime = os.path.getmtime(ckpt)
    assert table1_fusion.main(argv) == records  # reused
    assert os.path.getmtime(ckpt) == mtime


class Parsed(Exception):
    pass


def test_the_readme_command_parses(monkeypatch):
    """README.md's table1_fusion.py line, parsed by the script's own parser (tests/test_readme.py's
    check, which lists the scripts it knows)."""
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    line = next(ln for ln in readme.splitlines() if ln.startswith("python experiments/table1_fusion.py"))
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(Parsed):
        table1_fusion.main(shlex.split(line.split(" #")[0])[2:])


def test_an_editor_fine_tunes_from_a_llamafusion_generator_and_keeps_its_lm_frozen(tmp_path, tok, lm):
    """edit.py --init on a LlamaFusion T2I run: every T2I tensor loads into the edit model, the source
    and target tokens train the image branch, and the language branch stays the LM's bit for bit."""
    import edit
    trained(tmp_path, tok, lm, "llamafusion")
    out = tmp_path / "edit"
    edit.main([*TINY, "--init", str(tmp_path / "llamafusion"), "--out", str(out), "--cache", str(tmp_path / "cache"),
               "--n-samples", "0", "--steps", "3", "--lr", "1e-2"])
    ck = torch.load(out / "edit.pt", weights_only=True)
    t2i = torch.load(tmp_path / "llamafusion" / "generator.pt", weights_only=True)
    assert ck["config"]["fusion"] == "llamafusion" and set(ck["model"]) == set(t2i["model"]) | {"source_embed"}
    saved = {k[len("model."):]: v for k, v in read_safetensors(os.path.join(lm, "model.safetensors")).items()}
    assert all(torch.equal(ck["model"][k], saved[k]) for k in saved)  # the LM, frozen through both fine-tunings
    image = branch(ck["model"], "image_layers."), branch(t2i["model"], "image_layers.")
    assert all(not torch.equal(image[0][k], image[1][k]) for k in image[0] if k.endswith("proj.weight"))
    model, cfg, _ = edit.load_edit_model(str(out))
    assert model.fusion == "llamafusion" and cfg["fusion"] == "llamafusion"
