"""
pretrained.py -- the published models this project can load, each a drop-in for its reference
implementation: the same constructor, the same state_dict names and shapes, the same outputs (to
1e-5 on the reference tensors in ../shared/fixtures). They are not the paper's method, which
only needs "a representation encoder"; they are what lets the method run on the real weights.

  1. DINOv2 (facebookresearch/dinov2, hub models dinov2_vitb14 and dinov2_vitb14_reg): the
     representation encoder of the paper's Tables 2-6; the world encoder is the same class at
     a small size

Errors are ValueError with one sentence naming the problem and the fix.
"""
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

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

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, qkv_bias=True, ffn_bias=True, proj_bias=True,
                 init_values=None, ffn_layer="mlp", num_register_tokens=0,
                 interpolate_antialias=False, interpolate_offset=0.1, **ignored):
        super().__init__()
        if ffn_layer != "mlp":
            raise NotImplementedError(f"ffn_layer={ffn_layer!r}: only 'mlp' (ViT-S/B/L) is implemented")
        self.embed_dim, self.patch_size, self.num_heads = embed_dim, patch_size, num_heads
        self.num_register_tokens = num_register_tokens
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

