"""The DINOv2 drop-in (pretrained.py) against the official model's outputs, and loading official checkpoints.

Run: python -m pytest tests/test_dinov2.py
The reference tensors in ../shared/fixtures/dinov2 come from the official code with random
weights (see its README); without that folder the fixture tests are skipped, not failed.
"""
import json
import os

import pytest
import torch

from conftest import FIXTURES
import pretrained as P
import tokenizer as T

FIX = os.path.join(FIXTURES, "dinov2")
needs_fixture = pytest.mark.skipif(not os.path.isdir(FIX), reason="../shared/fixtures/dinov2 is absent")
TOL = 1e-5


def tiny_model(variant):
    """The fixture's tiny architecture, built through the official constructor keywords."""
    meta = json.load(open(os.path.join(FIX, "meta.json")))
    common = {k: v for k, v in meta["tiny_common"].items()
              if k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio",
                       "init_values", "ffn_layer", "block_chunks", "qkv_bias", "proj_bias", "ffn_bias")}
    model = P.DinoVisionTransformer(**common, **meta["tiny_variants"][variant]).eval()
    sd = torch.load(os.path.join(FIX, f"{variant}.pth"), map_location="cpu")
    assert list(model.state_dict()) == list(sd)  # same names, same order
    model.load_state_dict(sd, strict=True)
    return model


@needs_fixture
@pytest.mark.parametrize("variant", ["tiny_reg4", "tiny_noreg"])
def test_outputs_match_official(variant):
    model = tiny_model(variant)
    io = torch.load(os.path.join(FIX, f"{variant}_io.pth"), map_location="cpu")
    x, xn, masks = io["x"], io["x_nonsquare"], io["masks"]
    with torch.no_grad():
        ff = model.forward_features(x)
        inter1 = model.get_intermediate_layers(x, n=1)[0]
        (idx0, cls0), = model.get_intermediate_layers(x, n=[0], reshape=True, return_class_token=True, norm=False)
        mf = model.forward_features(x, masks)
        ours = {
            "x_norm_clstoken": ff["x_norm_clstoken"], "x_norm_regtokens": ff["x_norm_regtokens"],
            "x_norm_patchtokens": ff["x_norm_patchtokens"], "x_prenorm": ff["x_prenorm"],
            "forward": model(x), "intermediate_n1": inter1,
            "intermediate_idx0_reshape_nonorm": idx0, "intermediate_idx0_cls_nonorm": cls0,
            "masked_x_norm_clstoken": mf["x_norm_clstoken"],
            "masked_x_norm_patchtokens": mf["x_norm_patchtokens"],
            "nonsquare_x_prenorm": model.forward_features(xn)["x_prenorm"],
        }
    outputs = [k for k in io if k not in ("x", "x_nonsquare", "masks")]
    assert sorted(outputs) == sorted(ours), "every output tensor of the fixture is compared"
    worst = 0.0
    for k in outputs:
        assert ours[k].shape == io[k].shape, k
        err = (ours[k] - io[k]).abs().max().item() if io[k].numel() else 0.0  # no registers: (B, 0, D)
        worst = max(worst, err)
        assert err < TOL, f"{variant} {k}: max abs error {err:.2e}"
    print(f"{variant}: largest abs error over {len(outputs)} tensors = {worst:.3e}")


@needs_fixture
@pytest.mark.parametrize("name,keys", [("dinov2_vitb14", "keys_vitb14.json"),
                                        ("dinov2_vitb14_reg", "keys_vitb14_reg4.json")])
def test_vitb14_state_dict_layout(name, keys):
    """The ViT-B/14 builds (no weights) have the official names, order and shapes."""
    ref = json.load(open(os.path.join(FIX, keys)))
    with torch.device("meta"):  # shapes only: no memory, no weights
        sd = T.build_encoder(name).state_dict()
    assert list(sd) == list(ref)
    assert {k: list(v.shape) for k, v in sd.items()} == ref
    meta = json.load(open(os.path.join(FIX, "meta.json")))
    assert sum(v.numel() for v in sd.values()) == meta["hub_models"][name]["num_params"]


def test_load_official_layout_from_path(tmp_path):
    """A state dict saved in the official layout loads strictly through --encoder-ckpt."""
    torch.manual_seed(0)
    src = T.build_encoder("dinov2_vitb14_reg")
    path = tmp_path / "dinov2_vitb14_reg4_pretrain.pth"
    torch.save(src.state_dict(), path)
    enc = T.build_encoder("dinov2_vitb14_reg")
    enc.load_state_dict(P.load_dinov2_state_dict("dinov2_vitb14_reg", str(path)), strict=True)
    assert torch.equal(enc.pos_embed, src.pos_embed) and torch.equal(enc.blocks[11].ls2.gamma, src.blocks[11].ls2.gamma)
    # the wrong variant is refused with one sentence, not a traceback
    with pytest.raises(SystemExit, match="do not fit --encoder dinov2_vitb14"):
        T.main(["--stage", "1", "--preset", "tiny", "--encoder", "dinov2_vitb14", "--encoder-size", "28",
                "--image-size", "16", "--decoder", "tiny", "--encoder-ckpt", str(path), "--out", str(tmp_path / "r")])


def test_offline_without_path_says_where_to_put_the_file(tmp_path, monkeypatch):
    """No internet and no --encoder-ckpt: one sentence naming the URL and the hub-cache path."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    try:  # this test is about the offline machine; skip where the download would succeed
        import socket
        socket.create_connection(("dl.fbaipublicfiles.com", 443), timeout=3).close()
        pytest.skip("online: the official download would succeed")
    except OSError:
        pass
    with pytest.raises(ValueError) as e:
        P.load_dinov2_state_dict("dinov2_vitb14")
    msg = str(e.value)
    assert P.DINOV2_URLS["dinov2_vitb14"] in msg and "--encoder-ckpt" in msg
    assert os.path.join(str(tmp_path / "hub"), "hub", "checkpoints", "dinov2_vitb14_pretrain.pth") in msg
    assert msg.count(". ") == 0 and "\n" not in msg  # one sentence
