"""generator.py -- text -> tokenizer latents: a deep-fusion transformer with RAE's wide DDT head.

Paper: Zhang et al. 2025, "Both Semantics and Reconstruction Matter" (arXiv 2512.17909), Sec. 3.4
and 4.1; the DDT head is RAE's DiT^DH (Zheng et al. 2025). Read top to bottom:

  1. presets and model sizes (a registry with `tiny`; `paper` = Qwen2.5-0.5B's shape)
  2. the text tokenizer: the world's words, and bytes for anything else
  3. model pieces: RMSNorm, SwiGLU, rotary attention, the Qwen2-like block, the deep-fusion
     backbone (text and image tokens share every block), the wide DDT head
  4. flow matching, kept apart from the network (minRF style): flow_loss() and flow_sample()
  5. data: (image, caption) pairs encoded ONCE by the frozen tokenizer and cached on disk
  6. the training loop (DDP, EMA, exact resume, atomic checkpoints, metrics.jsonl)
  7. sampling and the `sample` sub-command
  8. the `bench` sub-command (samples/s and model FLOP utilisation); main()

  python generator.py --tokenizer runs/tokenizer-cpu/stage2.pt --preset cpu
  torchrun --nproc_per_node=2 generator.py --tokenizer runs/tokenizer-cpu/stage2.pt --preset cpu
  python generator.py sample --ckpt runs/generator-cpu --prompt "two red circles" --n 8 --out grid.png
  python generator.py bench --preset world
"""
import argparse
import hashlib
import json
import math
import os
import re
import resource
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm

import tokenizer
from tokenizer import TokenizerError, all_mean, compute_cleanup, compute_init, print0, save_checkpoint

SCRIPT = "generator.py"  # written into every checkpoint, checked when one is loaded


class GeneratorError(ValueError):
    """A problem the user can fix; main() turns it into one clear sentence (never a traceback)."""


# ------------------------------------------------------------------------------------------
# 1. Model sizes and presets
# ------------------------------------------------------------------------------------------

@dataclass
class ModelConfig:
    width: int          # backbone hidden size D
    depth: int          # backbone blocks, shared by text and image tokens
    heads: int          # query heads
    kv_heads: int       # key/value heads (grouped-query attention, as Qwen2)
    mlp: int            # SwiGLU hidden size
    head_width: int     # wide DDT head: width W > D (RAE: 2048 against DiT-XL's 1152)
    head_depth: int     # DDT head blocks (RAE: 2)
    head_heads: int
    vocab_size: int = 0  # 0: the size of the text tokenizer below
    rope_theta: float = 1e6  # Qwen2's rotary base


# The backbone of `paper` has Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 query / 2 key-value
# heads, SwiGLU 4864, vocabulary 151936); offline nothing loads its weights. The DDT head of
# `paper` is RAE's: 2 blocks of width 2048.
MODELS = {
    "tiny": ModelConfig(width=32, depth=2, heads=2, kv_heads=1, mlp=64, head_width=48, head_depth=1, head_heads=2),
    "cpu": ModelConfig(width=128, depth=4, heads=4, kv_heads=2, mlp=344, head_width=192, head_depth=2, head_heads=4),
    "world": ModelConfig(width=512, depth=12, heads=8, kv_heads=2, mlp=1408, head_width=1024, head_depth=2,
                         head_heads=16),
    "paper": ModelConfig(width=896, depth=24, heads=14, kv_heads=2, mlp=4864, head_width=2048, head_depth=2,
                         head_heads=16, vocab_size=151936),
}

# A preset is a dict of argparse defaults; any flag overrides it. Sampling defaults are the
# paper's (Sec. 4.1: 50 Euler steps, shift 3, CFG 6.5) except where a preset says otherwise.
PRESETS = {
    # tests: seconds on CPU
    "tiny": dict(model="tiny", text_len=16, batch_size=8, lr=1e-3, warmup=0, steps=20, n_train=64, ema=0.9,
                 log_every=1, ckpt_every=10, sample_steps=8, n_samples=2),
    # the laptop demo on 2 CPU cores, one thread (fastest on a busy machine): measured ~56 samples/s,
    # 2000 steps in ~40 min on a shared 2-core CPU, plus ~3 min to cache the 20000 latents once
    "cpu": dict(model="cpu", text_len=20, batch_size=64, lr=1e-3, warmup=100, steps=2000, n_train=20000,
                ema=0.995, log_every=25, ckpt_every=500, sample_steps=50, n_samples=8),
    # the miniature paper on one GPU
    "world": dict(model="world", text_len=20, batch_size=256, lr=3e-4, warmup=1000, steps=60000, n_train=200000,
                  ema=0.9999, log_every=100, ckpt_every=5000, sample_steps=50, n_samples=8),
    # the paper (Sec. 4.1): batch ~730, lr 1e-4, EMA 0.9999, 200k iterations, 256 px; captions from --data
    "paper": dict(model="paper", text_len=128, batch_size=730, lr=1e-4, warmup=1000, steps=200000, n_train=0,
                  ema=0.9999, log_every=100, ckpt_every=5000, sample_steps=50, n_samples=8),
}
# config keys that fix tensor shapes: resuming with other values cannot work
SHAPE_KEYS = ("model", "patch", "text_len", "head")


def shift_factor(C, P):
    """Sec. 4.1: s = sqrt(C * P^2 / 16): 2 for Flux-VAE (C=16, P=2), 6.93 for DINOv2-B (768, 1)."""
    return math.sqrt(C * P * P / 16)


# ------------------------------------------------------------------------------------------
# 2. Text tokenizer. The paper uses Qwen's; offline we have the world's word list. A word in it
#    (compared lower-cased) is one token; anything else is spelled as UTF-8 bytes, so any text
#    has an encoding. ids: 0 pad, 1 bos, 2..257 the bytes, 258.. the words.
# ------------------------------------------------------------------------------------------

PAD, BOS, N_SPECIAL = 0, 1, 2


class TextTokenizer:
    def __init__(self, words=None):
        self.words = sorted(set(w.lower() for w in (words if words is not None else tokenizer.VOCAB)))
        self.word_id = {w: N_SPECIAL + 256 + i for i, w in enumerate(self.words)}

    def __len__(self):
        return N_SPECIAL + 256 + len(self.words)

    def encode(self, text):
        """text -> list of ids (no bos). Pieces are words or single punctuation marks; an unknown
        piece becomes the bytes of " piece" (the leading space keeps word boundaries)."""
        ids = []
        for piece in re.findall(r"\w+|[^\w\s]", text):
            if piece.lower() in self.word_id:
                ids.append(self.word_id[piece.lower()])
            else:
                ids.extend(N_SPECIAL + b for b in (" " + piece).encode("utf-8"))
        return ids

    def decode(self, ids):
        out = bytearray()
        for i in ids:
            if i >= N_SPECIAL + 256:
                out += (" " + self.words[i - N_SPECIAL - 256]).encode()
            elif i >= N_SPECIAL:
                out.append(i - N_SPECIAL)
        return out.decode("utf-8", errors="replace").strip()

    def __call__(self, texts, length, strict=True):
        """A batch of texts -> (B, length) long: [bos, ids..., pad...]. The empty text is the
        null caption of classifier-free guidance. Too long a text is an error (strict) or cut."""
        out = torch.full((len(texts), length), PAD, dtype=torch.long)
        for b, text in enumerate(texts):
            ids = [BOS] + self.encode(text)
            if len(ids) > length:
                if strict:
                    raise GeneratorError(f"the prompt {text[:40]!r}{'...' if len(text) > 40 else ''} has "
                                         f"{len(ids) - 1} tokens but the model's text context holds "
                                         f"{length - 1}; shorten it (or train with a larger --text-len)")
                ids = ids[:length]
            out[b, :len(ids)] = torch.tensor(ids)
        return out


# ------------------------------------------------------------------------------------------
# 3. Model pieces
# ------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6, affine=True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x):
        y = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps).to(x.dtype)
        return y * self.weight if self.weight is not None else y


class SwiGLU(nn.Module):
    """Qwen2's MLP: down(silu(gate x) * up x), no biases."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def rope_tables(positions, head_dim, theta):
    """cos, sin (L, head_dim) for rotary embeddings; a position of None is the identity (image
    tokens get their positions from the 2D sin-cos code instead)."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)  # (hd/2,)
    pos = torch.tensor([p if p is not None else 0 for p in positions], dtype=torch.float)
    ang = pos[:, None] * inv[None, :]  # (L, hd/2)
    ang[torch.tensor([p is None for p in positions])] = 0.0
    ang = torch.cat([ang, ang], -1)  # (L, hd), the rotate-half layout of Qwen2
    return ang.cos(), ang.sin()


def apply_rope(x, cos, sin):  # x (B, H, L, hd)
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


class Attention(nn.Module):
    """Grouped-query self-attention (Qwen2: biases on q, k, v, none on o) with an optional boolean
    mask (True = may attend) and rotary tables; F.scaled_dot_product_attention does the work."""

    def __init__(self, dim, heads, kv_heads):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, dim // heads
        self.q_proj = nn.Linear(dim, heads * self.hd)
        self.k_proj = nn.Linear(dim, kv_heads * self.hd)
        self.v_proj = nn.Linear(dim, kv_heads * self.hd)
        self.o_proj = nn.Linear(heads * self.hd, dim, bias=False)

    def forward(self, x, mask=None, rope=None):
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.heads, self.hd).transpose(1, 2)  # (B, H, L, hd)
        k = self.k_proj(x).view(B, L, self.kv_heads, self.hd).transpose(1, 2)  # (B, KV, L, hd)
        v = self.v_proj(x).view(B, L, self.kv_heads, self.hd).transpose(1, 2)
        if rope is not None:  # (bf16 under autocast: the tables follow q's dtype)
            cos, sin = rope[0].to(q.dtype), rope[1].to(q.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.kv_heads != self.heads)
        return self.o_proj(y.transpose(1, 2).reshape(B, L, -1))


class Block(nn.Module):
    """Qwen2 decoder layer: pre-RMSNorm attention and SwiGLU, residual."""

    def __init__(self, dim, heads, kv_heads, mlp):
        super().__init__()
        self.input_layernorm = RMSNorm(dim)
        self.self_attn = Attention(dim, heads, kv_heads)
        self.post_attention_layernorm = RMSNorm(dim)
        self.mlp = SwiGLU(dim, mlp)

    def forward(self, x, mask, rope):
        x = x + self.self_attn(self.input_layernorm(x), mask, rope)
        return x + self.mlp(self.post_attention_layernorm(x))


def sincos_1d(dim, pos):
    """(len(pos), dim) sin-cos code of positions, frequencies 1 / 10000^(2i/dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, device=pos.device).float() / (dim // 2))
    ang = pos.float()[:, None] * omega[None, :]
    return torch.cat([ang.sin(), ang.cos()], 1)


def sincos_2d(dim, h, w):
    """(h*w, dim) 2D sin-cos code (MAE/DiT): half the channels code the row, half the column."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, yy.flatten()), sincos_1d(dim // 2, xx.flatten())], 1)


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> (B, dim): sin-cos features of 1000 t, then an MLP (DiT)."""

    def __init__(self, dim, freq=256):
        super().__init__()
        self.freq = freq
        self.mlp = nn.Sequential(nn.Linear(freq, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        return self.mlp(sincos_1d(self.freq, t * 1000))


def patchify(x, P):
    """(B, C, h, w) -> (B, (h/P)(w/P), C P P), row-major over the token grid."""
    B, C, h, w = x.shape
    x = x.reshape(B, C, h // P, P, w // P, P).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (h // P) * (w // P), C * P * P)


def unpatchify(x, C, h, w, P):
    """(B, N, C P P) -> (B, C, h, w), the inverse of patchify."""
    B = x.shape[0]
    x = x.reshape(B, h // P, w // P, C, P, P).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, C, h, w)


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class HeadBlock(nn.Module):
    """A DDT-head block: RMSNorm without affine, full attention among the image tokens, SwiGLU,
    each modulated PER TOKEN (adaLN-Zero) by the condition c (B, N, W). Zero-initialised
    modulation makes the block the identity at the start."""

    def __init__(self, dim, heads, mlp):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(dim, affine=False), RMSNorm(dim, affine=False)
        self.attn = Attention(dim, heads, heads)
        self.mlp = SwiGLU(dim, mlp)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN(c).chunk(6, -1)  # each (B, N, W)
        x = x + g1 * self.attn(modulate(self.norm1(x), sh1, sc1))
        return x + g2 * self.mlp(modulate(self.norm2(x), sh2, sc2))


class DDTHead(nn.Module):
    """RAE's wide DDT head: a few blocks WIDER than the backbone that see the noisy latent through
    their own embedder (the long skip from the input) and are conditioned, token by token, on the
    backbone's image hidden states plus the timestep. Modulation and output start at zero."""

    def __init__(self, D, W, depth, heads, in_dim, n_tokens, grid):
        super().__init__()
        self.x_embed = nn.Linear(in_dim, W)  # its own embedder of x_t
        self.cond_proj = nn.Linear(D, W)  # backbone image states -> head width
        self.t_embed = TimestepEmbedder(W)
        self.register_buffer("pos", sincos_2d(W, *grid), persistent=False)  # (N, W)
        self.blocks = nn.ModuleList([HeadBlock(W, heads, int(W * 8 / 3)) for _ in range(depth)])
        self.norm = RMSNorm(W, affine=False)
        self.final_mod = nn.Sequential(nn.SiLU(), nn.Linear(W, 2 * W))
        self.out = nn.Linear(W, in_dim)

    def zero_init(self):
        for blk in self.blocks:
            nn.init.zeros_(blk.adaLN[-1].weight), nn.init.zeros_(blk.adaLN[-1].bias)
        for lin in (self.final_mod[-1], self.out):
            nn.init.zeros_(lin.weight), nn.init.zeros_(lin.bias)

    def forward(self, x_tok, h_img, t):
        c = self.cond_proj(h_img) + self.t_embed(t)[:, None]  # (B, N, W): per-token condition
        x = self.x_embed(x_tok) + self.pos  # (B, N, W)
        for blk in self.blocks:
            x = blk(x, c)
        shift, scale = self.final_mod(c).chunk(2, -1)
        return self.out(modulate(self.norm(x), shift, scale))  # (B, N, C P P)


class Generator(nn.Module):
    """Deep fusion (Sec. 3.4, Transfusion-style): one stack of Qwen2-like blocks over the sequence
    [bos, text..., pad... | image tokens]. Text tokens: rotary positions, causal mask. Image tokens:
    the patchified noisy latent projected to D, plus a 2D sin-cos code, plus the timestep
    embedding (added to their initial hidden states); they attend to all text and all image
    tokens. Text never attends to the image. Output: the velocity v (B, C, h, w)."""

    def __init__(self, cfg: ModelConfig, latent_shape, patch=1, text_len=16, head="ddt", vocab_size=None):
        super().__init__()
        C, h, w = latent_shape
        if h % patch or w % patch:
            raise GeneratorError(f"--patch {patch} does not divide the {h}x{w} latent grid; pick a divisor")
        self.cfg, self.latent_shape, self.P, self.T, self.head_kind = cfg, tuple(latent_shape), patch, text_len, head
        D, grid = cfg.width, (h // patch, w // patch)
        self.N = grid[0] * grid[1]
        in_dim = C * patch * patch
        self.embed_tokens = nn.Embedding(cfg.vocab_size or vocab_size, D)
        self.img_in = nn.Linear(in_dim, D)
        self.t_embed = TimestepEmbedder(D)
        self.layers = nn.ModuleList([Block(D, cfg.heads, cfg.kv_heads, cfg.mlp) for _ in range(cfg.depth)])
        self.norm = RMSNorm(D)
        if head == "ddt":
            self.head = DDTHead(D, cfg.head_width, cfg.head_depth, cfg.head_heads, in_dim, self.N, grid)
        else:  # --head none (Table 1's ablation): a linear read-out of the backbone's image states
            self.head = nn.Linear(D, in_dim)
        # latent normalisation (per channel, from the training cache): the flow sees unit-scale data
        self.register_buffer("latent_mean", torch.zeros(C, 1, 1))
        self.register_buffer("latent_std", torch.ones(C, 1, 1))
        # the attention mask, built once: True = may attend. Rows are queries, columns keys.
        L = text_len + self.N
        mask = torch.zeros(L, L, dtype=torch.bool)
        mask[:text_len, :text_len] = torch.ones(text_len, text_len).tril().bool()  # text: causal
        # image: every text token and every image token, the caption's padding included (the pads
        # follow the caption causally, the same in training and sampling; the paper is silent on it)
        mask[text_len:, :] = True
        self.register_buffer("mask", mask, persistent=False)
        cos, sin = rope_tables(list(range(text_len)) + [None] * self.N, D // cfg.heads, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("pos", sincos_2d(D, *grid), persistent=False)  # (N, D)
        self.apply(self._init)
        if head == "ddt":
            self.head.zero_init()
        else:  # DiT's zero-initialised final layer
            nn.init.zeros_(self.head.weight), nn.init.zeros_(self.head.bias)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def backbone(self, x_t, t, text):
        """Hidden states after the last block and the final norm: (B, T + N, D)."""
        tok = patchify(x_t, self.P)  # (B, N, C P P)
        h_img = self.img_in(tok) + self.pos + self.t_embed(t)[:, None]  # (B, N, D)
        h = torch.cat([self.embed_tokens(text), h_img.to(self.embed_tokens.weight.dtype)], 1)  # (B, T+N, D)
        rope = (self.rope_cos, self.rope_sin)
        for layer in self.layers:
            h = layer(h, self.mask, rope)
        return self.norm(h)

    def forward(self, x_t, t, text):
        """x_t (B, C, h, w), t (B,), text (B, T) ids -> velocity (B, C, h, w)."""
        h_img = self.backbone(x_t, t, text)[:, self.T:]  # (B, N, D)
        if self.head_kind == "ddt":
            out = self.head(patchify(x_t, self.P), h_img, t)
        else:
            out = self.head(h_img)
        return unpatchify(out, *self.latent_shape, self.P)


# ------------------------------------------------------------------------------------------
# 4. Flow matching (Sec. 4.1), apart from the network: x_t = (1 - t) x0 + t eps, t = 1 is
#    noise, target v = eps - x0. Training t: logit-normal, then shifted by s.
# ------------------------------------------------------------------------------------------

def shift_t(t, s):
    """Resolution/channel shift t' = s t / (1 + (s - 1) t): s > 1 spends more time near noise."""
    return s * t / (1 + (s - 1) * t)


def flow_loss(model, x0, cond, t, eps):
    """Mean squared error of the velocity. x0, eps (B, C, h, w); t (B,) in (0, 1); cond (B, T)."""
    tb = t.view(-1, 1, 1, 1)
    x_t = (1 - tb) * x0 + tb * eps
    v = model(x_t, t, cond)
    return (v.float() - (eps - x0).float()).pow(2).mean()


@torch.no_grad()
def flow_sample(model, noise, cond, steps=50, shift=3.0, cfg=6.5, null=None):
    """Euler from t = 1 (noise) to t = 0 on the shifted grid. With cfg != 1 and a null caption
    batch `null`, v = v(null) + cfg (v(cond) - v(null)) (classifier-free guidance)."""
    ts = shift_t(torch.linspace(1, 0, steps + 1), shift).tolist()
    x = noise
    guided = null is not None and cfg != 1.0
    for t0, t1 in zip(ts[:-1], ts[1:]):
        t = torch.full((len(x),), t0, device=x.device)
        if guided:  # one forward for both halves
            v_c, v_u = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null])).float().chunk(2)
            v = v_u + cfg * (v_c - v_u)
        else:
            v = model(x, t, cond).float()
        x = x + (t1 - t0) * v
    return x


def draws(idx, shape, seed, step):
    """Per-sample noise eps, logit-normal pre-activation n and a uniform u for caption dropout,
    seeded by (seed, step, data index): a sample draws the same numbers on any rank of any
    world size, which is what makes 2 processes match 1 and resume exact."""
    g = torch.Generator()
    eps, n, u = [], [], []
    for i in idx.tolist():
        g.manual_seed(hash((seed, step, int(i))) % 2**63)
        eps.append(torch.randn(shape, generator=g))
        n.append(torch.randn((), generator=g))
        u.append(torch.rand((), generator=g))
    return torch.stack(eps), torch.stack(n), torch.stack(u)


# ------------------------------------------------------------------------------------------
# 5. Data: (image, caption) pairs; images encoded once by the frozen tokenizer and cached
# ------------------------------------------------------------------------------------------

def file_hash(path):
    """sha1 of a file's bytes: the cache key of a tokenizer checkpoint (changes when it is retrained)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def open_tokenizer(path, device="cpu", expect_sha1=None):
    """The frozen tokenizer and its shapes: (model, latent (C, h, w), image size in px). With
    expect_sha1 (a generator's record of its tokenizer), a changed file is an error: its latents
    would not be the ones the generator learnt."""
    if not path:
        raise GeneratorError("no --tokenizer given; pass a stage-1/2 checkpoint of tokenizer.py, "
                             "e.g. runs/tokenizer-cpu/stage2.pt")
    if os.path.isdir(path):
        path = os.path.join(path, "stage2.pt")
    if not os.path.isfile(path):
        raise GeneratorError(f"the tokenizer checkpoint {path} does not exist; pass --tokenizer with a stage-1/2 "
                             f"checkpoint of tokenizer.py, e.g. runs/tokenizer-cpu/stage2.pt")
    tok = tokenizer.load_tokenizer(path, device).requires_grad_(False)
    if expect_sha1 and file_hash(path) != expect_sha1:
        raise GeneratorError(f"the tokenizer {path} differs from the file this generator was trained on (another "
                             f"sha1); pass --tokenizer with the checkpoint it was trained on")
    with torch.no_grad():  # probe the shapes through the public encode/decode
        z = tokenizer.encode(tok, torch.zeros(1, 3, tok.encoder_size, tok.encoder_size, device=device))
        size = tokenizer.decode(tok, z).shape[-1]
    return tok, tuple(z.shape[1:]), size


def caption_dataset(cfg, size):
    if cfg["data"]:
        try:
            return tokenizer.CaptionFolderDataset(cfg["data"], size), {"data": os.path.abspath(cfg["data"])}
        except (ValueError, FileNotFoundError) as e:
            raise GeneratorError(str(e))
    if cfg["n_train"] < 1:
        raise GeneratorError(f"preset {cfg['preset']} trains on real captions; pass --data FOLDER (images with "
                             f"same-named .txt files) or --n-train N for world captions")
    return tokenizer.WorldCaptions("train", cfg["n_train"], size), {"world": cfg["n_train"]}


def latent_cache(cfg, tok, tok_path, size, device, rank0=True):
    """{"latents": (N, C, h, w) float32, "captions": [str]}, read from <cache>/<key>.pt or made
    once (rank 0; the others wait). The key hashes the tokenizer file's bytes and the dataset, so
    a retrained tokenizer or another dataset gets a new cache."""
    ds, spec = caption_dataset(cfg, size)
    key = hashlib.sha1(json.dumps({"tokenizer": file_hash(tok_path), "size": size, **spec},
                                  sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(cfg["cache"], f"latents-{key}.pt")
    if rank0 and not os.path.isfile(path):
        os.makedirs(cfg["cache"], exist_ok=True)
        zs, caps, t0 = [], [], time.time()
        loader = DataLoader(ds, batch_size=cfg["cache_batch"], num_workers=cfg["workers"])
        for x, c in tqdm(loader, desc="encoding latents", disable=not sys.stderr.isatty()):
            zs.append(tokenizer.encode(tok, x.to(device)).float().cpu())
            caps.extend(c)
        torch.save({"latents": torch.cat(zs), "captions": caps, "tokenizer": tok_path}, path + ".tmp")
        os.replace(path + ".tmp", path)  # atomic: an interrupted run never leaves half a cache
        print0(f"cached {len(caps)} latents in {path} ({time.time() - t0:.0f} s)")
    if dist.is_initialized():
        dist.barrier()
    return torch.load(path, map_location="cpu", weights_only=True), path


def batch_indices(n, global_bs, rank, world, seed, epoch, pos):
    """This rank's share of global batch `pos` of epoch `epoch`: a seeded permutation per epoch,
    the global batch split rank::world, so any world size sees the same global batch."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    return perm[pos * global_bs:(pos + 1) * global_bs][rank::world]


# ------------------------------------------------------------------------------------------
# 6. The training loop
# ------------------------------------------------------------------------------------------

def build_model(cfg, latent_shape):
    mcfg = MODELS[cfg["model"]]
    return Generator(mcfg, latent_shape, cfg["patch"], cfg["text_len"], cfg["head"], len(TextTokenizer()))


@torch.no_grad()
def ema_update(ema, model, decay):
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - decay)  # e = decay e + (1 - decay) p


def load_run(path, what="generator checkpoint", script=SCRIPT, name="generator.pt"):
    """A checkpoint written by `script` (a file, or a run folder holding `name`), or one sentence.
    edit.py reads its own checkpoints with script="edit.py", name="edit.pt"."""
    if os.path.isdir(path):
        path = os.path.join(path, name)
    if not os.path.isfile(path):
        raise GeneratorError(f"the {what} {path} does not exist; train one with `python {script} "
                             f"...` or pass the right path")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GeneratorError(f"cannot read {path} ({type(e).__name__}): it is not a PyTorch checkpoint "
                             f"or it is damaged")
    if not isinstance(ck, dict) or ck.get("script") != script:
        who = ck.get("script", "an unknown program") if isinstance(ck, dict) else "an unknown program"
        raise GeneratorError(f"{path} was written by {who}, not {script}; pass a checkpoint written by {script}")
    return ck, path


def append_metrics(out, rec):
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")


def trim_metrics(out, step):
    """On resume: drop the metrics.jsonl records after `step` (they will be logged again)."""
    path = os.path.join(out, "metrics.jsonl")
    if os.path.isfile(path):
        recs = [json.loads(x) for x in open(path) if x.strip()]
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs if r.get("step", 0) <= step)


def memory_gib(device):
    """Peak memory of this process: CUDA allocations on a GPU, the resident set size on a CPU."""
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return round(peak / 2**30, 2)


def lr_at(step, cfg):
    """The learning rate of 0-based `step`: linear warm-up over `warmup` steps, then constant
    (the paper's schedule), and with `cooldown` > 0 a linear decay to zero over the last
    `cooldown` of `steps` (warmup-stable-decay: a run trained at a constant lr can be resumed with
    a larger --steps and a --cooldown to finish it). A function of the step alone, so resume is exact."""
    warm = min(1.0, (step + 1) / cfg["warmup"]) if cfg["warmup"] else 1.0
    cool = cfg.get("cooldown") or 0
    decay = min(1.0, (cfg["steps"] - step) / cool) if cool else 1.0
    return cfg["lr"] * warm * decay


def optimiser_step(model, ema, opt, loss, cfg, step, out):
    """Everything after the forward pass, shared with edit.py: the loss averaged over processes
    (a NaN stops the run; the last checkpoint in `out` is kept), the lr of `lr_at`, backward,
    gradient clip, AdamW, EMA. Returns (averaged loss, lr, grad norm or None)."""
    logged = all_mean(loss.detach().float())
    if not torch.isfinite(logged):
        raise GeneratorError(f"the loss became {logged.item()} at step {step + 1}; the last checkpoint in {out} "
                             f"is kept; lower --lr or check the data")
    lr = lr_at(step, cfg)
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"]) if cfg["grad_clip"] else None
    opt.step()
    ema_update(ema, model, cfg["ema"])
    return logged, lr, gnorm


class StepLog:
    """The progress bar and, every `log_every` steps, one metrics.jsonl record (loss, lr,
    samples/s since the last record, memory); rank 0 writes. Checkpoint time is left out of
    the throughput: call restart_clock() after saving."""

    def __init__(self, cfg, out, rank0, step, desc):
        self.cfg, self.out, self.rank0 = cfg, out, rank0
        self.pbar = tqdm(total=cfg["steps"], initial=step, disable=not (rank0 and sys.stderr.isatty()), desc=desc)
        self.t_start = self.t_last = time.time()
        self.seen, self.last = 0, {}

    def __call__(self, step, n_samples, logged, lr, gnorm, device, force=False):
        self.seen += n_samples
        self.pbar.update(1)
        if step % self.cfg["log_every"] and step != self.cfg["steps"] and not force:
            return
        rec = {"step": step, "loss": round(logged.item(), 6), "lr": lr,
               "samples_per_s": round(self.seen / (time.time() - self.t_last), 2),
               "elapsed_s": round(time.time() - self.t_start, 1)}
        if gnorm is not None:
            rec["grad_norm"] = round(float(gnorm), 4)
        rec["mem_gib"] = memory_gib(device)
        if self.rank0:
            append_metrics(self.out, rec)
            self.pbar.write(f"step {step}/{self.cfg['steps']} | loss {rec['loss']:.4f} | lr {lr:.2e} | "
                            f"{rec['samples_per_s']:.1f} samples/s | mem {rec['mem_gib']} GiB")
        self.last, self.seen = rec, 0
        self.restart_clock()

    def restart_clock(self):
        self.t_last = time.time()

    def close(self):
        self.pbar.close()


def train(cfg, ddp, rank, local_rank, world, device):
    out, rank0 = cfg["out"], rank == 0
    if cfg["batch_size"] % world:
        raise GeneratorError(f"--batch-size {cfg['batch_size']} (global) does not split over {world} processes")
    ck = None
    if cfg["resume"]:
        ck, _ = load_run(os.path.join(out, "generator.pt"), "checkpoint to resume")
        for k in SHAPE_KEYS:
            if ck["config"][k] != cfg[k]:
                raise GeneratorError(f"the checkpoint has {k}={ck['config'][k]!r} but this run asks for {cfg[k]!r}; "
                                     f"pass --{k.replace('_', '-')} {ck['config'][k]} or use a new --out")
        if cfg["tokenizer"] is None:  # --resume alone continues on the run's own tokenizer file
            cfg["tokenizer"] = ck["tokenizer"]
        # (the tokenizer is compared by its sha1 below; a setting newer than the checkpoint counts as off)
        changed = {k: (ck["config"].get(k), v) for k, v in cfg.items() if k not in ("resume", "steps", "tokenizer")
                   and ck["config"].get(k) != v and not (k not in ck["config"] and not v)}
        if changed:
            print0("resuming with changed settings: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
    if rank0:
        os.makedirs(out, exist_ok=True)

    # ---- the frozen tokenizer and the latent cache
    tok_path = cfg["tokenizer"]
    tok_path = os.path.join(tok_path, "stage2.pt") if tok_path and os.path.isdir(tok_path) else tok_path
    # a resumed run must see the very tokenizer it started on (a retrained stage2.pt has other latents)
    tok, latent_shape, size = open_tokenizer(tok_path, device, ck["tokenizer_sha1"] if ck else None)
    C = latent_shape[0]
    s = cfg["shift"] if cfg["shift"] else shift_factor(C, cfg["patch"])
    print0(f"latent {C}x{latent_shape[1]}x{latent_shape[2]}, patch {cfg['patch']}: timestep shift "
           f"s = sqrt(C P^2 / 16) = {shift_factor(C, cfg['patch']):.3f}" +
           (f", overridden by --shift {cfg['shift']}" if cfg["shift"] else ""))
    cache, cache_path = latent_cache(cfg, tok, tok_path, size, device, rank0)
    tok_sha1 = file_hash(tok_path)
    del tok  # frozen and no longer needed: training only sees cached latents
    latents, captions = cache["latents"], cache["captions"]
    text = TextTokenizer()
    try:
        ids = text(captions, cfg["text_len"])
    except GeneratorError as e:
        raise GeneratorError(f"a training caption is too long: {e}")
    null = text([""], cfg["text_len"])  # the null caption for classifier-free guidance
    n = len(latents)
    if n < cfg["batch_size"]:
        raise GeneratorError(f"the training set has {n} items, fewer than one batch of {cfg['batch_size']}")

    # ---- model, EMA, optimiser: the same initial weights on every rank
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg, latent_shape)
    model.latent_mean.copy_(latents.mean((0, 2, 3)).view(-1, 1, 1))
    model.latent_std.copy_(latents.std((0, 2, 3)).view(-1, 1, 1))
    ema = build_model(cfg, latent_shape).requires_grad_(False)
    ema.load_state_dict(model.state_dict())  # DiT: EMA starts as a copy (decay 0)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.95), weight_decay=cfg["weight_decay"])
    step, (epoch, pos) = 0, (0, 0)
    if ck is not None:
        model.load_state_dict(ck["model"]), ema.load_state_dict(ck["ema"]), opt.load_state_dict(ck["opt"])
        step, (epoch, pos) = ck["step"], ck["data"]
    model.to(device), ema.to(device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    n_head = sum(p.numel() for p in model.head.parameters())
    print0(f"{world} process(es) on {device} | generator {cfg['model']}: {n_params / 1e6:.2f}M parameters "
           f"({n_head / 1e6:.2f}M in the {cfg['head']} head) | {n} cached latents")
    fwd = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None) if ddp else model
    fwd = torch.compile(fwd) if cfg["compile"] else fwd
    if rank0:
        if ck is not None:
            trim_metrics(out, step)
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump({**cfg, "latent_shape": latent_shape, "shift_used": s, "cache_file": cache_path}, f, indent=1)

    # ---- the loop
    amp = device.type == "cuda"
    B = cfg["batch_size"]
    mean, std = model.latent_mean.cpu(), model.latent_std.cpu()
    log = StepLog(cfg, out, rank0, step, "generator")
    time_up = tokenizer.Deadline(cfg["time_limit"], device)
    while step < cfg["steps"]:
        if (pos + 1) * B > n:
            epoch, pos = epoch + 1, 0
        idx = batch_indices(n, B, rank, world, cfg["seed"], epoch, pos)
        pos += 1
        x0 = ((latents[idx] - mean) / std).to(device)
        eps, nrm, u = draws(idx, latent_shape, cfg["seed"], step)
        t = shift_t(torch.sigmoid(nrm), s).to(device)  # logit-normal, then shifted
        cond = torch.where((u < cfg["caption_dropout"])[:, None], null, ids[idx]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = flow_loss(fwd, x0, cond, t, eps.to(device))
        logged, lr, gnorm = optimiser_step(model, ema, opt, loss, cfg, step, out)
        step += 1
        stop = time_up()
        log(step, B, logged, lr, gnorm, device, force=stop)
        if stop:
            print0(f"--time-limit {cfg['time_limit']} min reached at step {step}/{cfg['steps']}; --resume continues")
        if step % cfg["ckpt_every"] == 0 or step == cfg["steps"] or stop:
            ckpt = dict(script=SCRIPT, step=step, config=cfg, model=model.state_dict(), ema=ema.state_dict(),
                        opt=opt.state_dict(), data=(epoch, pos), latent_shape=latent_shape, world_size=world,
                        tokenizer=os.path.abspath(tok_path), tokenizer_sha1=tok_sha1, shift=s)
            save_checkpoint(os.path.join(out, "generator.pt"), ckpt)  # rank 0, atomic, then a barrier
            log.restart_clock()
        if stop:
            break
    log.close()
    if rank0 and cfg["n_samples"]:  # a look at the result: EMA samples for held-out captions
        val = tokenizer.WorldCaptions("val", cfg["n_samples"], 32)
        prompts = [val.item(i)[1] for i in range(len(val))] if not cfg["data"] else captions[:cfg["n_samples"]]
        tok, _, _ = open_tokenizer(tok_path, device)
        imgs = generate(ema, tok, prompts, steps=cfg["sample_steps"], shift=cfg["sample_shift"], cfg=cfg["cfg"],
                        seed=cfg["seed"])
        save_grid(os.path.join(out, "samples.png"), imgs, prompts, f"{cfg['model']} generator, step {step} (EMA)")
    return log.last


# ------------------------------------------------------------------------------------------
# 7. Sampling: load the EMA weights, generate, decode; the `sample` sub-command
# ------------------------------------------------------------------------------------------

def load_generator(path, device="cpu"):
    """(EMA model in eval mode, its training config, the tokenizer path) from a checkpoint or run
    folder; config["tokenizer_sha1"] records the tokenizer file it was trained on."""
    ck, path = load_run(path)
    model = build_model(ck["config"], ck["latent_shape"])
    model.load_state_dict(ck["ema"])
    return model.to(device).eval(), {**ck["config"], "tokenizer_sha1": ck.get("tokenizer_sha1")}, ck["tokenizer"]


@torch.no_grad()
def generate_latents(model, prompts, steps=50, shift=3.0, cfg=6.5, seed=0, batch=64, first=0):
    """prompts (list of str) -> latents (len(prompts), C, h, w) in the tokenizer's scale. Image i
    starts from noise seeded by (seed, first + i), so a result does not depend on the batch size
    (a caller that splits a list passes each part's offset as `first`)."""
    for p in prompts:
        if not p.strip():
            raise GeneratorError("the prompt is empty; give a caption such as 'two red circles'")
    text = TextTokenizer()
    ids = text(prompts, model.T)  # raises the "too long" sentence
    dev = model.latent_mean.device
    out = []
    for b in range(0, len(prompts), batch):
        cond = ids[b:b + batch].to(dev)
        noise = torch.stack([torch.randn(model.latent_shape, generator=torch.Generator().manual_seed(
            hash((seed, first + b + i)) % 2**63)) for i in range(len(cond))]).to(dev)
        null = text([""] * len(cond), model.T).to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            x = flow_sample(model, noise, cond, steps, shift, cfg, null)
        out.append(x.float() * model.latent_std + model.latent_mean)
    return torch.cat(out)


def generate(model, tok, prompts, **kw):
    """prompts -> images (B, 3, S, S) in [-1, 1], decoded by the tokenizer."""
    z = generate_latents(model, prompts, **kw)
    return torch.cat([tokenizer.decode(tok, z[i:i + 64]) for i in range(0, len(z), 64)]).cpu()


def save_grid(path, imgs, titles, suptitle):
    """A row-major grid of images with their prompts as titles (PNG via matplotlib)."""
    import textwrap
    from matplotlib.figure import Figure
    n = len(imgs)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(2.4 * cols, 2.7 * rows))
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(tokenizer.to_uint8(imgs[i]), interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(titles[i], 28)), fontsize=7)
        ax.set_axis_off()
    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)


def cmd_sample(argv):
    p = argparse.ArgumentParser(prog="generator.py sample", description="text -> image grid with the EMA weights")
    p.add_argument("--ckpt", required=True, help="a generator run folder or its generator.pt")
    p.add_argument("--prompt", required=True, help="the caption")
    p.add_argument("--n", type=int, default=8, help="images for the prompt")
    p.add_argument("--out", default="grid.png", help="PNG to write")
    p.add_argument("--tokenizer", default=None, help="tokenizer checkpoint (default: the one used in training)")
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: the run's, paper 50)")
    p.add_argument("--sample-shift", type=float, default=None, help="inference timestep shift (paper 3)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (paper 6.5)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--device", default=None, choices=("cpu", "cuda", "mps"), help="default: cuda if available")
    a = p.parse_args(argv)
    if a.n < 1:
        raise GeneratorError(f"--n {a.n}: ask for at least one image")
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, cfg, tok_path = load_generator(a.ckpt, device)
    tok, shape, _ = open_tokenizer(a.tokenizer or tok_path, device, cfg["tokenizer_sha1"])
    if tuple(shape) != tuple(model.latent_shape):
        raise GeneratorError(f"the tokenizer makes {tuple(shape)} latents but the generator was trained on "
                             f"{tuple(model.latent_shape)}; pass the tokenizer it was trained with")
    kw = dict(steps=a.steps or cfg["sample_steps"], shift=a.sample_shift or cfg["sample_shift"],
              cfg=a.cfg if a.cfg is not None else cfg["cfg"], seed=a.seed)
    imgs = generate(model, tok, [a.prompt] * a.n, **kw)
    save_grid(a.out, imgs, [f"#{i}" for i in range(a.n)],
              f"\"{a.prompt}\" ({kw['steps']} Euler steps, shift {kw['shift']}, CFG {kw['cfg']})")
    print(f"wrote {a.out}")
    return a.out


# ------------------------------------------------------------------------------------------
# 8. `bench`: training throughput and model FLOP utilisation of a preset's model, on random
#    latents of the preset's tokenizer shape (no tokenizer or data needed)
# ------------------------------------------------------------------------------------------

# dense bf16 tensor-core peaks from the vendors' datasheets, in TFLOP/s (no sparsity)
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.5, "H100": 989.4, "H200": 989.4, "A100": 312.0}


def datasheet_peak(name):
    """The datasheet bf16 peak of a GPU from its name, or None when unknown."""
    for k, v in PEAK_BF16_TFLOPS.items():  # the more specific names come first
        if k in name:
            return v
    return None


def preset_latent_shape(preset):
    """(C, h, w) of the latent made by the tokenizer preset of the same name."""
    t = tokenizer.PRESETS[preset]
    grid = t["encoder_size"] // tokenizer.ENCODERS[t["encoder"]].patch_size
    return (t["latent_channels"], grid, grid)


def train_step_flops(model, x0, cond, t, eps):
    """Floating-point operations of one training step's forward and backward, counted by
    PyTorch's FlopCounterMode over the matrix products and attention (the model FLOPs of MFU;
    the optimiser and elementwise work are not counted)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    # the counter knows the math and the CUDA attention kernels but not the CPU's fused one: count
    # on the math path, whose products are the same numbers
    with counter, sdpa_kernel(SDPBackend.MATH):
        flow_loss(model, x0, cond, t, eps).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def cmd_bench(argv):
    p = argparse.ArgumentParser(prog="generator.py bench", description="training samples/s and model FLOP "
                                "utilisation of a preset's generator on random latents")
    p.add_argument("--preset", choices=list(PRESETS), default="cpu", help="model, text length and batch")
    p.add_argument("--batch-size", type=int, default=None, help="per-device batch (default: the preset's)")
    p.add_argument("--latent", type=int, nargs=3, default=None, metavar=("C", "H", "W"),
                   help="latent shape (default: the tokenizer preset of the same name)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default=None, choices=("cpu", "cuda", "mps"), help="default: cuda if available")
    p.add_argument("--json", default=None, help="also write the result JSON to this file")
    a = p.parse_args(argv)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pre = PRESETS[a.preset]
    cfg = dict(model=pre["model"], patch=1, text_len=pre["text_len"], head="ddt")
    B = a.batch_size or pre["batch_size"]
    shape = tuple(a.latent or preset_latent_shape(a.preset))
    torch.manual_seed(0)
    model = build_model(cfg, shape).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))  # as in train()
    vocab = model.embed_tokens.num_embeddings
    x0, eps = torch.randn(B, *shape, device=device), torch.randn(B, *shape, device=device)
    cond = torch.randint(1, vocab, (B, cfg["text_len"]), device=device)
    t = torch.rand(B, device=device)
    amp = device.type == "cuda"
    fwd = torch.compile(model) if a.compile else model
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        flops = train_step_flops(model, x0, cond, t, eps)

    ema = build_model(cfg, shape).to(device).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    ocfg = dict(lr=1e-4, warmup=0, grad_clip=1.0, ema=0.9999)

    def step():  # as a training step: loss averaged, backward, clip, AdamW, EMA
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = flow_loss(fwd, x0, cond, t, eps)
        optimiser_step(model, ema, opt, loss, ocfg, 0, "bench")

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(a.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.time()
    for _ in range(a.steps):
        step()
    sync()
    dt = (time.time() - t0) / a.steps
    n_params = sum(q.numel() for q in model.parameters())
    achieved = flops / dt / 1e12
    res = {"preset": a.preset, "model": cfg["model"], "params_m": round(n_params / 1e6, 2), "latent": list(shape),
           "tokens": cfg["text_len"] + shape[1] * shape[2], "batch": B, "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "compile": a.compile, "step_s": round(dt, 5), "samples_per_s": round(B / dt, 1),
           "gflop_per_sample": round(flops / B / 1e9, 3), "achieved_tflops": round(achieved, 2),
           "mem_gib": memory_gib(device)}
    if device.type == "cuda":  # the two ceilings: the datasheet, and a large bf16 product measured here
        peak = datasheet_peak(res["device_name"])
        m = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        for _ in range(3):
            m @ m
        sync()
        t0 = time.time()
        for _ in range(10):
            m @ m
        sync()
        mm = 2 * 8192 ** 3 * 10 / (time.time() - t0) / 1e12
        res.update(datasheet_tflops=peak, matmul_tflops=round(mm, 1),
                   mfu=round(achieved / peak, 4) if peak else None, mfu_of_matmul=round(achieved / mm, 4))
    print(json.dumps(res))
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


def nonneg_int(text):
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} is negative; give a number of steps >= 0")
    return v


def add_optimisation_args(g):
    """The optimiser flags of generator.py and edit.py (defaults come from the preset)."""
    g.add_argument("--steps", type=int, help="training steps")
    g.add_argument("--time-limit", type=float, default=0, help="minutes of training after which the run "
                   "checkpoints and stops (--resume continues); 0 = none")
    g.add_argument("--batch-size", type=int, help="global batch, split over processes (paper ~730)")
    g.add_argument("--lr", type=float, help="AdamW learning rate (paper 1e-4)")
    g.add_argument("--warmup", type=int, help="linear warm-up steps, then constant")
    g.add_argument("--cooldown", type=nonneg_int, default=0, help="linear decay of the lr to 0 over the last N "
                   "steps of --steps; 0 = constant to the end (the paper)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    g.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip, 0 = off")
    g.add_argument("--ema", type=float, help="EMA decay (paper 0.9999)")


def add_logging_args(p):
    g = p.add_argument_group("logging")
    g.add_argument("--log-every", type=int, help="steps between log lines / metrics.jsonl records")
    g.add_argument("--ckpt-every", type=int, help="steps between checkpoints (the last step always gets one)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="PS-VAE generator: deep-fusion T2I transformer + wide DDT head "
                                "(`generator.py sample --help` for sampling)")
    g = p.add_argument_group("run")
    g.add_argument("--tokenizer", default=None, help="the frozen tokenizer: a stage-1/2 checkpoint or run folder")
    g.add_argument("--preset", choices=list(PRESETS), default="cpu", help="a dict of defaults; flags override it")
    g.add_argument("--out", default=None, help="run folder (default runs/generator-<preset>)")
    g.add_argument("--resume", action="store_true", help="continue exactly from <out>/generator.pt")
    g.add_argument("--device", default=None, choices=("cpu", "cuda", "mps"), help="default: cuda if available")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--seed", type=int, default=0, help="seed of the weights, data order and noise")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=list(MODELS), help="backbone and head sizes")
    g.add_argument("--head", choices=("ddt", "none"), default="ddt", help="wide DDT head, or none (Table 1 ablation)")
    g.add_argument("--patch", type=int, default=1, help="patch size P on the latent grid")
    g.add_argument("--text-len", type=int, help="text context in tokens, bos included")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None, help="folder of images with same-named .txt captions instead of the world")
    g.add_argument("--n-train", type=int, help="number of world training captions")
    g.add_argument("--cache", default=os.path.join("runs", "cache"), help="folder of cached latents")
    g.add_argument("--cache-batch", type=int, default=256, help="images per tokenizer batch when caching")
    g.add_argument("--workers", type=int, default=0, help="DataLoader workers while caching")
    g = p.add_argument_group("flow matching and optimisation (Sec. 4.1)")
    g.add_argument("--shift", type=float, default=None, help="training timestep shift (default sqrt(C P^2 / 16))")
    g.add_argument("--caption-dropout", type=float, default=0.1, help="share of null captions (for CFG)")
    add_optimisation_args(g)
    g = p.add_argument_group("sampling")
    g.add_argument("--sample-steps", type=int, help="Euler steps (paper 50)")
    g.add_argument("--sample-shift", type=float, default=3.0, help="inference timestep shift (paper 3)")
    g.add_argument("--cfg", type=float, default=6.5, help="classifier-free guidance scale (paper 6.5)")
    g.add_argument("--n-samples", type=int, help="images in the samples.png written at the end (0 = none)")
    add_logging_args(p)
    pre, _ = p.parse_known_args(argv)
    p.set_defaults(**PRESETS[pre.preset])
    args = p.parse_args(argv)
    if args.out is None:
        args.out = os.path.join("runs", f"generator-{args.preset}")
    return vars(args)


def run_cli(script, argv, parse, train_fn, sample_fn):
    """`script sample ...` or a training run (under torchrun or not); a GeneratorError or
    TokenizerError becomes one sentence on rank 0. Shared by generator.py and edit.py."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["sample"]:
        try:
            return sample_fn(argv[1:])
        except (GeneratorError, TokenizerError) as e:
            raise SystemExit(f"{script}: error: {e}")
    if argv[:1] == ["bench"] and script == SCRIPT:
        try:
            return cmd_bench(argv[1:])
        except (GeneratorError, TokenizerError) as e:
            raise SystemExit(f"{script}: error: {e}")
    cfg = parse(argv)
    ddp, rank, local_rank, world, device = compute_init(cfg["device"])
    try:
        return train_fn(cfg, ddp, rank, local_rank, world, device)
    except (GeneratorError, TokenizerError) as e:
        raise SystemExit(f"{script}: error: {e}" if rank == 0 else 1)
    finally:
        compute_cleanup()


def main(argv=None):
    return run_cli(SCRIPT, argv, parse_args, train, cmd_sample)


if __name__ == "__main__":
    main()
