"""generator.py -- text -> tokenizer latents: a deep-fusion transformer with RAE's wide DDT head,
trained by flow matching.

Paper: Zhang et al. 2025, "Both Semantics and Reconstruction Matter" (arXiv 2512.17909), Sec. 3.4
and 4.1; the DDT head is RAE's DiT^DH (Zheng et al. 2025). Read top to bottom:

  1. presets and model sizes (tiny / cpu / world / paper; `paper` = Qwen2.5-0.5B's shape)
  2. the text tokenizers: the world's words (bytes for anything else), or Qwen2.5's (--lm)
  3. the network: Qwen2-like layers over text and image tokens (deep fusion; Table 1's designs),
     the wide DDT head, and the Generator that joins them
  4. flow matching, kept apart from the network: flow_loss(), flow_sample(), the time shift
  5. data: (image, caption) pairs encoded once by the frozen tokenizer and cached on disk
  6. training: the flow-matching loop (edit.py trains with it too), and the T2I run around it
  7. the caption LM: the backbone pre-trained on the world's text (the miniature of Qwen2.5)
  8. sampling: generate() and the `sample` sub-command
  9. command line

  python generator.py --tokenizer runs/tokenizer-cpu/stage2.pt --preset cpu
  torchrun --nproc_per_node=2 generator.py --tokenizer runs/tokenizer-cpu/stage2.pt --preset cpu
  torchrun --nproc_per_node=8 generator.py --preset paper --lm Qwen2.5-0.5B/ --tokenizer RUN/stage2.pt --data CAPTIONS/
  python generator.py sample --ckpt runs/generator-cpu --prompt "two red circles" --n 8 --out grid.png
  python generator.py lm --preset cpu        # the caption LM alone (the cpu preset trains it when missing)
"""
import argparse
import copy
import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm

import tokenizer as T
from common import (Deadline, StepLog, add_speed_args, all_mean, barrier, choose_speed, compute_cleanup,
                    compute_init, is_rank0, one_maker, print0, read_checkpoint, save_checkpoint, save_grid,
                    seeded_randn, truncate_metrics, write_config, wsd_lr)
from pretrained import QwenTokenizer, load_qwen2_weights, qwen2_config, write_safetensors
from tokenizer import TokenizerError
from world import VOCAB, CaptionFolderDataset, WorldCaptions, caption_scene, make_edit, sample_scene, scene_seed

SCRIPT = "generator.py"  # written into every checkpoint, checked when one is loaded


class GeneratorError(ValueError):
    """A problem the user can fix; main() turns it into one clear sentence (never a traceback)."""


# ------------------------------------------------------------------------------------------
# 1. Model sizes and presets
# ------------------------------------------------------------------------------------------

@dataclass
class ModelConfig:
    width: int          # backbone hidden size D
    depth: int          # backbone layers (of each branch: see fused_layer)
    heads: int          # query heads
    kv_heads: int       # key/value heads (grouped-query attention, as Qwen2)
    mlp: int            # SwiGLU hidden size
    head_width: int     # wide DDT head: width W > D (RAE: 2048 against DiT-XL's 1152)
    head_depth: int     # DDT head blocks (RAE: 2)
    head_heads: int
    vocab_size: int = 0  # 0: the size of the text tokenizer (the embedding table's rows)
    rope_theta: float = 1e6  # Qwen2's rotary base
    rms_eps: float = 1e-6  # Qwen2's RMSNorm epsilon


# The backbone of `paper` has Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 query / 2 key-value
# heads, SwiGLU 4864); with --lm its size, weights and 151,936-entry vocabulary come from a Qwen2.5
# folder (model_config). The DDT head of `paper` is RAE's: 2 blocks of width 2048. tiny-l and cpu-l: Figure
# 10's larger generator, about 2.5x the parameters of tiny and cpu (1.5x the width, more layers, same head width).
MODELS = {
    "tiny": ModelConfig(width=32, depth=2, heads=2, kv_heads=1, mlp=64, head_width=48, head_depth=1, head_heads=2),
    "tiny-l": ModelConfig(width=48, depth=4, heads=3, kv_heads=1, mlp=96, head_width=72, head_depth=1, head_heads=3),
    "cpu": ModelConfig(width=128, depth=4, heads=4, kv_heads=2, mlp=344, head_width=192, head_depth=2, head_heads=4),
    "cpu-l": ModelConfig(width=192, depth=6, heads=6, kv_heads=2, mlp=512, head_width=288, head_depth=2, head_heads=6),
    "world": ModelConfig(width=512, depth=12, heads=8, kv_heads=2, mlp=1408, head_width=1024, head_depth=2,
                         head_heads=16),
    "paper": ModelConfig(width=896, depth=24, heads=14, kv_heads=2, mlp=4864, head_width=2048, head_depth=2,
                         head_heads=16),
}

# A preset is a dict of argparse defaults; any flag overrides it. Sampling defaults are the
# paper's (Sec. 4.1: 50 Euler steps, shift 3, guidance 6.5) except where a preset says otherwise.
PRESETS = {
    # tests: seconds on CPU
    "tiny": dict(model="tiny", text_len=16, batch_size=8, lr=1e-3, warmup=0, steps=20, n_train=64, ema=0.9,
                 log_every=1, ckpt_every=10, sample_steps=8, n_samples=2),
    # the laptop demo on 2 CPU cores, one thread (fastest on a busy machine). Patch 2 (a deviation from
    # the paper's 1): the recipe study's one lever that helped on both latents. 5000 steps ~ 1e14 FLOPs:
    # ~130 samples/s, ~40 min on a shared 2-core CPU, plus ~2 min to cache the 20000 latents once
    "cpu": dict(model="cpu", text_len=20, batch_size=64, lr=1e-3, warmup=100, steps=5000, n_train=20000,
                ema=0.995, log_every=25, ckpt_every=500, sample_steps=50, n_samples=8, lm="caption", patch=2),
    # the miniature paper on one GPU
    "world": dict(model="world", text_len=20, batch_size=256, lr=3e-4, warmup=1000, steps=60000, n_train=200000,
                  ema=0.9999, log_every=100, ckpt_every=5000, sample_steps=50, n_samples=8, lm="caption"),
    # the paper (Sec. 4.1): batch ~730, lr 1e-4, EMA 0.9999, 200k iterations, 256 px; captions from --data
    "paper": dict(model="paper", text_len=128, batch_size=730, lr=1e-4, warmup=1000, steps=200000, n_train=0,
                  ema=0.9999, log_every=100, ckpt_every=5000, sample_steps=50, n_samples=8),
}
# config keys that fix tensor shapes: resuming with other values cannot work
SHAPE_KEYS = ("model", "patch", "text_len", "head", "lm", "fusion")
FUSIONS = ("transfusion", "bagel", "llamafusion")  # Table 1's deep-fusion designs (Sec. 3.4, Figure 6; fused_layer)


def model_config(cfg):
    """The network's sizes: the preset's MODELS entry, its backbone replaced by a Qwen2.5
    config.json's when --lm names a folder (the DDT head keeps the preset's size)."""
    m = MODELS[cfg["model"]]
    if not cfg.get("lm"):
        return m
    try:
        q = qwen2_config(cfg["lm"])
    except ValueError as e:
        raise GeneratorError(str(e))
    return replace(m, width=q["hidden_size"], depth=q["num_hidden_layers"], heads=q["num_attention_heads"],
                   kv_heads=q["num_key_value_heads"], mlp=q["intermediate_size"], vocab_size=q["vocab_size"],
                   rope_theta=q["rope_theta"], rms_eps=q["rms_norm_eps"])


# ------------------------------------------------------------------------------------------
# 2. The text tokenizer: the paper uses Qwen's; offline we have the world's word list
# ------------------------------------------------------------------------------------------

PAD, BOS, N_SPECIAL = 0, 1, 2


class TextBatcher:
    """A batch of texts -> (B, length) long ids [bos?, ids..., pad...]; the empty text is the
    null caption of classifier-free guidance. A subclass gives encode(), bos and pad."""

    def batch(self, texts, length):
        """-> (ids (B, length), the number of texts cut to fit the context)."""
        out, cut = torch.full((len(texts), length), self.pad, dtype=torch.long), 0
        for b, text in enumerate(texts):
            ids = ([] if self.bos is None else [self.bos]) + self.encode(text)
            cut += len(ids) > length
            out[b, :min(length, len(ids))] = torch.tensor(ids[:length], dtype=torch.long)
        return out, cut

    def __call__(self, texts, length):
        """batch(), where a text too long for the context is an error (a prompt, at sampling)."""
        for text in texts:
            n = len(self.encode(text)) + (self.bos is not None)
            if n > length:
                raise GeneratorError(f"the prompt {text[:40]!r}{'...' if len(text) > 40 else ''} has "
                                     f"{n - (self.bos is not None)} tokens but the model's text context holds "
                                     f"{length - (self.bos is not None)}; shorten it (or train with a larger --text-len)")
        return self.batch(texts, length)[0]


class TextTokenizer(TextBatcher):
    """The world's words (compared lower-cased), one token each; anything else is spelled as UTF-8
    bytes, so any text has an encoding. ids: 0 pad, 1 bos, 2..257 the bytes, 258.. the words."""

    bos, pad = BOS, PAD

    def __init__(self, words=None):
        self.words = sorted(set(w.lower() for w in (words if words is not None else VOCAB)))
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


class QwenText(TextBatcher):
    """Qwen2.5's byte-level BPE (pretrained.QwenTokenizer) read from the --lm folder: no bos (Qwen
    adds none), right padding with <|endoftext|>, as the paper's backbone was trained."""

    bos = None

    def __init__(self, folder):
        try:
            self.bpe = QwenTokenizer.from_folder(folder)
        except ValueError as e:
            raise GeneratorError(str(e))
        self.pad, self.encode, self.decode = self.bpe.special.get("<|endoftext|>", 0), self.bpe.encode, self.bpe.decode

    def __len__(self):
        return len(self.bpe)


def text_tokenizer(cfg):
    """The run's text tokenizer: the world's words, or with --lm the folder's: Qwen2.5's BPE, or
    the word list a caption LM was pre-trained with (section 7)."""
    words = cfg.get("lm") and os.path.join(cfg["lm"], WORLD_WORDS)
    if words and os.path.isfile(words):
        with open(words) as f:
            return TextTokenizer(json.load(f))
    return QwenText(cfg["lm"]) if cfg.get("lm") else TextTokenizer()


# ------------------------------------------------------------------------------------------
# 3. The network. The backbone's layers are Qwen2's (names included); image tokens join the
#    text in every layer (deep fusion); a wide DDT head turns their states into the velocity.
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


class Qwen2Attention(nn.Module):
    """Grouped-query self-attention (Qwen2: biases on q, k, v, none on o), an optional boolean mask
    (True = may attend), rotary tables, F.scaled_dot_product_attention. Query head h reads k/v head
    h // (heads / kv_heads): each k/v head repeated in place (repeat_interleave), not the set tiled."""

    def __init__(self, dim, heads, kv_heads):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, dim // heads
        self.q_proj = nn.Linear(dim, heads * self.hd)
        self.k_proj = nn.Linear(dim, kv_heads * self.hd)
        self.v_proj = nn.Linear(dim, kv_heads * self.hd)
        self.o_proj = nn.Linear(heads * self.hd, dim, bias=False)

    def qkv(self, x):  # (B, L, D) -> q (B, H, L, hd), k and v (B, KV, L, hd)
        B, L, _ = x.shape
        return (self.q_proj(x).view(B, L, self.heads, self.hd).transpose(1, 2),
                self.k_proj(x).view(B, L, self.kv_heads, self.hd).transpose(1, 2),
                self.v_proj(x).view(B, L, self.kv_heads, self.hd).transpose(1, 2))

    def attend(self, q, k, v, mask=None, rope=None):  # the attention before o_proj: -> (B, L, H hd)
        if rope is not None:  # (bf16 under autocast: the tables follow q's dtype)
            cos, sin = rope[0].to(q.dtype), rope[1].to(q.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k, v = self.repeat_kv(k), self.repeat_kv(v)  # (B, H, L, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return y.transpose(1, 2).flatten(2)

    def forward(self, x, mask=None, rope=None):
        return self.o_proj(self.attend(*self.qkv(x), mask, rope))

    def repeat_kv(self, x):  # (B, KV, L, hd) -> (B, H, L, hd)
        return x.repeat_interleave(self.heads // self.kv_heads, dim=1)


class Qwen2Layer(nn.Module):
    """Qwen2's decoder layer: pre-RMSNorm attention and SwiGLU, residual."""

    def __init__(self, dim, heads, kv_heads, mlp, eps=1e-6):
        super().__init__()
        self.input_layernorm = RMSNorm(dim, eps)
        self.self_attn = Qwen2Attention(dim, heads, kv_heads)
        self.post_attention_layernorm = RMSNorm(dim, eps)
        self.mlp = SwiGLU(dim, mlp)

    def qkv(self, x):  # what comes before the attention: the norm, q, k, v
        return self.self_attn.qkv(self.input_layernorm(x))

    def rest(self, x, y):  # and after it (y: its output): o_proj, residual, norm, SwiGLU, residual
        x = x + self.self_attn.o_proj(y)
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward(self, x, mask, rope):
        return self.rest(x, self.self_attn.attend(*self.qkv(x), mask, rope))


def fused_layer(text, image, h, T, mask, rope):
    """One layer of deep fusion over h = [text (T) | image (N)] (Figure 6): where each token meets its
    weights. Transfusion: `image` is `text`, one Qwen2 layer for all. LlamaFusion, Bagel (a mixture of
    transformers): each part is normed and projected to q, k, v by its own branch, the parts join for
    ONE attention (text causal, image full), then split for their branch's o_proj, norm and FFN."""
    if image is text:
        return text(h, mask, rope)
    h_text, h_img = h[:, :T], h[:, T:]
    (q_t, k_t, v_t), (q_i, k_i, v_i) = text.qkv(h_text), image.qkv(h_img)  # (B, heads, T or N, hd)
    y = text.self_attn.attend(torch.cat([q_t, q_i], 2), torch.cat([k_t, k_i], 2), torch.cat([v_t, v_i], 2), mask, rope)
    return torch.cat([text.rest(h_text, y[:, :T]), image.rest(h_img, y[:, T:])], 1)


def sincos_1d(dim, pos):
    """(len(pos), dim) sin-cos code of positions, frequencies 1 / 10000^(2i/dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, device=pos.device).float() / (dim // 2))
    ang = pos.float()[:, None] * omega[None, :]
    return torch.cat([ang.sin(), ang.cos()], 1)


def sincos_2d(dim, rows, cols):
    """(rows*cols, dim) 2D sin-cos code (MAE/DiT): half the channels code the row, half the column."""
    yy, xx = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
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
    """(B, C, H, W) -> (B, (H/P)(W/P), C P P), row-major over the token grid."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // P, P, W // P, P).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // P) * (W // P), C * P * P)


def unpatchify(x, C, H, W, P):
    """(B, N, C P P) -> (B, C, H, W), the inverse of patchify."""
    x = x.reshape(len(x), H // P, W // P, C, P, P).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(len(x), C, H, W)


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class HeadBlock(nn.Module):
    """A DDT-head block: RMSNorm without affine, full attention among the image tokens, SwiGLU,
    each modulated PER TOKEN (adaLN-Zero) by the condition c (B, N, W). Zero-initialised
    modulation makes the block the identity at the start."""

    def __init__(self, dim, heads, mlp):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(dim, affine=False), RMSNorm(dim, affine=False)
        self.attn = Qwen2Attention(dim, heads, heads)
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

    def __init__(self, D, W, depth, heads, in_dim, grid):
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
        for lin in [blk.adaLN[-1] for blk in self.blocks] + [self.final_mod[-1], self.out]:
            nn.init.zeros_(lin.weight), nn.init.zeros_(lin.bias)

    def forward(self, x_tok, h_img, t):
        c = self.cond_proj(h_img) + self.t_embed(t)[:, None]  # (B, N, W): per-token condition
        x = self.x_embed(x_tok) + self.pos  # (B, N, W)
        for blk in self.blocks:
            x = blk(x, c)
        shift, scale = self.final_mod(c).chunk(2, -1)
        return self.out(modulate(self.norm(x), shift, scale))  # (B, N, C P P)


class Generator(nn.Module):
    """Deep fusion (Sec. 3.4): Qwen2 layers over the sequence [bos, text..., pad... | image tokens].
    Text tokens: rotary positions, causal mask. Image tokens: the patchified noisy latent projected
    to D, plus a 2D sin-cos code, plus the timestep embedding (added to their initial hidden
    states); they attend to all text and all image tokens. Text never attends to the image.
    Output: the velocity v (B, C, H, W). `fusion` is Table 1's design (see fused_layer). `text` is
    the text tokenizer (the world's words by default), kept as model.text for sampling."""

    def __init__(self, cfg: ModelConfig, latent_shape, patch=1, text_len=16, head="ddt", text=None,
                 fusion="transfusion"):
        super().__init__()
        C, H, W = latent_shape
        if H % patch or W % patch:
            raise GeneratorError(f"--patch {patch} does not divide the {H}x{W} latent grid; pick a divisor")
        self.cfg, self.latent_shape, self.P, self.T, self.head_kind = cfg, tuple(latent_shape), patch, text_len, head
        self.fusion = fusion
        D, grid, in_dim = cfg.width, (H // patch, W // patch), C * patch * patch  # in_dim: one token's latent values
        self.N = grid[0] * grid[1]
        self.text = text or TextTokenizer()
        self.embed_tokens = nn.Embedding(cfg.vocab_size or len(self.text), D)
        self.img_in = nn.Linear(in_dim, D)
        self.t_embed = TimestepEmbedder(D)
        self.layers = nn.ModuleList([Qwen2Layer(D, cfg.heads, cfg.kv_heads, cfg.mlp, cfg.rms_eps)
                                     for _ in range(cfg.depth)])
        self.norm = RMSNorm(D, cfg.rms_eps)
        if head == "ddt":
            self.head = DDTHead(D, cfg.head_width, cfg.head_depth, cfg.head_heads, in_dim, grid)
        else:  # --head none (Table 1's ablation): a linear read-out of the backbone's image states
            self.head = nn.Linear(D, in_dim)
        # latent normalisation (per channel, from the training cache): the flow sees unit-scale data
        self.register_buffer("latent_mean", torch.zeros(C, 1, 1))
        self.register_buffer("latent_std", torch.ones(C, 1, 1))
        # the attention mask, built once: True = may attend. Rows are queries, columns keys.
        L = text_len + self.N
        mask = torch.ones(L, L, dtype=torch.bool).tril()  # text: causal (so never an image token)
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
        if fusion != "transfusion":  # the image branch: the same layers and final norm, a copy of the LM's
            self.image_layers, self.image_norm = copy.deepcopy(self.layers), copy.deepcopy(self.norm)
        # LlamaFusion freezes the whole LM, text embedding and final norm included: the text's states stay the LM's
        self.text_parts().requires_grad_(fusion != "llamafusion")

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def image_tokens(self, x_t, t):
        """The image tokens' initial hidden states: patches projected, + 2D positions + timestep."""
        return self.img_in(patchify(x_t, self.P)) + self.pos + self.t_embed(t)[:, None]  # (B, N, D)

    def backbone(self, x_t, t, text):
        """Hidden states after the last layer and the final norm: (B, T + N, D)."""
        h = torch.cat([self.embed_tokens(text), self.image_tokens(x_t, t).to(self.embed_tokens.weight.dtype)], 1)
        return self.layers_over(h, self.mask, (self.rope_cos, self.rope_sin))

    def layers_over(self, h, mask, rope):
        """Every layer, then the final norm, over h = [text (T) | image tokens]: each token through its
        branch (fused_layer), each branch its own final norm."""
        image_layers = self.layers if self.fusion == "transfusion" else self.image_layers
        for text_layer, image_layer in zip(self.layers, image_layers):
            h = fused_layer(text_layer, image_layer, h, self.T, mask, rope)
        if self.fusion == "transfusion":
            return self.norm(h)
        return torch.cat([self.norm(h[:, :self.T]), self.image_norm(h[:, self.T:])], 1)

    def text_parts(self):
        """The text backbone (the language branch) as a module with Qwen2's names, less "model."."""
        return nn.ModuleDict({"embed_tokens": self.embed_tokens, "layers": self.layers, "norm": self.norm})

    def load_lm(self, folder):
        """The backbone from a pre-trained LM (the paper: Qwen2.5's weights; here also the caption LM's);
        the image branch of bagel / llamafusion starts as a copy of it (LlamaFusion, MoT)."""
        load_qwen2_weights(folder, self.text_parts())
        if self.fusion != "transfusion":
            self.image_layers.load_state_dict(self.layers.state_dict())
            self.image_norm.load_state_dict(self.norm.state_dict())

    def text_forward(self, ids, attention_mask=None):
        """The backbone on text alone, as Qwen2: ids (B, L), mask 1 = token / 0 = right padding ->
        (hidden_states [embeddings, each layer's output, the last one after the final norm],
        last_hidden_state (B, L, D), logits (B, L, V) through the tied embedding)."""
        L = ids.shape[1]
        keep = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        mask = torch.ones(L, L, dtype=torch.bool, device=ids.device).tril() & keep[:, None, None, :]  # (B, 1, L, L)
        rope = rope_tables(list(range(L)), self.cfg.width // self.cfg.heads, self.cfg.rope_theta)
        h = self.embed_tokens(ids)
        hidden = [h]
        for layer in self.layers:
            h = layer(h, mask, (rope[0].to(ids.device), rope[1].to(ids.device)))
            hidden.append(h)
        hidden[-1] = h = self.norm(h)
        return hidden, h, h @ self.embed_tokens.weight.T

    def velocity(self, x_t, t, h_img):
        """The head: image hidden states (B, N, D) -> v (B, C, H, W)."""
        out = self.head(patchify(x_t, self.P), h_img, t) if self.head_kind == "ddt" else self.head(h_img)
        return unpatchify(out, *self.latent_shape, self.P)

    def forward(self, x_t, t, text):
        """x_t (B, C, H, W), t (B,), text (B, T) ids -> velocity (B, C, H, W)."""
        return self.velocity(x_t, t, self.backbone(x_t, t, text)[:, self.T:])


def build_model(cfg, latent_shape):
    """The Generator of a config, with its text tokenizer."""
    return Generator(model_config(cfg), latent_shape, cfg["patch"], cfg["text_len"], cfg["head"], text_tokenizer(cfg),
                     cfg.get("fusion") or "transfusion")  # (older checkpoints have no "fusion": Transfusion)


# ------------------------------------------------------------------------------------------
# 4. Flow matching (Sec. 4.1), apart from the network: x_t = (1 - t) x0 + t eps, t = 1 is
#    noise, target v = eps - x0. Training t: logit-normal, then shifted by s.
# ------------------------------------------------------------------------------------------

def shift_factor(C, P):
    """Sec. 4.1: s = sqrt(C * P^2 / 16): 2 for Flux-VAE (C=16, P=2), 6.93 for DINOv2-B (768, 1)."""
    return math.sqrt(C * P * P / 16)


def shift_t(t, s):
    """Resolution/channel shift t' = s t / (1 + (s - 1) t): s > 1 spends more time near noise."""
    return s * t / (1 + (s - 1) * t)


def flow_loss(model, x0, cond, t, eps):
    """Mean squared error of the velocity. x0, eps (B, C, H, W); t (B,) in (0, 1); cond: the
    model's condition (text ids (B, T), or edit.py's tuple)."""
    tb = t.view(-1, 1, 1, 1)
    x_t = (1 - tb) * x0 + tb * eps
    v = model(x_t, t, cond)
    return (v.float() - (eps - x0).float()).pow(2).mean()


@torch.no_grad()
def flow_sample(model, noise, cond, steps=50, shift=3.0, guidance=6.5, null=None):
    """Euler from t = 1 (noise) to t = 0 on the shifted grid. With guidance != 1 and a null
    caption batch `null`, v = v(null) + guidance (v(cond) - v(null)) (classifier-free guidance)."""
    ts = shift_t(torch.linspace(1, 0, steps + 1), shift).tolist()
    x, guided = noise, null is not None and guidance != 1.0
    for t0, t1 in zip(ts[:-1], ts[1:]):
        t = torch.full((len(x),), t0, device=x.device)
        if guided:  # one forward for both halves
            v_c, v_u = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null])).float().chunk(2)
            v = v_u + guidance * (v_c - v_u)
        else:
            v = model(x, t, cond).float()
        x = x + (t1 - t0) * v
    return x


def flow_draws(idx, shape, seed, step, s, loc=0.0, scale=1.0):
    """The noise eps and the time t of a batch, per sample (common.seeded_randn): t = sigmoid(loc + scale n),
    n ~ N(0, 1) (logit-normal; SD3's default loc 0, scale 1), then shifted by s."""
    eps = seeded_randn(idx, shape, seed, step, 0)
    return eps, shift_t(torch.sigmoid(loc + scale * seeded_randn(idx, (), seed, step, 1)), s)


def coin(idx, p, seed, step, salt):
    """True with probability p, per sample (caption dropout, source dropout), seeded as flow_draws."""
    return torch.special.ndtr(seeded_randn(idx, (), seed, step, salt)) < p


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
    """(the frozen tokenizer, its latent shape (C, H, W), image size in px). With expect_sha1 (a
    generator's record of its tokenizer), a changed file is an error: not the latents it learnt."""
    if not path:
        raise GeneratorError("no --tokenizer given; pass a stage-1/2 checkpoint of tokenizer.py, "
                             "e.g. runs/tokenizer-cpu/stage2.pt")
    path = T.last_stage(path)
    if not os.path.isfile(path):
        raise GeneratorError(f"the tokenizer checkpoint {path} does not exist; pass --tokenizer with a stage-1/2 "
                             f"checkpoint of tokenizer.py, e.g. runs/tokenizer-cpu/stage2.pt")
    tok = T.load_tokenizer(path, device).requires_grad_(False)
    if expect_sha1 and file_hash(path) != expect_sha1:
        raise GeneratorError(f"the tokenizer {path} differs from the file this generator was trained on (another "
                             f"sha1); pass --tokenizer with the checkpoint it was trained on")
    z = tok.encode(torch.zeros(1, 3, tok.encoder_size, tok.encoder_size, device=device))  # probe the shapes
    return tok, tuple(z.shape[1:]), tok.decode(z).shape[-1]


def latent_cache(cfg, kind, dataset, tok_path, size, encode_batch):
    """The dataset encoded once by the frozen tokenizer: {name: tensor or list}, read from
    <cache>/<kind>-<key>.pt or made by rank 0 (the others wait); encode_batch(batch) gives one
    batch's dict. The key hashes the tokenizer file and the dataset's description. -> (cache, path)."""
    ds, spec = dataset
    key = hashlib.sha1(json.dumps({"tokenizer": file_hash(tok_path), "size": size, **spec},
                                  sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(cfg["cache"], f"{kind}-{key}.pt")
    if is_rank0() and not os.path.isfile(path):
        os.makedirs(cfg["cache"], exist_ok=True)
        parts, t0 = {}, time.time()
        loader = DataLoader(ds, batch_size=cfg["cache_batch"], num_workers=cfg["workers"])
        with torch.no_grad():
            for batch in tqdm(loader, desc=f"encoding {kind}", disable=not sys.stderr.isatty()):
                for k, v in encode_batch(batch).items():
                    parts.setdefault(k, []).append(v)
        cache = {k: torch.cat(v) if torch.is_tensor(v[0]) else sum(v, []) for k, v in parts.items()}
        torch.save({**cache, "tokenizer": tok_path}, path + ".tmp")
        os.replace(path + ".tmp", path)  # atomic: an interrupted run never leaves half a cache
        print0(f"cached {len(ds)} items in {path} ({time.time() - t0:.0f} s)")
    barrier()
    return torch.load(path, map_location="cpu", weights_only=True), path


def caption_dataset(cfg, size):
    """(dataset of (image, caption), its description for the cache key)."""
    if cfg["data"]:
        try:
            return CaptionFolderDataset(cfg["data"], size), {"data": os.path.abspath(cfg["data"])}
        except (ValueError, FileNotFoundError) as e:
            raise GeneratorError(str(e))
    if cfg["n_train"] < 1:
        raise GeneratorError(f"preset {cfg['preset']} trains on real captions; pass --data FOLDER (images with "
                             f"same-named .txt files) or --n-train N for world captions")
    return WorldCaptions("train", cfg["n_train"], size), {"world": cfg["n_train"]}


def batch_indices(n, global_bs, rank, world, seed, epoch, pos):
    """This rank's share of global batch `pos` of epoch `epoch`: a seeded permutation per epoch,
    the global batch split rank::world, so any world size sees the same global batch."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    return perm[pos * global_bs:(pos + 1) * global_bs][rank::world]


def text_ids(text, texts, length, what):
    """(B, length) ids of training texts; one longer than the context is cut (printed, kept in config.json)."""
    ids, cut = text.batch(texts, length)
    if cut:
        print0(f"warning: {cut} of {len(texts)} {what} were longer than the {length}-token text context and cut")
    return ids, cut


# ------------------------------------------------------------------------------------------
# 6. Training. fit() is the flow-matching loop shared with edit.py; train() is the T2I run.
# ------------------------------------------------------------------------------------------

def lr_at(step, cfg):
    """The learning rate of 0-based `step`: linear warm-up over `warmup` steps, then constant (the
    paper's), and with `cooldown` > 0 a linear decay to zero over the last `cooldown` of `steps` (a
    constant-lr run can be resumed with a larger --steps and a --cooldown). Resume is exact."""
    return wsd_lr(step, cfg["lr"], cfg.get("steps"), cfg["warmup"], cfg.get("cooldown") or 0)  # steps: for a cooldown


@torch.no_grad()
def ema_update(ema, model, decay):
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - decay)  # e = decay e + (1 - decay) p


def optimiser_step(model, ema, opt, loss, cfg, step, out):
    """Everything after the forward pass: the loss averaged over processes (a NaN stops the run, the
    last checkpoint in `out` kept), lr_at's lr, backward, gradient clip, AdamW, EMA. -> the values to log."""
    logged = all_mean(loss.detach().float())
    if not torch.isfinite(logged):
        raise GeneratorError(f"the loss became {logged.item()} at step {step + 1}; the last checkpoint in {out} "
                             f"is kept; lower --lr or check the data")
    lr = lr_at(step, cfg)
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    values = {"loss": logged.item(), "lr": lr}
    if cfg["grad_clip"]:
        values["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"]))
    opt.step()
    ema_update(ema, model, cfg["ema"])
    return values


def fit(cfg, run, make_batch, n, shift, device):
    """The flow-matching loop (Sec. 4.1) of generator.py and edit.py. `run` holds model, ema, opt,
    fwd (the model as trained: DDP / compiled), step, data (epoch, position), rank, world;
    make_batch(idx, step) gives the clean target latents x0 (B, C, H, W) and the model's
    condition for the data indices idx. Checkpoints via run.save(step, data). -> last log record."""
    step, (epoch, pos), B = run.step, run.data, cfg["batch_size"]
    log = StepLog(cfg["out"], cfg["steps"], step, cfg["log_every"], os.path.basename(cfg["out"]))
    time_up = Deadline(cfg["time_limit"], device)
    while step < cfg["steps"]:
        if (pos + 1) * B > n:
            epoch, pos = epoch + 1, 0
        idx = batch_indices(n, B, run.rank, run.world, cfg["seed"], epoch, pos)
        pos += 1
        x0, cond = make_batch(idx, step)
        eps, t = flow_draws(idx, x0.shape[1:], cfg["seed"], step, shift, cfg["t_loc"], cfg["t_scale"])
        with torch.autocast(device.type, dtype=run.amp, enabled=run.amp is not None):
            loss = flow_loss(run.fwd, x0.to(device), cond, t.to(device), eps.to(device))
        values = optimiser_step(run.model, run.ema, run.opt, loss, cfg, step, cfg["out"])
        step += 1
        stop = time_up()
        log(step, B, values, device, force=stop)
        if stop:
            print0(f"--time-limit {cfg['time_limit']} min reached at step {step}/{cfg['steps']}; --resume continues")
        if (cfg["ckpt_every"] and step % cfg["ckpt_every"] == 0) or step == cfg["steps"] or stop:
            run.save(step, (epoch, pos))
            log.restart_clock()
        if stop:
            break
    log.close()
    run.step = step
    return log.last


class Run:
    """What fit() trains: the model, its EMA (DiT: a copy, no gradients, eval mode) and AdamW, from
    `ck` (a checkpoint to resume) or fresh; fwd is the model wrapped for DDP / compile. save()
    writes the checkpoint: everything needed to continue, plus `record`."""

    def __init__(self, cfg, model, ema, ck, ddp, rank, local_rank, world, device, record, name):
        self.cfg, self.rank, self.world, self.record, self.name = cfg, rank, world, record, name
        ema.requires_grad_(False).load_state_dict(model.state_dict())
        self.step, self.data = 0, (0, 0)
        if ck is not None:
            model.load_state_dict(ck["model"]), ema.load_state_dict(ck["ema"])
            self.step, self.data = ck["step"], ck["data"]
        self.model, self.ema = model.to(device), ema.to(device).eval()  # before the optimiser: its state follows
        self.opt = torch.optim.AdamW(model.parameters(), cfg["lr"], betas=(0.9, cfg["beta2"]),
                                     weight_decay=cfg["weight_decay"])
        if ck is not None:
            self.opt.load_state_dict(ck["opt"])
        self.fwd = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None) if ddp else model
        self.amp, compiled = choose_speed(cfg, device, cfg["steps"])  # from the total steps: the same on a resume
        self.fwd = torch.compile(self.fwd) if compiled else self.fwd

    def save(self, step, data):
        ckpt = dict(step=step, config=self.cfg, model=self.model.state_dict(), ema=self.ema.state_dict(),
                    opt=self.opt.state_dict(), data=data, world_size=self.world, **self.record)
        save_checkpoint(os.path.join(self.cfg["out"], self.name), ckpt)  # rank 0, atomic, then a barrier


def start_run(cfg, world, name, script=SCRIPT, keep=("resume", "steps")):
    """Check the batch split, make the run folder and return the checkpoint to resume (or None),
    saying which settings changed since it was written."""
    if cfg["batch_size"] % world:
        raise GeneratorError(f"--batch-size {cfg['batch_size']} (global) does not split over {world} processes")
    if is_rank0():
        os.makedirs(cfg["out"], exist_ok=True)
    if not cfg["resume"]:
        truncate_metrics(cfg["out"], 0)  # a fresh run into an old folder: its records go
        return None
    ck = load_run(os.path.join(cfg["out"], name), "checkpoint to resume", script, name)[0]
    changed = {k: (ck["config"].get(k), v) for k, v in cfg.items()
               if k not in keep and ck["config"].get(k) != v and not (k not in ck["config"] and not v)}
    if changed:
        print0("resuming with changed settings: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
    truncate_metrics(cfg["out"], ck["step"])
    return ck


def train(cfg, ddp, rank, local_rank, world, device):
    """The T2I run: cache the latents of (image, caption) pairs, then fit the generator to them."""
    cfg["lm"] = resolve_lm(cfg, device)  # "caption": the preset's caption LM, pre-trained first if missing
    ck = start_run(cfg, world, "generator.pt", keep=("resume", "steps", "tokenizer"))
    if ck is not None:
        for k in SHAPE_KEYS:
            had = ck["config"].get(k, "transfusion" if k == "fusion" else None)  # (a key older checkpoints lack)
            if had != cfg[k]:
                raise GeneratorError(f"the checkpoint has {k}={had!r} but this run asks for {cfg[k]!r}; "
                                     f"pass --{k.replace('_', '-')} {had} or use a new --out")
        cfg["tokenizer"] = cfg["tokenizer"] or ck["tokenizer"]  # --resume alone: the run's own tokenizer
    tok_path = T.last_stage(cfg["tokenizer"]) if cfg["tokenizer"] else cfg["tokenizer"]
    # a resumed run must see the very tokenizer it started on (a retrained stage2.pt has other latents)
    tok, latent_shape, size = open_tokenizer(tok_path, device, ck and ck["tokenizer_sha1"])
    s = cfg["shift"] or shift_factor(latent_shape[0], cfg["patch"])
    print0(f"latent {'x'.join(map(str, latent_shape))}, patch {cfg['patch']}: timestep shift s = sqrt(C P^2 / 16) = "
           f"{shift_factor(latent_shape[0], cfg['patch']):.3f}" + (f", overridden by --shift {s}" if cfg["shift"] else ""))
    cache, cache_path = latent_cache(cfg, "latents", caption_dataset(cfg, size), tok_path, size,
                                     lambda b, enc=tok.encode: {"latents": enc(b[0].to(device)).float().cpu(),
                                                                "captions": list(b[1])})
    del tok  # frozen and no longer needed: training only sees cached latents
    latents = cache["latents"]
    if len(latents) < cfg["batch_size"]:
        raise GeneratorError(f"the training set has {len(latents)} items, fewer than one batch of {cfg['batch_size']}")
    torch.manual_seed(cfg["seed"])  # the same initial weights on every rank
    model = build_model(cfg, latent_shape)
    if cfg["lm"] and ck is None:  # the paper: the backbone starts from Qwen2.5's weights (here: the caption LM's)
        try:
            model.load_lm(cfg["lm"])
        except ValueError as e:
            raise GeneratorError(str(e))
        print0(f"text backbone initialised from {cfg['lm']}")
    model.latent_mean.copy_(latents.mean((0, 2, 3)).view(-1, 1, 1))
    model.latent_std.copy_(latents.std((0, 2, 3)).view(-1, 1, 1))
    ids, cut = text_ids(model.text, cache["captions"], cfg["text_len"], "training captions")
    null = model.text([""], cfg["text_len"])  # the null caption, for classifier-free guidance
    record = dict(script=SCRIPT, latent_shape=latent_shape, tokenizer=os.path.abspath(tok_path),
                  tokenizer_sha1=file_hash(tok_path), shift=s)
    run = Run(cfg, model, build_model(cfg, latent_shape), ck, ddp, rank, local_rank, world, device, record, "generator.pt")
    n_params, n_head = (sum(p.numel() for p in m.parameters()) for m in (model, model.head))
    n_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)  # (llamafusion: the LM is frozen)
    print0(f"{world} process(es) on {device} | generator {cfg['model']}, {cfg['fusion']}: {n_params / 1e6:.2f}M "
           f"parameters ({n_trained / 1e6:.2f}M trained, {n_head / 1e6:.2f}M in the {cfg['head']} head) | "
           f"{len(latents)} cached latents")
    write_config(cfg["out"], {**cfg, "latent_shape": latent_shape, "shift_used": s, "cache_file": cache_path,
                              "captions_cut": cut})
    mean, std = model.latent_mean.cpu(), model.latent_std.cpu()

    def make_batch(idx, step):  # x0: normalised latents; the condition: the caption, or null for a share
        drop = coin(idx, cfg["caption_dropout"], cfg["seed"], step, 2)
        return (latents[idx] - mean) / std, torch.where(drop[:, None], null, ids[idx]).to(device)

    last = fit(cfg, run, make_batch, len(latents), s, device)
    if rank == 0 and cfg["n_samples"]:  # a look at the result: EMA samples for held-out captions
        val = WorldCaptions("val", cfg["n_samples"], 32)
        prompts = [val.item(i)[1] for i in range(len(val))] if not cfg["data"] else cache["captions"][:cfg["n_samples"]]
        imgs = generate(run.ema, open_tokenizer(tok_path, device)[0], prompts, steps=cfg["sample_steps"],
                        shift=cfg["sample_shift"], guidance=cfg["guidance"], seed=cfg["seed"], cut=True)
        save_grid(os.path.join(cfg["out"], "samples.png"), imgs, prompts, f"{cfg['model']} generator, step {run.step} (EMA)")
    return last


def load_run(path, what="generator checkpoint", script=SCRIPT, name="generator.pt"):
    """A checkpoint written by `script` (a file, or a run folder holding `name`), or one sentence.
    edit.py reads its own checkpoints with script="edit.py", name="edit.pt". -> (ckpt, path)."""
    if os.path.isdir(path):
        path = os.path.join(path, name)
    if not os.path.isfile(path):
        raise GeneratorError(f"the {what} {path} does not exist; train one with `python {script} "
                             f"...` or pass the right path")
    return read_checkpoint(path, script, what, GeneratorError), path


# ------------------------------------------------------------------------------------------
# 7. The caption LM. The paper's backbone starts from Qwen2.5-0.5B, an LM that can already read;
#    here it is pre-trained on the world's text (captions, instructions, scenes), minutes on a CPU,
#    and written as a folder --lm reads as a Qwen2.5 one (config.json, Qwen2-named safetensors).
# ------------------------------------------------------------------------------------------

WORLD_WORDS = "world_words.json"  # in an --lm folder: the world's word tokenizer instead of Qwen's BPE
LM_PRESETS = {  # pre-training of the caption LM, per generator preset (the backbone has its sizes)
    "tiny": dict(steps=40, batch_size=16, lr=3e-3, context=24, n_texts=600),
    "cpu": dict(steps=1500, batch_size=64, lr=2e-3, context=40, n_texts=30000),
    "world": dict(steps=6000, batch_size=128, lr=1e-3, context=40, n_texts=120000),
}
LM_PRESETS |= {f"{m}-l": LM_PRESETS[m] for m in ("tiny", "cpu")}  # the larger backbones: the same pre-training


def scene_text(scene):
    """A whole scene in the world's words: each object with all its attributes, the background
    and the tone (longer than any caption: the LM also learns to read long inputs)."""
    objs = [f"a {o.size} {o.texture} {o.colour} {o.shape}" for o in scene.objects]
    listed = objs[0] if len(objs) == 1 else ", ".join(objs[:-1]) + " and " + objs[-1]
    return f"{listed} on a {scene.bg_colour} background in a {scene.tone} tone"


def world_text(n):
    """n texts of the world's language from the training split, a third each: captions (every
    GenEval category, as the generator's training captions are drawn), edit instructions, scenes."""
    kinds = (lambda s: caption_scene(s)[1], lambda s: make_edit(s).instruction, lambda s: scene_text(sample_scene(s)))
    return [kinds[i % 3](scene_seed("train", i)) for i in range(n)]


def lm_loss(model, ids, pad):
    """Next-token cross-entropy of the backbone as a causal LM through its tied embedding (text_forward,
    the path Qwen2.5's weights are checked on); padding is masked as a key and is never a target.
    -> (the summed loss, the number of targets)."""
    logits = model.text_forward(ids, (ids != pad).long())[2]
    targets = ids[:, 1:].flatten()
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets, ignore_index=pad, reduction="sum")
    return nll, (targets != pad).sum()


class CaptionLM(nn.Module):
    """The generator's text backbone (text_parts) as one module, so that DDP can wrap it; its
    forward is lm_loss on the Generator's text path."""

    def __init__(self, generator, pad):
        super().__init__()
        self.parts, self.pad, self.generator = generator.text_parts(), pad, [generator]  # (a list: no submodule)

    def forward(self, ids):
        return lm_loss(self.generator[0], ids, self.pad)


def pretrain_caption_lm(model_name, out, lm, device, seed=0):
    """Train the `model_name` backbone as a causal LM on world_text (settings `lm`, a LM_PRESETS
    entry) and write it to `out` as an --lm folder. Under torchrun each process takes its share
    of every batch and DDP averages the gradients. -> the last log record."""
    torch.manual_seed(seed)
    text = TextTokenizer()
    model = Generator(MODELS[model_name], (1, 1, 1), text_len=lm["context"], head="none", text=text).to(device)
    lm_model = CaptionLM(model, text.pad)
    ddp = torch.distributed.is_initialized()
    fwd = DDP(lm_model, device_ids=[device.index] if device.type == "cuda" else None) if ddp else lm_model
    opt = torch.optim.AdamW(lm_model.parameters(), lr=lm["lr"], betas=(0.9, 0.95), weight_decay=0.1)
    ids = text.batch(world_text(lm["n_texts"]), lm["context"])[0]
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if ddp else (0, 1)
    os.makedirs(out, exist_ok=True)
    log = StepLog(out, lm["steps"], 0, max(1, lm["steps"] // 20), "caption LM")
    for step in range(lm["steps"]):
        for g in opt.param_groups:  # warm-up over 5%, constant, linear cool-down over the last 20%
            g["lr"] = wsd_lr(step, lm["lr"], lm["steps"], lm["steps"] // 20, lm["steps"] // 5)
        idx = batch_indices(len(ids), lm["batch_size"], rank, world, seed, step * lm["batch_size"] // len(ids),
                            step % (len(ids) // lm["batch_size"]))
        nll, n = fwd(ids[idx].to(device))
        loss = nll / all_mean(n.float())  # DDP's average over processes makes it the mean over all targets
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log(step + 1, lm["batch_size"], {"loss": all_mean(loss.detach()).item()}, device)
    log.close()
    if is_rank0():
        save_caption_lm(out, model, text, {**lm, "model": model_name, "seed": seed})
    barrier()
    return log.last


def save_caption_lm(out, model, text, settings):
    """The --lm folder: Qwen2's config.json keys, model.safetensors with Qwen2's tensor names (tied
    embedding: no lm_head), the word list of the world's tokenizer, and how it was trained."""
    m = model.cfg
    config = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": m.width,
              "num_hidden_layers": m.depth, "num_attention_heads": m.heads, "num_key_value_heads": m.kv_heads,
              "intermediate_size": m.mlp, "vocab_size": len(text), "rope_theta": m.rope_theta,
              "rms_norm_eps": m.rms_eps, "tie_word_embeddings": True, "hidden_act": "silu",
              "max_position_embeddings": settings["context"], "pretraining": settings}
    write_config(out, config)
    with open(os.path.join(out, WORLD_WORDS), "w") as f:
        json.dump(text.words, f)
    write_safetensors(os.path.join(out, "model.safetensors"),
                      {"model." + k: v for k, v in model.text_parts().state_dict().items()})


def resolve_lm(cfg, device):
    """--lm as a path: "caption" is this preset's caption LM in runs/caption-lm-<model>, pre-trained
    here first when it is missing (minutes on a CPU); "none" is random initial weights."""
    if cfg["lm"] in (None, "none"):
        return None
    if cfg["lm"] != "caption":
        return cfg["lm"]
    path = os.path.join("runs", f"caption-lm-{cfg['model']}")
    with one_maker(path + ".lock"):  # two jobs started at once: one pre-trains it, the other then reads it
        if not os.path.isfile(os.path.join(path, "model.safetensors")):
            print0(f"the caption LM {path} does not exist yet: pre-training it ({LM_PRESETS[cfg['model']]})")
            pretrain_caption_lm(cfg["model"], path, LM_PRESETS[cfg["model"]], device)
    return path


def cmd_lm(argv):
    """`generator.py lm`: pre-train the caption LM of a preset (also under torchrun)."""
    p = argparse.ArgumentParser(prog="generator.py lm", description=cmd_lm.__doc__)
    p.add_argument("--preset", choices=list(LM_PRESETS), default="cpu", help="the backbone's size and the settings")
    p.add_argument("--out", default=None, help="the --lm folder to write (default runs/caption-lm-<preset>)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: LM_PRESETS')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, choices=("cpu", "cuda", "mps"), help="default: cuda if available")
    a = p.parse_args(argv)
    lm = {**LM_PRESETS[a.preset], **({"steps": a.steps} if a.steps else {})}
    ddp, rank, local_rank, world, device = compute_init(a.device)
    try:
        if lm["batch_size"] % world:
            raise GeneratorError(f"the caption LM's batch of {lm['batch_size']} does not split over {world} processes")
        return pretrain_caption_lm(a.preset, a.out or os.path.join("runs", f"caption-lm-{a.preset}"), lm, device, a.seed)
    finally:
        compute_cleanup()


# ------------------------------------------------------------------------------------------
# 8. Sampling: load the EMA weights, generate, decode; the `sample` sub-command
# ------------------------------------------------------------------------------------------

def load_generator(path, device="cpu"):
    """(EMA model in eval mode, its training config, the tokenizer path) from a checkpoint or run
    folder; config["tokenizer_sha1"] records the tokenizer file it was trained on."""
    ck, path = load_run(path)
    model = build_model(ck["config"], ck["latent_shape"])
    model.load_state_dict(ck["ema"])
    return model.to(device).eval(), {**ck["config"], "tokenizer_sha1": ck.get("tokenizer_sha1")}, ck["tokenizer"]


def start_noise(model, first, n, seed):
    """Noise for images first .. first + n - 1 of a list, each seeded by (seed, its position),
    so a result does not depend on the batch size."""
    return seeded_randn(range(first, first + n), model.latent_shape, seed).to(model.latent_mean.device)


@torch.no_grad()
def generate_latents(model, prompts, steps=50, shift=3.0, guidance=6.5, seed=0, batch=64, first=0, cut=False):
    """prompts (list of str) -> latents (len(prompts), C, H, W) in the tokenizer's scale. Image i
    starts from noise seeded by (seed, first + i) (a caller that splits a list passes each part's
    offset as `first`). A prompt too long for the text context is an error, or cut with cut=True."""
    for p in prompts:
        if not p.strip():
            raise GeneratorError("the prompt is empty; give a caption such as 'two red circles'")
    text = model.text
    ids = text.batch(prompts, model.T)[0] if cut else text(prompts, model.T)  # text(): the "too long" sentence
    dev, out = model.latent_mean.device, []
    for b in range(0, len(prompts), batch):
        cond = ids[b:b + batch].to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            x = flow_sample(model, start_noise(model, first + b, len(cond), seed), cond, steps, shift, guidance,
                            text([""] * len(cond), model.T).to(dev))
        out.append(x.float() * model.latent_std + model.latent_mean)
    return torch.cat(out)


def generate(model, tok, prompts, **kw):
    """prompts -> images (B, 3, S, S) in [-1, 1], decoded by the tokenizer."""
    z = generate_latents(model, prompts, **kw)
    return torch.cat([tok.decode(z[i:i + 64]) for i in range(0, len(z), 64)]).cpu()


def cmd_sample(argv):
    p = argparse.ArgumentParser(prog="generator.py sample", description="text -> image grid with the EMA weights")
    p.add_argument("--ckpt", required=True, help="a generator run folder or its generator.pt")
    p.add_argument("--prompt", required=True, help="the caption")
    p.add_argument("--n", type=int, default=8, help="images for the prompt")
    p.add_argument("--out", default="grid.png", help="PNG to write")
    p.add_argument("--tokenizer", default=None, help="tokenizer checkpoint (default: the one used in training)")
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: the run's, paper 50)")
    p.add_argument("--sample-shift", type=float, default=None, help="inference timestep shift (paper 3)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (paper 6.5)")
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
              guidance=a.guidance if a.guidance is not None else cfg["guidance"], seed=a.seed)
    imgs = generate(model, tok, [a.prompt] * a.n, **kw)
    save_grid(a.out, imgs, [f"#{i}" for i in range(a.n)],
              f"\"{a.prompt}\" ({kw['steps']} Euler steps, shift {kw['shift']}, guidance {kw['guidance']})")
    print(f"wrote {a.out}")
    return a.out


# ------------------------------------------------------------------------------------------
# 9. Command line
# ------------------------------------------------------------------------------------------

def nonneg_int(text):
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} is negative; give a number of steps >= 0")
    return v


def add_run_args(g, name):
    """The run flags of generator.py and edit.py."""
    g.add_argument("--out", default=None, help=f"run folder (default runs/{name}-<preset>)")
    g.add_argument("--resume", action="store_true", help=f"continue exactly from <out>/{name}.pt")
    g.add_argument("--device", default=None, choices=("cpu", "cuda", "mps"), help="default: cuda if available")
    add_speed_args(g)
    g.add_argument("--seed", type=int, default=0, help="seed of the (new) weights, data order and noise")


def add_training_args(p, data_help, cache_batch):
    """The data, optimiser and logging flags of generator.py and edit.py (defaults: the preset)."""
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None, help=data_help)
    g.add_argument("--n-train", type=int, help="number of world training items")
    g.add_argument("--cache", default=os.path.join("runs", "cache"), help="folder of cached latents")
    g.add_argument("--cache-batch", type=int, default=cache_batch, help="items per tokenizer batch when caching")
    g.add_argument("--workers", type=int, default=0, help="DataLoader workers while caching")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, help="training steps")
    g.add_argument("--time-limit", type=float, default=0, help="minutes of training after which the run "
                   "checkpoints and stops (--resume continues); 0 = none")
    g.add_argument("--batch-size", type=int, help="global batch, split over processes (paper ~730)")
    g.add_argument("--lr", type=float, help="AdamW learning rate (paper 1e-4)")
    g.add_argument("--warmup", type=int, help="linear warm-up steps, then constant")
    g.add_argument("--cooldown", type=nonneg_int, default=0, help="linear decay of the lr to 0 over the last N "
                   "steps of --steps; 0 = constant to the end (the paper)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    g.add_argument("--beta2", type=float, default=0.95, help="AdamW's second-moment decay (beta1 is 0.9)")
    g.add_argument("--t-loc", type=float, default=0.0, help="training t = sigmoid(loc + scale n): logit-normal location")
    g.add_argument("--t-scale", type=float, default=1.0, help="... and scale (SD3's defaults 0 and 1)")
    g.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip, 0 = off")
    g.add_argument("--ema", type=float, help="EMA decay (paper 0.9999)")
    g = p.add_argument_group("logging")
    g.add_argument("--log-every", type=int, help="steps between log lines / metrics.jsonl records")
    g.add_argument("--ckpt-every", type=int, help="steps between checkpoints (the last step always gets one)")
    return g


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="PS-VAE generator: deep-fusion T2I transformer + wide DDT head "
                                "(`generator.py sample --help` for sampling)")
    g = p.add_argument_group("run")
    g.add_argument("--tokenizer", default=None, help="the frozen tokenizer: a stage-1/2 checkpoint or run folder")
    g.add_argument("--preset", choices=list(PRESETS), default="cpu", help="a dict of defaults; flags override it")
    add_run_args(g, "generator")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=list(MODELS), help="backbone and head sizes")
    g.add_argument("--lm", default=None, help="a Qwen2/Qwen2.5 folder (config.json, model.safetensors, vocab.json, "
                   "merges.txt): the backbone's size, weights and text tokenizer (the paper: Qwen2.5-0.5B); 'caption': "
                   "the preset's caption LM (runs/caption-lm-<model>, made if missing; the cpu and world presets' "
                   "default); 'none': random initial weights")
    g.add_argument("--head", choices=("ddt", "none"), default="ddt", help="wide DDT head, or none (Table 1 ablation)")
    g.add_argument("--fusion", choices=FUSIONS, default="transfusion", help="Table 1: one set of layers for all "
                   "tokens (transfusion), or an image branch beside the LM, trained (bagel) or frozen (llamafusion)")
    g.add_argument("--patch", type=int, default=1, help="patch size P on the latent grid")
    g.add_argument("--text-len", type=int, help="text context in tokens, bos included")
    add_training_args(p, "folder of images with same-named .txt captions instead of the world", 256)
    g = p.add_argument_group("flow matching (Sec. 4.1)")
    g.add_argument("--shift", type=float, default=None, help="training timestep shift (default sqrt(C P^2 / 16))")
    g.add_argument("--caption-dropout", type=float, default=0.1, help="share of null captions (for guidance)")
    g = p.add_argument_group("sampling")
    g.add_argument("--sample-steps", type=int, help="Euler steps (paper 50)")
    g.add_argument("--sample-shift", type=float, default=3.0, help="inference timestep shift (paper 3)")
    g.add_argument("--guidance", type=float, default=6.5, help="classifier-free guidance scale (paper 6.5)")
    g.add_argument("--n-samples", type=int, help="images in the samples.png written at the end (0 = none)")
    pre, _ = p.parse_known_args(argv)
    p.set_defaults(**PRESETS[pre.preset])
    args = p.parse_args(argv)
    args.out = args.out or os.path.join("runs", f"generator-{args.preset}")
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
    cfg = parse(argv)
    ddp, rank, local_rank, world, device = compute_init(cfg["device"])
    try:
        result = train_fn(cfg, ddp, rank, local_rank, world, device)
        barrier()  # rank 0 may still be drawing its samples: the group stays up until it is done
        return result
    except (GeneratorError, TokenizerError, ValueError) as e:  # (a data reader's errors are ValueErrors)
        raise SystemExit(f"{script}: error: {e}" if rank == 0 else 1)
    finally:
        compute_cleanup()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lm"]:
        try:
            return cmd_lm(argv[1:])
        except GeneratorError as e:
            raise SystemExit(f"{SCRIPT}: error: {e}")
    return run_cli(SCRIPT, argv, parse_args, train, cmd_sample)


if __name__ == "__main__":
    main()
