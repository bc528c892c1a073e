"""
pretrained.py -- the published models this project can load, each a drop-in for its reference
implementation: the same constructor, the same state_dict names and shapes, the same outputs (to
1e-5 on the reference tensors in ../shared/fixtures). They are not the paper's method, which
only needs "a representation encoder"; they are what lets the method run on the real weights.

  1. DINOv2 (facebookresearch/dinov2, hub models dinov2_vitb14 and dinov2_vitb14_reg): the
     representation encoder of the paper's Tables 2-6; the world encoder is the same class at
     a small size
  2. the .safetensors format (a small reader and writer) and a strict loader
  3. SigLIP / SigLIP2 (fixed resolution) vision tower: the encoder of Table 3
  4. Qwen2.5: the config, the weights of the generator's text backbone, and the byte-level BPE
     tokenizer (plain Python, no `regex` or `tokenizers` package)

Errors are ValueError with one sentence naming the problem and the fix.
"""
import functools
import json
import math
import os
import re
import sys
import unicodedata
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINOv2's input normalisation of images in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)
DINOV2_URLS = {
    "dinov2_vitb14": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
    "dinov2_vitb14_reg": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth",
}


@dataclass
class ViTConfig:
    """DinoVisionTransformer's constructor keywords that differ between model sizes."""
    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    init_values: float = 1.0
    num_register_tokens: int = 0
    interpolate_antialias: bool = False
    interpolate_offset: float = 0.1


# ------------------------------------------------------------------------------------------
# 1. DINOv2 ViT. The hub models use block_chunks=0 (flat `blocks.N` keys) and no drop path at
#    inference; LayerScale on both residual branches; exact GELU; LayerNorm eps 1e-6.
# ------------------------------------------------------------------------------------------

class PatchEmbed(nn.Module):
    def __init__(self, patch_size, in_chans, embed_dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)

    def forward(self, x):  # (B, 3, H, W) -> (B, H/p * W/p, D)
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoAttention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias=True, proj_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x):
        B, N, C = x.shape
        # (B, N, 3C) -> (3, B, heads, N, C/heads)
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class DinoMlp(nn.Module):
    def __init__(self, dim, hidden, bias=True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = nn.GELU()  # exact GELU, as the official model
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim, init_values):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class DinoBlock(nn.Module):
    """Pre-norm transformer block with LayerScale: x += ls1(attn(norm1 x)); x += ls2(mlp(norm2 x))."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, init_values=None, qkv_bias=True,
                 proj_bias=True, ffn_bias=True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = DinoAttention(dim, num_heads, qkv_bias, proj_bias)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = DinoMlp(dim, int(dim * mlp_ratio), ffn_bias)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT. Keyword arguments as the official constructor; drop_path, embed_layer,
    act_layer, block_fn and block_chunks are accepted and ignored (the hub models use
    block_chunks=0, i.e. flat `blocks.N` keys, and no drop path at inference)."""

    input_mean, input_std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, qkv_bias=True, ffn_bias=True, proj_bias=True,
                 init_values=None, ffn_layer="mlp", num_register_tokens=0,
                 interpolate_antialias=False, interpolate_offset=0.1, **ignored):
        super().__init__()
        if ffn_layer != "mlp":
            raise NotImplementedError(f"ffn_layer={ffn_layer!r}: only 'mlp' (ViT-S/B/L) is implemented")
        self.embed_dim, self.patch_size, self.num_heads = embed_dim, patch_size, num_heads
        self.num_register_tokens = num_register_tokens
        self.num_prefix_tokens = 1 + num_register_tokens  # cls and registers come before the patches
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        num_patches = (img_size // patch_size) ** 2
        # parameter order = official state_dict order: cls, pos, registers, mask
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.register_tokens = (nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
                                if num_register_tokens else None)
        self.blocks = nn.ModuleList(
            [DinoBlock(embed_dim, num_heads, mlp_ratio, init_values, qkv_bias, proj_bias, ffn_bias)
             for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Identity()
        # the official mask token (masked-image modelling); never used here, so never trained
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)
        # initialisation as the official code (timm ViT): small tokens, truncated-normal linears
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, x, h, w):
        """Resize the (M x M) positional grid to the input's (h/p x w/p) patch grid, bicubic."""
        npatch, N = x.shape[1] - 1, self.pos_embed.shape[1] - 1
        if npatch == N and h == w:
            return self.pos_embed
        pos = self.pos_embed.float()
        dim, M = x.shape[-1], int(math.sqrt(N))
        h0, w0 = h // self.patch_size, w // self.patch_size
        if self.interpolate_offset:
            # dinov2_vitb14: a scale factor with a small offset (avoids floating-point floor errors)
            kw = dict(scale_factor=((h0 + self.interpolate_offset) / M, (w0 + self.interpolate_offset) / M))
        else:
            kw = dict(size=(h0, w0))  # dinov2_vitb14_reg: explicit output size
        grid = pos[:, 1:].reshape(1, M, M, dim).permute(0, 3, 1, 2)  # (1, D, M, M)
        grid = F.interpolate(grid, mode="bicubic", antialias=self.interpolate_antialias, **kw)
        grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)  # (1, h0*w0, D)
        return torch.cat([pos[:, :1], grid], dim=1).to(x.dtype)

    def prepare_tokens_with_masks(self, x, masks=None):
        B, _, h, w = x.shape
        x = self.patch_embed(x)  # (B, L, D)
        if masks is not None:  # masked patches become the learned mask token (before cls)
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
        x = x + self.interpolate_pos_encoding(x, h, w)
        if self.register_tokens is not None:  # registers go in after the positions, between cls and patches
            x = torch.cat([x[:, :1], self.register_tokens.expand(B, -1, -1), x[:, 1:]], dim=1)
        return x  # (B, 1 + R + L, D)

    def forward_features(self, x, masks=None):
        x = self.prepare_tokens_with_masks(x, masks)
        for blk in self.blocks:
            x = blk(x)
        x_norm = self.norm(x)
        R = self.num_register_tokens
        return {"x_norm_clstoken": x_norm[:, 0], "x_norm_regtokens": x_norm[:, 1:R + 1],
                "x_norm_patchtokens": x_norm[:, R + 1:], "x_prenorm": x, "masks": masks}

    def get_intermediate_layers(self, x, n=1, reshape=False, return_class_token=False, norm=True):
        """Outputs of the last n blocks (n int) or of the blocks listed in n."""
        take = range(len(self.blocks) - n, len(self.blocks)) if isinstance(n, int) else n
        tokens = self.prepare_tokens_with_masks(x)
        outs = []
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens)
            if i in take:
                outs.append(tokens)
        if norm:
            outs = [self.norm(o) for o in outs]
        cls = [o[:, 0] for o in outs]
        outs = [o[:, 1 + self.num_register_tokens:] for o in outs]
        if reshape:  # (B, L, D) -> (B, D, h, w)
            B, _, H, W = x.shape
            outs = [o.reshape(B, H // self.patch_size, W // self.patch_size, -1).permute(0, 3, 1, 2).contiguous()
                    for o in outs]
        return tuple(zip(outs, cls)) if return_class_token else tuple(outs)

    def forward(self, *args, is_training=False, **kwargs):
        ret = self.forward_features(*args, **kwargs)
        return ret if is_training else self.head(ret["x_norm_clstoken"])


def load_dinov2_state_dict(name, path=None):
    """The official checkpoint of `name`: from `path`, else from the hub cache / official URL."""
    if path:
        if not os.path.isfile(path):
            raise ValueError(f"--encoder-ckpt {path} does not exist; give the path of "
                                 f"{os.path.basename(DINOV2_URLS[name])}")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"cannot read {path} as a DINOv2 state dict ({type(e).__name__}); download "
                                 f"it again from {DINOV2_URLS[name]}")
    url = DINOV2_URLS[name]
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu")  # uses the cache when present
    except Exception as e:
        raise ValueError(
            f"cannot download the {name} weights ({type(e).__name__}: offline?); fetch {url} on a "
            f"machine with internet and put it at {cached} or pass --encoder-ckpt PATH")



# ------------------------------------------------------------------------------------------
# 2. The .safetensors format: an 8-byte little-endian header length n; n bytes of JSON {name:
#    {"dtype", "shape", "data_offsets": [begin, end]}} (and an optional "__metadata__"); then
#    the raw little-endian data, offsets counted from the end of the header.
# ------------------------------------------------------------------------------------------

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


HEADER_LIMIT = 100_000_000  # the safetensors library refuses a longer header, and so does this reader
FIX = "download the file again (a complete .safetensors file), or re-save the tensors with safetensors"


def safetensors_entries(path, header, data_size):
    """[(name, dtype, shape, begin, end)] of a parsed header, in header order, once the format's
    rules hold (those the safetensors library checks) for a data buffer of data_size bytes; a
    broken rule is one sentence. Nothing is read or allocated before this returns."""
    meta = header.get("__metadata__", {})
    # __metadata__ (optional): free text, a JSON object of strings to strings
    if not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise ValueError(f"{path} has a __metadata__ that is not a JSON object of strings to strings; {FIX}")
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        where = f"tensor {name} in {path}"
        # every other entry: a JSON object with a dtype, a shape and data_offsets
        if not isinstance(info, dict):
            raise ValueError(f"{where} is described by a {type(info).__name__}, not by a JSON object; {FIX}")
        missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
        if missing:
            raise ValueError(f"{where} lacks {' and '.join(missing)} in the header; {FIX}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        # dtype: one of the names of DTYPES
        if not (isinstance(dtype, str) and dtype in DTYPES):
            raise ValueError(f"{where} has dtype {dtype}, which this reader does not know; convert the file "
                             f"to one of {list(DTYPES)}")
        # shape: a list of non-negative integers ([] for a scalar)
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise ValueError(f"{where} has shape {shape}, not a list of non-negative integers; {FIX}")
        # data_offsets: [begin, end], two integers counted from the start of the data buffer
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise ValueError(f"{where} has data_offsets {offsets}, not two integers; {FIX}")
        begin, end = offsets
        # 0 <= begin <= end <= data_size: the bytes lie inside the file
        if begin < 0:
            raise ValueError(f"{where} begins at byte {begin}, before the data buffer; {FIX}")
        if end < begin:
            raise ValueError(f"{where} ends at byte {end}, before it begins (byte {begin}); {FIX}")
        if end > data_size:
            raise ValueError(f"{where} ends at byte {end} of a {data_size}-byte data buffer; the file is "
                             f"truncated, download it again")
        # end - begin: exactly the bytes of the shape's elements
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
        if end - begin != nbytes:
            raise ValueError(f"{where} has {end - begin} bytes, not the {nbytes} of its {shape} {dtype}; {FIX}")
        entries.append((name, DTYPES[dtype], shape, begin, end))
    # sorted by offset, the tensors tile the data buffer: no overlap, no gap, nothing after the last
    at = 0
    for name, _, _, begin, end in sorted(entries, key=lambda e: (e[3], e[4])):
        if begin != at:
            gap = "they overlap" if begin < at else "a gap"
            raise ValueError(f"tensor {name} in {path} begins at byte {begin} of the data buffer, not at {at} "
                             f"where the tensors before it end ({gap}); {FIX}")
        at = end
    if at != data_size:
        raise ValueError(f"{path} has {data_size - at} unused bytes after its last tensor; {FIX}")
    return entries


def read_safetensors(path):
    """{name: tensor} of a .safetensors file; each tensor owns a copy of its bytes."""
    if not os.path.isfile(path):
        raise ValueError(f"{path} does not exist; pass the path of a .safetensors file")
    size, header = os.path.getsize(path), None
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if HEADER_LIMIT < n <= size - 8:
            raise ValueError(f"{path} has a {n}-byte header, over the format's limit of {HEADER_LIMIT} bytes; {FIX}")
        if 2 <= n <= size - 8:  # a length past the end of the file means another format
            try:
                header = json.loads(f.read(n).decode("utf-8"))
            except ValueError:  # not UTF-8, or not JSON
                pass
        if not isinstance(header, dict):
            raise ValueError(f"{path} is not a safetensors file (bad header); use a complete .safetensors "
                             f"download, not a .bin/.pth or a partial file")
        out = {}
        for name, dtype, shape, begin, end in safetensors_entries(path, header, size - 8 - n):
            f.seek(8 + n + begin)
            buf = bytearray(f.read(end - begin))  # writable, owned by the tensor below; checked size
            t = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
            out[name] = t.reshape(shape)  # (the host is assumed little-endian: x86, ARM)
    return out


def write_safetensors(path, tensors):
    """Save {name: tensor} as a .safetensors file (used by the tests to make checkpoints)."""
    names, header, blobs, offset = {v: k for k, v in DTYPES.items()}, {}, [], 0
    for name, t in tensors.items():
        b = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)  # spaces, so that the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def load_strict(module, sd, path, what, fix):
    """module.load_state_dict(sd, strict=True), each problem one sentence naming it: another
    model's checkpoint, a missing key, an unexpected key, a shape mismatch. `fix`: what to do."""
    own = module.state_dict()
    missing, extra = [k for k in own if k not in sd], [k for k in sd if k not in own]
    if len(missing) == len(own):
        raise ValueError(f"{path} is not a {what} checkpoint (none of its {len(sd)} tensors, e.g. "
                         f"{next(iter(sd), None)!r}, has a {what} name); {fix}")
    if missing or extra:
        k, n, kind = (missing[0], len(missing), "lacks") if missing else (extra[0], len(extra), "has unexpected")
        raise ValueError(f"{path} {kind} tensor {k!r} ({n} in all) for the {what} model; {fix}")
    for k, v in own.items():
        if v.shape != sd[k].shape:
            raise ValueError(f"{k} has shape {tuple(sd[k].shape)} in {path} but {tuple(v.shape)} in the {what} "
                             f"model built from its config; {fix}")
    module.load_state_dict(sd, strict=True)


# ------------------------------------------------------------------------------------------
# 3. SigLIP / SigLIP2 vision tower (fixed resolution), the published key layout without the
#    "vision_model." prefix, and the DINOv2 port's interface (embed_dim, patch_size, blocks,
#    norm, forward_features), so the tokenizer uses it as its representation encoder. No class
#    token: every output token is a patch. Pre-norm layers, tanh GELU, LayerNorm eps 1e-6.
# ------------------------------------------------------------------------------------------

@dataclass
class SiglipConfig:
    """SiglipVisionTower's keywords (those of a SigLIP vision config.json)."""
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    vision_use_head: bool = True


SIGLIP_SKIP = ("text_model.", "logit_scale", "logit_bias")  # the text half of a full SigLIP checkpoint
SIGLIP_FIX = "pass --encoder-ckpt the model.safetensors of a SigLIP/SigLIP2 checkpoint of the --encoder size"


class SiglipEmbeddings(nn.Module):
    def __init__(self, dim, image_size, patch_size, num_channels):
        super().__init__()
        self.patch_embedding = nn.Conv2d(num_channels, dim, patch_size, patch_size)  # with bias, no padding
        self.position_embedding = nn.Embedding((image_size // patch_size) ** 2, dim)

    def position_table(self, h, w):
        """(h*w, D) positions of an h x w patch grid: the g x g table, resized bicubically
        (align_corners=False, no antialias) when the grid differs from it."""
        table = self.position_embedding.weight  # (g*g, D)
        g = math.isqrt(len(table))
        if (h, w) == (g, g):
            return table
        grid = F.interpolate(table.reshape(1, g, g, -1).permute(0, 3, 1, 2), size=(h, w), mode="bicubic",
                             align_corners=False)  # (1, D, h, w)
        return grid.permute(0, 2, 3, 1).reshape(h * w, -1)

    def forward(self, x):  # (B, C, H, W) -> (B, N, D), row by row; pixels past a multiple of the patch dropped
        x = self.patch_embedding(x.to(self.patch_embedding.weight.dtype))  # (B, D, h, w)
        return x.flatten(2).transpose(1, 2) + self.position_table(*x.shape[-2:])


class SiglipAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)  # (the checkpoint's order: k, v, q)
        self.q_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x):  # bidirectional, no mask, scores scaled by head_dim ** -0.5
        B, N, D = x.shape
        q, k, v = (p(x).view(B, N, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D))


class SiglipMLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):  # GELU with the tanh approximation (gelu_pytorch_tanh), not the exact erf
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, dim, heads, hidden, eps):
        super().__init__()
        self.layer_norm1, self.self_attn = nn.LayerNorm(dim, eps=eps), SiglipAttention(dim, heads)
        self.layer_norm2, self.mlp = nn.LayerNorm(dim, eps=eps), SiglipMLP(dim, hidden)

    def forward(self, x):  # (B, L, D) -> (B, L, D)
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipPoolingHead(nn.Module):
    """Attention pooling: one learned query (probe) attends over all tokens, then a residual MLP.
    (B, N, D) -> (B, D). in_proj_weight stacks the q, k, v projections, as nn.MultiheadAttention."""

    def __init__(self, dim, heads, hidden, eps):
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, dim))
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.layernorm, self.mlp = nn.LayerNorm(dim, eps=eps), SiglipMLP(dim, hidden)

    def forward(self, x):
        r = self.attention(self.probe.expand(len(x), -1, -1), x, x, need_weights=False)[0]  # (B, 1, D)
        return (r + self.mlp(self.layernorm(r)))[:, 0]


class SiglipVisionTower(nn.Module):
    """SigLIP's vision transformer; keys as the checkpoint's without "vision_model."."""

    input_mean, input_std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # images in [0, 1] -> [-1, 1]
    num_register_tokens = num_prefix_tokens = 0

    def __init__(self, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, image_size,
                 patch_size, num_channels=3, layer_norm_eps=1e-6, vision_use_head=True):
        super().__init__()
        self.embed_dim, self.patch_size = hidden_size, patch_size
        self.embeddings = SiglipEmbeddings(hidden_size, image_size, patch_size, num_channels)
        self.encoder = nn.ModuleDict({"layers": nn.ModuleList(
            [SiglipEncoderLayer(hidden_size, num_attention_heads, intermediate_size, layer_norm_eps)
             for _ in range(num_hidden_layers)])})
        self.post_layernorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.head = SiglipPoolingHead(hidden_size, num_attention_heads, intermediate_size, layer_norm_eps) \
            if vision_use_head else None

    @property
    def blocks(self):  # the DINOv2 port's names, for E_s / D_s; the keys stay encoder.layers.*
        return self.encoder["layers"]

    @property
    def norm(self):  # likewise: the keys stay post_layernorm.*
        return self.post_layernorm

    def forward_features(self, x):
        """(B, 3, H, W) normalised with input_mean / input_std -> x_norm_patchtokens (B, N, D)
        after post_layernorm, x_prenorm the last layer's raw output, x_norm_clstoken the pooled
        (B, D) output (None without a head), hidden_states: the embeddings and every layer's
        output, the last one BEFORE post_layernorm (transformers' convention for SigLIP)."""
        x = self.embeddings(x)
        hidden_states = [x]
        for blk in self.blocks:
            x = blk(x)
            hidden_states.append(x)
        x_norm = self.post_layernorm(x)
        return {"x_norm_patchtokens": x_norm, "x_prenorm": x, "hidden_states": hidden_states,
                "x_norm_clstoken": None if self.head is None else self.head(x_norm)}


def siglip_config(path):
    """SiglipConfig from a config.json (a folder or the file): a full SigLIP/SigLIP2 config (its
    "vision_config") or a vision config; keys it leaves out take transformers' defaults."""
    path = os.path.join(path, "config.json") if os.path.isdir(path) else path
    with open(path) as f:
        cfg = json.load(f)
    cfg = cfg.get("vision_config", cfg)
    if "num_patches" in cfg or cfg.get("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise ValueError(f"{path} is a NaFlex SigLIP2 or non-SigLIP vision config, which this tower does not "
                         f"implement; use a fixed-resolution checkpoint such as siglip2-so400m-patch14-224")
    defaults = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    image_size=224, patch_size=16, num_channels=3, layer_norm_eps=1e-6, vision_use_head=True)
    return SiglipConfig(**{k: cfg.get(k, v) for k, v in defaults.items()})


def load_siglip_state_dict(path, model):
    """Load a .safetensors file (or a folder's model.safetensors) into `model`, strictly. Keys may
    carry "vision_model." or not; a full SigLIP checkpoint's text tower (text_model.*,
    logit_scale, logit_bias) is left out; everything else must match."""
    path = os.path.join(path, "model.safetensors") if os.path.isdir(path) else path
    sd = read_safetensors(path)
    if any(k.startswith("vision_model.") for k in sd):
        sd = {k.removeprefix("vision_model."): v for k, v in sd.items() if not k.startswith(SIGLIP_SKIP)}
    load_strict(model, sd, path, "SigLIP vision", SIGLIP_FIX)


# ------------------------------------------------------------------------------------------
# 4. Qwen2.5, the paper's generator backbone: its config, its weights (into the generator's
#    text parts, whose names are Qwen2's without "model."), and its tokenizer.
# ------------------------------------------------------------------------------------------

QWEN2_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "rms_norm_eps")
LM_FIX = "pass with --lm the Qwen2/Qwen2.5 folder whose config.json matches its model.safetensors"


def qwen2_config(folder):
    """config.json of a Qwen2/Qwen2.5 folder (or the file) as a dict. rope_theta is read from the
    top level (the published files) or from "rope_parameters" (transformers 5); it is never
    guessed, since 10000 instead of 1e6 silently changes every output."""
    path = os.path.join(folder, "config.json") if os.path.isdir(folder) else folder
    if not os.path.isfile(path):
        raise ValueError(f"{path} does not exist; {LM_FIX}")
    with open(path) as f:
        cfg = json.load(f)
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = cfg.get("rope_theta", rope.get("rope_theta"))
    missing = [k for k in QWEN2_KEYS if k not in cfg] + ["rope_theta"] * (theta is None)
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)} (rope_theta may sit at the top level or in "
                         f"rope_parameters); add it, e.g. rope_theta 1000000.0 for Qwen2.5")
    if rope.get("rope_type", rope.get("type", "default")) != "default" or cfg.get("use_sliding_window"):
        raise ValueError(f"{path} asks for scaled RoPE or sliding-window attention, which the generator does not "
                         f"implement; use a Qwen2.5 base or instruct config without them")
    return {**{k: cfg[k] for k in QWEN2_KEYS}, "rope_theta": float(theta)}


def load_qwen2_weights(folder, text_parts):
    """Load a Qwen2 folder's model.safetensors into `text_parts` (a module holding embed_tokens,
    layers, norm), strictly: "model." is removed from the names, and the output projection of an
    untied model (lm_head) is left out, since the generator never predicts text."""
    path = os.path.join(folder, "model.safetensors")
    sd = {k.removeprefix("model."): v for k, v in read_safetensors(path).items() if k != "lm_head.weight"}
    load_strict(text_parts, sd, path, "Qwen2 text", LM_FIX)


# Qwen2.5's pre-tokenizer pattern (tokenizer.json), verbatim. Python's `re` has no \p{L} / \p{N}:
# they are replaced by explicit ranges below; \s by Unicode's White_Space set, which is the
# reference engine's \s (Python's also takes U+001C..U+001F).
PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
WHITE_SPACE = r"\t\n\x0b\x0c\r\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


@functools.lru_cache(maxsize=None)
def category_ranges():
    """{"L": ..., "N": ...}: \\p{L} (categories Lu Ll Lt Lm Lo) and \\p{N} (Nd Nl No) as ranges for
    a `re` class, from unicodedata.category of all code points (built once, about 0.3 s). Exact
    for Python's Unicode version: marks (M*) are in neither, '²' and 'Ⅻ' are numbers."""
    runs = {"L": [], "N": []}
    for c in range(sys.maxunicode + 1):
        r = runs.get(unicodedata.category(chr(c))[0])
        if r is None:
            continue
        if r and r[-1][1] == c - 1:
            r[-1][1] = c  # extend the current run
        else:
            r.append([c, c])
    return {k: "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in r) for k, r in runs.items()}


@functools.lru_cache(maxsize=None)
def pre_tokenizer():
    """PATTERN compiled with `re`: \\p{L}, \\p{N} and \\s become their ranges inside a [...] class
    and a class of their own outside one; \\S becomes [^White_Space]."""
    cls = {r"\p{L}": category_ranges()["L"], r"\p{N}": category_ranges()["N"], r"\s": WHITE_SPACE}
    esc = r"\\p\{[LN]\}|\\s"
    p = re.sub(r"\[[^\]]*\]", lambda m: re.sub(esc, lambda e: cls[e.group()], m.group()), PATTERN)
    p = re.sub(esc, lambda e: f"[{cls[e.group()]}]", p)
    return re.compile(p.replace(r"\S", f"[^{WHITE_SPACE}]"))


def bytes_to_unicode():
    """GPT-2's table byte -> printable character: the 188 printable Latin-1 bytes map to
    themselves, the other 68 (controls, space, ...) to chr(256 + k) in byte order (' ' -> 'Ġ')."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + k) for k, b in enumerate(rest)}}


class QwenTokenizer:
    """Qwen2.5's byte-level BPE: special tokens split out by exact match, NFC, the pre-tokenizer
    pattern, UTF-8 bytes as GPT-2's printable characters, merges by rank, ids from vocab.json."""

    def __init__(self, vocab, merges, special):
        """vocab {symbol: id}, merges [(a, b)] in rank order, special {content: id}."""
        self.encoder, self.special, self.special_ids = vocab, special, set(special.values())
        self.decoder = {i: s for s, i in (vocab | special).items()}
        self.ranks = {pair: r for r, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        alts = "|".join(map(re.escape, sorted(special, key=len, reverse=True)))  # longest first
        self.special_re = re.compile(f"({alts})") if special else None
        self.cache = {}  # piece -> BPE symbols

    @classmethod
    def from_folder(cls, path):
        """vocab.json, merges.txt and the special tokens of a Qwen2.5 folder: tokenizer_config.json's
        "added_tokens_decoder" (as transformers' Qwen2Tokenizer), else tokenizer.json's "added_tokens"."""
        file = functools.partial(os.path.join, path)
        for name in ("vocab.json", "merges.txt"):
            if not os.path.isfile(file(name)):
                raise ValueError(f"{file(name)} does not exist; pass with --lm the folder of a Qwen2.5 model")
        with open(file("merges.txt"), encoding="utf-8") as f:  # '#version: 0.2', then 'a b' per line
            merges = [tuple(ln.split()) for ln in f if ln.strip() and not ln.startswith("#version")]
        special, config, full = {}, file("tokenizer_config.json"), file("tokenizer.json")
        if os.path.isfile(config):
            with open(config, encoding="utf-8") as f:
                special = {t["content"]: int(i) for i, t in json.load(f).get("added_tokens_decoder", {}).items()}
        elif os.path.isfile(full):
            with open(full, encoding="utf-8") as f:
                special = {t["content"]: t["id"] for t in json.load(f).get("added_tokens", [])}
        with open(file("vocab.json"), encoding="utf-8") as f:
            return cls(json.load(f), merges, special)

    def __len__(self):
        return len(self.decoder)

    def pre_tokenize(self, text):
        """NFC, then the pattern's matches; its alternatives cover every character."""
        return pre_tokenizer().findall(unicodedata.normalize("NFC", text))

    def bpe(self, piece):
        """Merge the adjacent pair of lowest rank, the leftmost among equals, until none is listed."""
        if piece not in self.cache:
            word = list(piece)
            while len(word) > 1:
                pairs = list(zip(word, word[1:]))
                best = min(pairs, key=lambda p: self.ranks.get(p, len(self.ranks)))
                if best not in self.ranks:
                    break
                i = pairs.index(best)
                word[i:i + 2] = [best[0] + best[1]]
            self.cache[piece] = word
        return self.cache[piece]

    def encode(self, text):
        """text -> ids; special tokens written in the text become their ids, none are added."""
        ids = []
        for part in self.special_re.split(text) if self.special_re else [text]:
            if part in self.special:  # (split keeps its separators: exactly the special tokens)
                ids.append(self.special[part])
                continue
            for piece in self.pre_tokenize(part):
                ids += [self.encoder[s] for s in self.bpe("".join(self.byte_encoder[b] for b in piece.encode()))]
        return ids

    def decode(self, ids):
        """ids -> text; bytes that are not valid UTF-8 (a cut character) become U+FFFD."""
        out = bytearray()
        for i in ids:
            s = self.decoder[i]
            out += s.encode() if i in self.special_ids else bytes(self.byte_decoder[c] for c in s)
        return out.decode("utf-8", errors="replace")
