"""generator.py's caption LM (section 7): the backbone pre-trained as a causal LM on the world's
text, written as a folder that --lm loads exactly as a Qwen2.5 folder, then trained on in T2I."""
import json

import pytest
import torch

from conftest import torchrun
import generator as G
import tokenizer as T
from pretrained import qwen2_config, read_safetensors

TINY = ["--preset", "tiny", "--device", "cpu"]


def lm_losses(out):
    return [r["loss"] for r in map(json.loads, open(out / "metrics.jsonl"))]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm")
    G.main(["lm", "--preset", "tiny", "--device", "cpu", "--out", str(out)])
    return out


def test_world_text_holds_captions_instructions_and_whole_scenes_in_the_worlds_words():
    texts = G.world_text(30)
    assert texts[0] == G.caption_scene(G.scene_seed("train", 0))[1]
    assert texts[1] == G.make_edit(G.scene_seed("train", 1)).instruction
    assert texts[2].endswith("tone") and "background" in texts[2]
    words = G.TextTokenizer()
    assert all(i >= G.N_SPECIAL + 256 for t in texts for i in words.encode(t.replace(",", "")))  # words only


def test_pretraining_lowers_the_loss_and_writes_a_qwen2_folder(lm):
    losses = lm_losses(lm)
    assert losses[-1] < 0.7 * losses[0], losses
    cfg = qwen2_config(str(lm))  # the same reader as a Qwen2.5 folder's
    m = G.MODELS["tiny"]
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_key_value_heads"]) == (m.width, m.depth, m.kv_heads)
    assert cfg["vocab_size"] == len(G.TextTokenizer())
    names = set(read_safetensors(str(lm / "model.safetensors")))
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names  # tied, as Qwen2.5-0.5B


def test_a_generator_on_lm_starts_from_its_weights_and_reads_text_as_it_did(lm, tmp_path):
    """--lm FOLDER: the backbone is the LM's, tensor for tensor, and text_forward gives the LM's
    logits; then a T2I run trains on it."""
    cfg = dict(model="tiny", patch=1, text_len=16, head="ddt", lm=str(lm))
    model = G.build_model(cfg, (4, 4, 4))
    G.load_qwen2_weights(str(lm), model.text_parts())
    saved = read_safetensors(str(lm / "model.safetensors"))
    assert all(torch.equal(v, saved["model." + k]) for k, v in model.text_parts().state_dict().items())
    ids = model.text(["a photo of two red circles"], 16)
    nll, n = G.lm_loss(model, ids, model.text.pad)
    fresh = G.build_model({**cfg, "lm": None}, (4, 4, 4))
    assert nll / n < 0.8 * (G.lm_loss(fresh, ids, fresh.text.pad)[0] / n)  # it reads the world's text better
    # the T2I run from it
    tok = tmp_path / "tok"
    for stage in (0, 1):
        T.main([*TINY, "--out", str(tok), "--stage", str(stage)])
    out = tmp_path / "gen"
    G.main([*TINY, "--tokenizer", str(tok / "stage1.pt"), "--out", str(out), "--cache", str(tmp_path / "cache"),
            "--lm", str(lm), "--steps", "2", "--n-samples", "0"])
    ck = torch.load(out / "generator.pt", weights_only=True)
    assert ck["config"]["lm"] == str(lm) and ck["step"] == 2


def test_two_processes_pretrain_as_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["lm", "--preset", "tiny", "--device", "cpu", "--steps", "4"]
    G.main([*args, "--out", str(one)])
    torchrun([("generator", [*args, "--out", str(two)])], tmp_path)
    assert lm_losses(two) == pytest.approx(lm_losses(one), rel=1e-5)
    a, b = (read_safetensors(str(o / "model.safetensors")) for o in (one, two))
    # a key's bias has no gradient in exact arithmetic (softmax ignores a shift shared by all keys):
    # Adam turns the rounding noise left there into steps of up to lr each, so those tensors agree
    # to steps x lr (measured: 1.1e-5 after 4 steps at 3e-3); every other tensor to 1e-6
    bound = lambda k: 4 * G.LM_PRESETS["tiny"]["lr"] if k.endswith("k_proj.bias") else 1e-6  # noqa: E731
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=bound(k)) for k in a)


def test_a_second_maker_of_the_caption_lm_waits_for_the_first(tmp_path, monkeypatch):
    """resolve_lm makes a missing LM under common.one_maker's lock: a second process that takes the same lock (another
    job started at once) blocks until the first lets go, then finds the LM made and trains nothing."""
    import os
    import subprocess
    import sys
    import time
    from common import one_maker
    monkeypatch.chdir(tmp_path)  # resolve_lm's runs/caption-lm-<model>, here
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import generator as G; "
             "G.resolve_lm({'lm': 'caption', 'model': 'tiny'}, torch.device('cpu')); open('child_done', 'w')")
    with one_maker(os.path.join("runs", "caption-lm-tiny.lock")):
        proc = subprocess.Popen([sys.executable, "-c", child, root], cwd=tmp_path)
        time.sleep(3)  # time enough for it to start; it cannot pass the lock while this block holds it
        assert proc.poll() is None and not (tmp_path / "child_done").exists()
        G.pretrain_caption_lm("tiny", os.path.join("runs", "caption-lm-tiny"), G.LM_PRESETS["tiny"],
                              torch.device("cpu"))  # this process makes the LM (as resolve_lm would, under the lock)
    assert proc.wait(timeout=300) == 0 and (tmp_path / "child_done").exists()
    steps = [r["step"] for r in map(json.loads, open(tmp_path / "runs" / "caption-lm-tiny" / "metrics.jsonl"))]
    assert len(steps) == len(set(steps))  # pre-trained once: no step twice
