"""pretrained.py and the paper's real parts: the safetensors reader, Qwen2.5's tokenizer, the
generator's text backbone as a drop-in for Qwen2 (--lm), and SigLIP as the tokenizer's encoder
(Table 3), against the reference outputs in ../shared/fixtures/{qwen2,siglip} (see their READMEs).
Fixture tests skip, not fail, when that folder is absent.

Run: python -m pytest tests/test_pretrained.py        (about 20 s on 2 cores)
"""
import json
import os
import re
import sys
import unicodedata

import pytest
import torch

from conftest import FIXTURES
import generator as G
import pretrained as P
import tokenizer as T

QWEN, SIGLIP = os.path.join(FIXTURES, "qwen2"), os.path.join(FIXTURES, "siglip")
TOL = 1e-5


def need(path):
    if not os.path.exists(path):
        pytest.skip(f"fixture {path} is absent")
    return path


def fixture_io(folder):
    return torch.load(os.path.join(need(folder), "tiny_io.pth"), weights_only=True)


def config(folder):
    """A fixture's config.json as written: the sizes a test expects are read from it."""
    with open(os.path.join(need(folder), "config.json")) as f:
        return json.load(f)


def max_err(a, b, keep=None):  # keep: (B, L) bool, compare real tokens only
    d = (a - b).abs()
    return (d[keep] if keep is not None else d).max().item()


# ---- safetensors --------------------------------------------------------------------------------

def test_safetensors_roundtrip_bf16_and_others(tmp_path):
    g = torch.Generator().manual_seed(0)
    ts = {"bf16": torch.randn(3, 5, generator=g).bfloat16().T,  # non-contiguous on purpose
          "f32": torch.randn(4, generator=g), "f16": torch.randn(2, 2, generator=g).half(),
          "i64": torch.arange(-3, 3), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 7)}
    P.write_safetensors(tmp_path / "x.safetensors", ts)
    back = P.read_safetensors(str(tmp_path / "x.safetensors"))
    assert list(back) == list(ts)
    for k, t in ts.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape and torch.equal(back[k], t), k
    back["bf16"].zero_()  # an independent copy: reading again gives the original
    assert torch.equal(P.read_safetensors(str(tmp_path / "x.safetensors"))["bf16"], ts["bf16"])


def test_safetensors_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        P.read_safetensors(str(tmp_path / "missing.safetensors"))
    for name, data in {"text": b"hello, not a checkpoint at all", "short": b"\x01\x02",
                       "json": (12).to_bytes(8, "little") + b"{not json!!}", "array": (2).to_bytes(8, "little") + b"[]",
                       "utf16": (6).to_bytes(8, "little") + "{}".encode("utf-16")}.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match="is not a safetensors file"):
            P.read_safetensors(str(tmp_path / name))
    h = json.dumps({"t": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "dtype").write_bytes(len(h).to_bytes(8, "little") + h + bytes(8))
    with pytest.raises(ValueError, match="has dtype C64"):
        P.read_safetensors(str(tmp_path / "dtype"))
    P.write_safetensors(tmp_path / "cut", {"t": torch.ones(100)})
    (tmp_path / "cut").write_bytes((tmp_path / "cut").read_bytes()[:-4])
    with pytest.raises(ValueError, match="truncated"):
        P.read_safetensors(str(tmp_path / "cut"))


def hand_made(path, header, data=b""):
    """A .safetensors file written byte by byte: the header's length, the JSON header, the data."""
    h = json.dumps(header).encode()
    path.write_bytes(len(h).to_bytes(8, "little") + h + data)
    return str(path)


def entry(begin, end, dtype="F32", shape=(2,)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}


BAD_HEADERS = {  # case: (header, data buffer, what the sentence says)
    "negative begin": ({"t": entry(-8, 0)}, bytes(8), "tensor t in {} begins at byte -8, before the data"),
    "end past the file": ({"t": entry(0, 10**15, shape=[10**15 // 4])}, bytes(100), "ends at byte 10" + "0" * 14),
    "end before begin": ({"t": entry(8, 0)}, bytes(8), "ends at byte 0, before it begins (byte 8)"),
    "no dtype": ({"t": {"shape": [2], "data_offsets": [0, 8]}}, bytes(8), "tensor t in {} lacks dtype in"),
    "no offsets": ({"t": {"dtype": "F32", "shape": [2]}}, bytes(8), "lacks data_offsets in"),
    "not an object": ({"t": [0, 8]}, bytes(8), "is described by a list, not by a JSON object"),
    "list as dtype": ({"t": entry(0, 8, dtype=["F32"])}, bytes(8), "has dtype ['F32'], which this reader"),
    "float offsets": ({"t": {**entry(0, 8), "data_offsets": [0.0, 8.0]}}, bytes(8), "[0.0, 8.0], not two integers"),
    "one offset": ({"t": {**entry(0, 8), "data_offsets": [8]}}, bytes(8), "has data_offsets [8], not two integers"),
    "negative dim": ({"t": entry(0, 8, shape=[-2])}, bytes(8), "shape [-2], not a list of non-negative integers"),
    "wrong size": ({"t": entry(0, 8, shape=[3])}, bytes(8), "has 8 bytes, not the 12 of its [3] F32"),
    "overlap": ({"a": entry(0, 8), "b": entry(4, 12)}, bytes(12), "tensor b in {} begins at byte 4 of the data "
                "buffer, not at 8 where the tensors before it end (they overlap)"),
    "gap": ({"b": entry(12, 20), "a": entry(0, 8)}, bytes(20), "begins at byte 12 of the data buffer, not at 8 "
            "where the tensors before it end (a gap)"),
    "trailing bytes": ({"t": entry(0, 8)}, bytes(12), "{} has 4 unused bytes after its last tensor"),
    "metadata": ({"__metadata__": {"format": 1}, "t": entry(0, 8)}, bytes(8), "a __metadata__ that is not"),
}


@pytest.mark.parametrize("case", BAD_HEADERS)
def test_safetensors_header_rules_are_checked_before_reading(tmp_path, case):
    header, data, says = BAD_HEADERS[case]
    path = hand_made(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(ValueError, match=re.escape(says.format(path))) as e:
        P.read_safetensors(path)
    assert "\n" not in str(e.value) and path in str(e.value)


def test_safetensors_header_over_the_format_limit(tmp_path):
    """A header length past 100,000,000 bytes is refused before the header is read (a sparse file)."""
    path, n = tmp_path / "huge.safetensors", 100_000_001
    with open(path, "wb") as f:
        f.write(n.to_bytes(8, "little"))
        f.truncate(8 + n + 8)
    with pytest.raises(ValueError, match=f"has a {n}-byte header, over the format's limit of 100000000 bytes"):
        P.read_safetensors(str(path))


def test_safetensors_valid_files_still_load(tmp_path):
    """What the format allows: __metadata__, entries listed out of offset order, a scalar, an empty
    tensor, a header padded with spaces; and the files of the project's own writer."""
    a, s = torch.arange(6, dtype=torch.int16).reshape(2, 3), torch.tensor(1.5)
    header = {"__metadata__": {"format": "pt"}, "s": entry(12, 16, shape=[]), "e": entry(16, 16, shape=[0, 3]),
              "a": entry(0, 12, dtype="I16", shape=[2, 3])}
    h = json.dumps(header).encode() + b"   "
    (tmp_path / "hand").write_bytes(len(h).to_bytes(8, "little") + h + a.numpy().tobytes() + s.numpy().tobytes())
    back = P.read_safetensors(str(tmp_path / "hand"))
    assert list(back) == ["s", "e", "a"] and torch.equal(back["a"], a) and torch.equal(back["s"], s)
    assert back["e"].shape == (0, 3)
    P.write_safetensors(tmp_path / "own", {"x": torch.ones(3, 2), "y": torch.zeros(0), "z": torch.arange(5)})
    assert torch.equal(P.read_safetensors(str(tmp_path / "own"))["z"], torch.arange(5))


# ---- Qwen2.5's tokenizer ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bpe():
    return P.QwenTokenizer.from_folder(need(os.path.join(QWEN, "tiny")))


def test_tokenizer_gives_the_fixture_ids_and_decodes_back(bpe):
    io = fixture_io(QWEN)
    for text, ids in zip(io["texts"], io["ids"]):
        assert bpe.encode(text) == ids, text
        assert bpe.decode(ids) == unicodedata.normalize("NFC", text)


def test_tokenizer_splits_special_tokens_out_first(bpe):
    with open(os.path.join(QWEN, "tiny", "tokenizer_config.json")) as f:
        added = {t["content"]: int(i) for i, t in json.load(f)["added_tokens_decoder"].items()}
    assert len(bpe) == max(added.values()) + 1
    for content, i in added.items():  # split out whole, even when glued to text
        assert bpe.encode(f"x{content}y") == bpe.encode("x") + [i] + bpe.encode("y")
        assert bpe.decode([i]) == content


@pytest.mark.parametrize("text", ["x²Ⅻ½ 3.14 ⅓", "e\u0301te\u0301 naïve Å/Å", "q\u0307 and \u0915\u093f\u0937",
                                  "ſ'S I'M THEY'LL we'D", "a\x1c.\x1f", "\u00a0 x\u3000y\u2028z",
                                  "tabs\t\t and\r\n\r\n  end  ", "👩\u200d👩\u200d👧 🇫🇷 \U0001d400",
                                  "日本語のテキスト、한국어", "<|im_end|><|im_start|>", "<|im_start", ""])
def test_tokenizer_round_trips(bpe, text):
    assert bpe.decode(bpe.encode(text)) == unicodedata.normalize("NFC", text)


def test_pre_tokenizer_classes(bpe):
    assert bpe.pre_tokenize("x²Ⅻ½ 12") == ["x", "²", "Ⅻ", "½", " ", "1", "2"]  # No and Nl are numbers
    assert bpe.pre_tokenize("q\u0307 word") == ["q", "\u0307", " word"]  # a mark is neither L nor N
    assert bpe.pre_tokenize("e\u0301t") == ["\u00e9t"]  # NFC first: one letter
    assert bpe.pre_tokenize("a\x1c.") == ["a", "\x1c."]  # U+001C is not Unicode White_Space
    assert bpe.pre_tokenize("It'S THEY'LL") == ["It", "'S", " THEY", "'LL"]


def test_letter_and_number_classes_are_the_unicode_categories():
    """The `re` ranges hold exactly the code points of categories L* and N*: checked on the whole
    BMP, every 16th code point above it, and both sides of every range end."""
    cls = P.category_ranges()
    ends = {int(h, 16) + d for h in re.findall(r"\\U([0-9a-f]{8})", "".join(cls.values())) for d in (-1, 0, 1)}
    points = sorted(set(range(0x10000)) | set(range(0x10000, sys.maxunicode + 1, 16)) | ends)
    text = "".join(chr(c) for c in points if not 0xD800 <= c <= 0xDFFF and 0 <= c <= sys.maxunicode)
    cats = [unicodedata.category(c)[0] for c in text]
    for k, body in cls.items():
        assert "".join(re.findall(f"[{body}]", text)) == "".join(c for c, g in zip(text, cats) if g == k)


# ---- the generator's text backbone as Qwen2 (--lm) ---------------------------------------------

def lm_model(folder, **override):
    """The tiny generator with the backbone of `folder` (its config.json), `override` on top."""
    mcfg = G.model_config(dict(model="tiny", patch=1, text_len=8, head="ddt", lm=folder))
    for k, v in override.items():
        setattr(mcfg, k, v)
    return G.Generator(mcfg, (4, 4, 4), 1, 8, "ddt").eval()


def lm_generator(folder, **override):
    """lm_model with the weights of `folder` (the fixture's)."""
    model = lm_model(folder, **override)
    P.load_qwen2_weights(folder, model.text_parts())
    return model


def text_outputs(model, io):
    with torch.no_grad():
        return model.text_forward(io["input_ids"], io["attention_mask"])


def test_text_path_reproduces_qwen2():
    io = fixture_io(QWEN)
    model, keep = lm_generator(os.path.join(QWEN, "tiny")), io["attention_mask"].bool()
    hidden, last, logits = text_outputs(model, io)
    assert len(hidden) == len(io["hidden_states"]) == len(model.layers) + 1
    for a, b in zip(hidden, io["hidden_states"]):  # the last entry is after the final norm
        assert max_err(a, b, keep) <= TOL
    assert max_err(last, io["last_hidden_state"], keep) <= TOL and max_err(logits, io["logits"], keep) <= TOL


def test_wrong_rope_theta_or_tiled_kv_heads_do_not_reproduce_it(monkeypatch):
    io = fixture_io(QWEN)
    keep, folder = io["attention_mask"].bool(), os.path.join(QWEN, "tiny")
    wrong = P.qwen2_config(folder)["rope_theta"] / 100  # 1e4 for Qwen2.5's 1e6 (read in either config form)
    assert max_err(text_outputs(lm_generator(folder, rope_theta=wrong), io)[1], io["last_hidden_state"], keep) > 1e-3
    model = lm_generator(folder)
    attn = model.layers[0].self_attn
    if not attn.heads > attn.kv_heads > 1:
        pytest.skip("the fixture's attention has no key/value groups: tiling and repeating are the same")
    # k0 k1 k0 k1 (tiled) instead of k0 k0 k1 k1 (repeat_interleave): the wrong heads meet
    monkeypatch.setattr(G.Qwen2Attention, "repeat_kv", lambda self, x: x.repeat(1, self.heads // self.kv_heads, 1, 1))
    assert max_err(text_outputs(model, io)[1], io["last_hidden_state"], keep) > 1e-3


def test_rope_theta_is_read_in_both_config_forms_and_never_guessed(tmp_path):
    tiny = P.qwen2_config(need(os.path.join(QWEN, "tiny")))
    cfg = json.load(open(os.path.join(QWEN, "tiny", "config.json")))
    assert P.qwen2_config(os.path.join(QWEN, "config_qwen2.5_0.5b.json"))["rope_theta"] == cfg["rope_theta"]  # nested
    cfg["rope_parameters"] = {"rope_theta": cfg.pop("rope_theta"), "rope_type": "default"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert P.qwen2_config(str(tmp_path)) == tiny
    del cfg["rope_parameters"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="lacks rope_theta"):
        P.qwen2_config(str(tmp_path))


def test_qwen2_weights_load_strictly_with_one_sentence_per_problem(tmp_path):
    folder = need(os.path.join(QWEN, "tiny"))
    model = lm_generator(folder)
    sd = P.read_safetensors(os.path.join(folder, "model.safetensors"))
    cases = {"lacks tensor 'norm.weight'": {k: v for k, v in sd.items() if k != "model.norm.weight"},
             "has unexpected tensor 'extra.bias'": {**sd, "model.extra.bias": torch.zeros(1)},
             "is not a Qwen2 text checkpoint": P.read_safetensors(os.path.join(need(SIGLIP), "tiny", "model.safetensors"))}
    for msg, bad in cases.items():
        P.write_safetensors(tmp_path / "model.safetensors", bad)
        with pytest.raises(ValueError, match=re.escape(msg)) as e:
            P.load_qwen2_weights(str(tmp_path), model.text_parts())
        assert "\n" not in str(e.value) and "--lm" in str(e.value)
    rows, width = config(folder)["vocab_size"], config(folder)["hidden_size"]
    wide = lm_model(folder, vocab_size=rows + 97)  # the fixture's layers and width, 97 more rows
    with pytest.raises(ValueError, match=rf"embed_tokens.weight has shape \({rows}, {width}\) in .* but "
                                         rf"\({rows + 97}, {width}\)"):
        P.load_qwen2_weights(folder, wide.text_parts())
    P.write_safetensors(tmp_path / "model.safetensors", {k: v.bfloat16() for k, v in sd.items()})  # as published
    P.load_qwen2_weights(str(tmp_path), model.text_parts())
    assert torch.equal(model.norm.weight, sd["model.norm.weight"].bfloat16().float())


def test_paper_preset_with_qwen2_5_0_5b_has_its_keys_and_parameter_count(tmp_path):
    """--preset paper --lm Qwen2.5-0.5B: the backbone's names (with "model."), shapes and parameter
    count are the published model's (tied embedding counted once), the image parts come on top."""
    ref = json.load(open(os.path.join(need(QWEN), "keys_qwen2.5_0.5b.json")))
    (tmp_path / "config.json").write_text(open(os.path.join(QWEN, "config_qwen2.5_0.5b.json")).read())
    cfg = {**G.parse_args(["--preset", "paper", "--lm", str(tmp_path)]), "lm": str(tmp_path)}
    with torch.device("meta"):
        model = G.Generator(G.model_config(cfg), (96, 16, 16), 1, cfg["text_len"], "ddt")
    text = {"model." + k: list(v.shape) for k, v in model.text_parts().state_dict().items()}
    assert text == {k: ref["state_dict"][k] for k in ref["safetensors_keys"]}
    assert sum(p.numel() for p in model.text_parts().parameters()) == ref["num_params"]
    assert sum(p.numel() for p in model.parameters()) > ref["num_params"]  # + patch embedder, timestep, DDT head


def test_a_tiny_run_with_lm_reads_captions_through_qwen_and_cuts_long_ones(tmp_path):
    """Training with --lm: the text ids are Qwen's BPE, its weights start the backbone, and a
    caption longer than the context is cut and counted, not a stop."""
    folder = need(os.path.join(QWEN, "tiny"))
    tok = tmp_path / "tok"
    for stage in (0, 1):
        T.main(["--preset", "tiny", "--device", "cpu", "--out", str(tok), "--stage", str(stage), "--steps", "2"])
    out = tmp_path / "gen"
    G.main(["--preset", "tiny", "--device", "cpu", "--tokenizer", str(tok / "stage1.pt"), "--out", str(out),
            "--cache", str(tmp_path / "cache"), "--lm", folder, "--text-len", "6", "--steps", "2", "--n-samples", "1"])
    assert json.load(open(out / "config.json"))["captions_cut"] > 0
    model, cfg, _ = G.load_generator(str(out))
    assert isinstance(model.text, G.QwenText) and model.embed_tokens.num_embeddings == config(folder)["vocab_size"]
    ids = model.text(["a red circle"], 6)
    assert ids[0].tolist()[:len(model.text.encode("a red circle"))] == P.QwenTokenizer.from_folder(folder).encode(
        "a red circle") and ids[0, -1] == model.text.pad


# ---- SigLIP, the encoder of Table 3 ------------------------------------------------------------

@pytest.fixture(scope="module")
def tower():
    folder = need(os.path.join(SIGLIP, "tiny"))
    model = P.SiglipVisionTower(**vars(P.siglip_config(folder))).eval()
    P.load_siglip_state_dict(folder, model)
    return model


@pytest.mark.parametrize("prefix", ["", "interp_"])
def test_siglip_reproduces_the_reference(tower, prefix):
    io = fixture_io(SIGLIP)
    with torch.no_grad():
        out = tower.forward_features(io[prefix + "pixel_values"])
    assert len(out["hidden_states"]) == len(io[prefix + "hidden_states"]) == len(tower.blocks) + 1
    for a, b in zip(out["hidden_states"], io[prefix + "hidden_states"]):
        assert max_err(a, b) <= TOL
    assert torch.equal(out["hidden_states"][-1], out["x_prenorm"])  # before post_layernorm, unlike Qwen2
    assert max_err(out["x_norm_patchtokens"], io[prefix + "last_hidden_state"]) <= TOL
    assert max_err(out["x_norm_clstoken"], io[prefix + "pooler_output"]) <= TOL


def test_siglip_checkpoint_forms_and_errors(tmp_path, tower):
    sd = P.read_safetensors(os.path.join(need(SIGLIP), "tiny", "model.safetensors"))
    full = {**sd, "text_model.embeddings.token_embedding.weight": torch.zeros(3, 4), "logit_scale": torch.zeros(1),
            "logit_bias": torch.zeros(1)}
    model = P.SiglipVisionTower(**vars(P.siglip_config(os.path.join(SIGLIP, "tiny"))))
    for good in ({k.removeprefix("vision_model."): v for k, v in sd.items()}, full):  # no prefix; a full SigLIP
        P.write_safetensors(tmp_path / "model.safetensors", good)
        P.load_siglip_state_dict(str(tmp_path), model)
        assert torch.equal(model.post_layernorm.weight, tower.post_layernorm.weight)
    cases = {"lacks tensor 'post_layernorm.weight'": {k: v for k, v in sd.items() if "post_layernorm.w" not in k},
             "has unexpected tensor 'extra.bias'": {**sd, "vision_model.extra.bias": torch.zeros(1)},
             "is not a SigLIP vision checkpoint": P.read_safetensors(os.path.join(need(QWEN), "tiny", "model.safetensors"))}
    for msg, bad in cases.items():
        P.write_safetensors(tmp_path / "model.safetensors", bad)
        with pytest.raises(ValueError, match=re.escape(msg)):
            P.load_siglip_state_dict(str(tmp_path), model)


def test_siglip_so400m_build_matches_the_published_layout():
    ref = json.load(open(os.path.join(need(SIGLIP), "keys_so400m_patch14_224.json")))
    with torch.device("meta"):
        model = T.build_encoder("siglip2_so400m_patch14_224")
    assert [("vision_model." + k, list(v.shape)) for k, v in model.state_dict().items()] == list(ref["state_dict"].items())
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]
    # Sec 4.4's semantic:pixel ratio for SigLIP2 is the default with this encoder
    cfg = T.parse_args(["--stage", "1", "--preset", "paper", "--encoder", "siglip2_so400m_patch14_224"])
    assert cfg["semantic_weight"] / cfg["pixel_weight"] == pytest.approx(0.05)


def test_the_tokenizer_trains_on_a_siglip_encoder(tmp_path, monkeypatch, tower):
    """The S-VAE on the fixture's SigLIP tower, through tokenizer.py: the checkpoint loads strictly,
    E_s and D_s inherit SigLIP's last layers, the input is normalised with 0.5 / 0.5, and no token
    is dropped as a class token (RAE)."""
    cfg = config(os.path.join(SIGLIP, "tiny"))
    size, width, layers = cfg["image_size"], cfg["hidden_size"], cfg["num_hidden_layers"]
    grid = size // cfg["patch_size"]
    image = grid * 2 ** (len(T.DECODERS["tiny"].ch_mult) - 1)  # what the tiny pixel decoder makes of that grid
    monkeypatch.setitem(T.ENCODERS, "siglip-fixture", P.siglip_config(os.path.join(SIGLIP, "tiny")))
    ckpt = os.path.join(SIGLIP, "tiny", "model.safetensors")
    args = ["--preset", "tiny", "--device", "cpu", "--encoder", "siglip-fixture", "--encoder-ckpt", ckpt,
            "--encoder-size", str(size), "--image-size", str(image), "--stage", "1", "--steps", "2"]
    T.main([*args, "--out", str(tmp_path / "s")])
    tok = T.load_tokenizer(str(tmp_path / "s" / "stage1.pt"))
    assert torch.equal(tok.encoder.blocks[0].mlp.fc1.weight, tower.blocks[0].mlp.fc1.weight)  # frozen in stage 1
    assert isinstance(tok.E_s.blocks[0], P.SiglipEncoderLayer) and len(tok.E_s.blocks) == min(3, layers)
    x = torch.rand(2, 3, image, image) * 2 - 1
    with torch.no_grad():
        want = tower.forward_features(torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", antialias=True))
    assert torch.allclose(tok.features(x), want["x_norm_patchtokens"], atol=1e-5)  # (x + 1) / 2 - 0.5) / 0.5 = x
    T.main([*args, "--out", str(tmp_path / "r"), "--recipe", "rae"])
    assert T.load_tokenizer(str(tmp_path / "r" / "stage1.pt")).encode(x).shape == (2, width, grid, grid)  # all patches
    with pytest.raises(SystemExit, match="--encoder-ckpt"):
        T.main([*args[:6], *args[8:], "--out", str(tmp_path / "n")])
