"""
tokenizer.py -- images <-> latents: the representation encoder, S-VAE (stage 1), PS-VAE (stage 2)
and the other latent spaces of Table 4.

Paper: Zhang et al. 2025, "Both Semantics and Reconstruction Matter" (arXiv 2512.17909),
Sections 3.3 and 4.1, Figure 5. Figure 5 in code (class PSVAE, method forward):

    f_h  = encoder(x)                  the representation encoder's patch features  (B, L, D)
    z    ~ E_s(f_h)                    a compact KL-regularised latent               (B, C, h, w)
    f''_h = D_s(z)                     back to the features; L_s(f''_h, f_h)
    x_hat = pixel_decoder(z)           z detached in stage 1 (S-VAE); L_p(x_hat, x)
    L = w_s L_s + w_kl L_kl + w_p L_p

Stage 1 (S-VAE): the encoder is frozen; E_s and D_s learn to keep the semantics, and the pixel
decoder learns to draw from the *detached* latent, so L_p cannot reshape it. Stage 2 (PS-VAE):
everything learns; L_p now reaches the encoder, and L_s is taken against a frozen copy of the
original encoder. The other latent spaces (RAE, S-VAE, P-VAE, a pixel VAE, RPiAE) are small
subclasses of the same Tokenizer. The representation encoder itself (DINOv2, or this world's
encoder of the same architecture) is pretrained.py's; the run plumbing is common.py's. Read top
to bottom:

  1. presets and model sizes
  2. Figure 5's modules: E_s, D_s, the (LDM) pixel decoder, a convolutional encoder
  3. the tokenizers: PSVAE (Figure 5), SVAE, PVAE, PixelVAE, RAE, RPiAE
  4. losses: L_s, L_kl, L_p (L1 + LPIPS + adaptive PatchGAN)
  5. stage 0: pre-training this world's encoder on semantics only, in DINOv2's role
  5b. stage 0 in SigLIP2's role (Table 3; --stage0-objective siglip): the sigmoid loss, zero-shot matching
  6. training: one step, the loop, validation
  7. command line

  python tokenizer.py --stage 0 --preset cpu     # then --stage 1, then --stage 2
  python tokenizer.py --stage 1 --preset cpu --recipe rae --encoder-ckpt runs/tokenizer-cpu/stage0.pt
  torchrun --nproc_per_node=2 tokenizer.py --stage 1 --preset tiny
"""
import argparse
import copy
import math
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Subset

from common import (AttnBlock, Deadline, Norm, ResnetBlock, StepLog, Upsample, add_speed_args, all_mean, append_metrics,
                    barrier, batches, choose_speed, compute_cleanup, compute_init, gather_ranks, is_rank0, make_lpips,
                    print0, psnr, read_checkpoint, save_checkpoint, save_recon_grid, seeded_randn, truncate_metrics,
                    write_config, wsd_lr)
from common import last_stage  # noqa: F401 (generator.py, evaluate.py, experiments/ read it as tokenizer.last_stage)
from pretrained import (DINOV2_URLS, DinoVisionTransformer, SiglipConfig, SiglipEncoderLayer, SiglipPoolingHead,
                        SiglipVisionTower, ViTConfig, load_dinov2_state_dict, load_siglip_state_dict)
from world import (TARGET_CLASSES, ImageFolderDataset, WorldCaptions, WorldImages, render, resample_detail, sample_scene,
                   scene_seed, semantic_targets, to_tensor)

SCRIPT = "tokenizer.py"  # written into every checkpoint, checked when one is loaded


class TokenizerError(ValueError):
    """A problem the user can fix; main() turns it into one clear sentence (never a traceback)."""


# ------------------------------------------------------------------------------------------
# 1. Presets and model sizes. A preset is a dict of argparse defaults; any flag overrides it.
# ------------------------------------------------------------------------------------------

# --encoder. The world encoders see 64 px images with patch 8: an 8x8 token grid, so that the
# 8x8xC latent keeps the paper's compression (256^2*3 / (16^2*96) = 8 = 64^2*3 / (8^2*24)).
# dinov2_* are the official hub models; siglip2_so400m_patch14_224 is Table 3's encoder.
ENCODERS = {
    "world-tiny": ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2),
    "world-cpu": ViTConfig(img_size=64, patch_size=8, embed_dim=128, depth=6, num_heads=4),
    "world": ViTConfig(img_size=64, patch_size=8, embed_dim=384, depth=12, num_heads=6),
    "dinov2_vitb14": ViTConfig(img_size=518, patch_size=14, embed_dim=768, depth=12, num_heads=12),
    "dinov2_vitb14_reg": ViTConfig(img_size=518, patch_size=14, embed_dim=768, depth=12, num_heads=12,
                                   num_register_tokens=4, interpolate_antialias=True, interpolate_offset=0.0),
    "siglip2_so400m_patch14_224": SiglipConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                               num_attention_heads=16, image_size=224, patch_size=14),
}
# (w_s, w_p) by --encoder, or by a world encoder's --stage0-objective: Sec 4.4's semantic:pixel ratio, 0.1:1 for
# DINOv2 (and the world's twins encoder), 0.05:1 for SigLIP2 and the world's siglip one (5b; "its reconstruction
# saturates earlier"). Sec 4.1's L_s + 0.1 L_p is --semantic-weight 1 --pixel-weight 0.1 (README: why 4.4 is default)
LOSS_WEIGHTS = {"siglip2_so400m_patch14_224": (0.05, 1.0), "siglip": (0.05, 1.0)}
DEFAULT_LOSS_WEIGHTS = (0.1, 1.0)


def build_encoder(name):
    """The representation encoder named by --encoder, with fresh weights."""
    cfg = ENCODERS[name]
    return (SiglipVisionTower if isinstance(cfg, SiglipConfig) else DinoVisionTransformer)(**asdict(cfg))


@dataclass
class DecoderConfig:
    ch: int
    ch_mult: tuple
    num_res_blocks: int
    disc_ch: int        # PatchGAN width (LDM: 64)
    disc_layers: int    # PatchGAN depth (LDM: 3)


# --decoder. paper = LDM's 16x16 -> 256 decoder (ch 128, ch_mult (1,1,2,2,4), 2 res blocks).
# world/cpu map the 8x8 latent to 64 px (three upsamplings). The decoder is 9/10 of a cpu-preset
# step's FLOPs, so cpu keeps every level narrow (16, 16, 32, 64 channels from 64 px down): 2.5
# times cheaper per step than (1, 2, 4, 8), which the 60-minute Table 4 needs.
DECODERS = {
    "tiny": DecoderConfig(ch=16, ch_mult=(1, 1, 2, 2), num_res_blocks=1, disc_ch=8, disc_layers=2),
    "cpu": DecoderConfig(ch=16, ch_mult=(1, 1, 2, 4), num_res_blocks=1, disc_ch=16, disc_layers=2),
    "world": DecoderConfig(ch=64, ch_mult=(1, 1, 2, 4), num_res_blocks=2, disc_ch=64, disc_layers=3),
    "paper": DecoderConfig(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, disc_ch=64, disc_layers=3),
}

# `steps` is per stage (0, 1, 2); RPiAE's stage 3 takes stage 2's.
PRESETS = {
    # tests: seconds on CPU
    "tiny": dict(encoder="world-tiny", decoder="tiny", image_size=32, encoder_size=32, latent_channels=4,
                 batch_size=4, lr=1e-3, steps=(6, 6, 6), n_train=64, n_val=4, log_every=1, ckpt_every=3,
                 disc_start=4),
    # the laptop demo: the three stages in well under 20 minutes on 2 CPU cores (one thread per
    # process is fastest on a busy 2-core machine: OMP_NUM_THREADS=1). The GAN needs longer runs
    # than this demo affords, so it stays off here (the tests switch it on).
    "cpu": dict(encoder="world-cpu", decoder="cpu", image_size=64, encoder_size=64, latent_channels=24,
                batch_size=32, lr=5e-4, steps=(300, 450, 300), n_train=20000, n_val=64, log_every=25,
                ckpt_every=150, disc_start=10**9),
    # the miniature paper on one GPU
    "world": dict(encoder="world", decoder="world", image_size=64, encoder_size=64, latent_channels=24,
                  batch_size=128, lr=2e-4, steps=(20000, 40000, 20000), n_train=200000, n_val=512,
                  log_every=100, ckpt_every=2000, disc_start=20000),
    # the paper's sizes (Sec 4.1): DINOv2-B/14, 224 px in, 256 px out, 16x16x96 latent, batch 96,
    # lr 1e-4. The paper says "DINOv2-B" without naming the variant; --encoder dinov2_vitb14_reg
    # also works (RAE's own runs use the register variant).
    "paper": dict(encoder="dinov2_vitb14", decoder="paper", image_size=256, encoder_size=224,
                  latent_channels=96, batch_size=96, lr=1e-4, steps=(0, 200000, 100000), n_train=0,
                  n_val=256, log_every=100, ckpt_every=5000, disc_start=50000),
}
# config keys that fix tensor shapes or the encoder's role (its loss weights): a checkpoint must agree on them
SHAPE_KEYS = ("encoder", "encoder_size", "image_size", "latent_channels", "decoder", "recipe", "svae_arch",
              "pixel_from_ds", "stage0_objective")


# ------------------------------------------------------------------------------------------
# 2. Figure 5's modules (Sec 3.3): the semantic encoder E_s and decoder D_s, "symmetric, three
#    transformer blocks inherited from the representation encoder plus an MLP projection";
#    the LDM pixel decoder; and, for the pixel VAE only, its convolutional encoder (LDM's layers: common.py).
# ------------------------------------------------------------------------------------------

class SemanticEncoder(nn.Module):
    """E_s: copies of the encoder's last `depth` blocks, then an MLP projection to 2C (mean,
    log-variance) per token. f_h (B, L, D) -> mean, logvar, each (B, C, h, w)."""

    def __init__(self, encoder, C, depth=3):
        super().__init__()
        D = encoder.embed_dim
        self.blocks = copy.deepcopy(encoder.blocks[max(0, len(encoder.blocks) - depth):])  # depth 0: Table 5's MLP
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.proj = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, 2 * C))

    def forward(self, f_h, grid):
        for blk in self.blocks:
            f_h = blk(f_h)
        m = self.proj(self.norm(f_h))  # (B, L, 2C)
        m = m.transpose(1, 2).reshape(len(m), -1, *grid)  # (B, 2C, h, w)
        mean, logvar = m.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # the LDM clamp keeps exp(logvar) finite


class SemanticDecoder(nn.Module):
    """D_s, symmetric to E_s: an MLP from C, copies of the encoder's last blocks and of its final
    norm, so that it predicts the normalised features. z (B, C, h, w) -> f''_h (B, L, D)."""

    def __init__(self, encoder, C, depth=3):
        super().__init__()
        D = encoder.embed_dim
        self.proj = nn.Sequential(nn.Linear(C, D), nn.GELU(), nn.Linear(D, D))
        self.blocks = copy.deepcopy(encoder.blocks[max(0, len(encoder.blocks) - depth):])
        self.norm = copy.deepcopy(encoder.norm)

    def forward(self, z):
        f = self.proj(z.flatten(2).transpose(1, 2))  # (B, C, h, w) -> (B, L, D)
        for blk in self.blocks:
            f = blk(f)
        return self.norm(f)


class PixelDecoder(nn.Module):
    """LDM decoder: (B, C, h, w) latent -> (B, 3, h * 2^(levels-1), ...) image. Attention at the
    lowest resolution (the middle block and the first level), nearest-neighbour upsampling."""

    def __init__(self, C, cfg):
        super().__init__()
        mults = cfg.ch_mult
        cin = cfg.ch * mults[-1]
        self.conv_in = nn.Conv2d(C, cin, 3, padding=1)
        self.mid = nn.Sequential(ResnetBlock(cin, cin), AttnBlock(cin), ResnetBlock(cin, cin))
        self.up = nn.ModuleList()
        for i in reversed(range(len(mults))):  # lowest resolution first
            cout = cfg.ch * mults[i]
            layers = []
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResnetBlock(cin, cout))
                cin = cout
                if i == len(mults) - 1:
                    layers.append(AttnBlock(cin))
            if i != 0:
                layers.append(Upsample(cin))
            self.up.append(nn.Sequential(*layers))
        self.norm_out = Norm(cin)
        self.conv_out = nn.Conv2d(cin, 3, 3, padding=1)  # its weight is "the last layer" of L_p's GAN weight

    def forward(self, z):
        x = self.mid(self.conv_in(z))
        for level in self.up:
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class ConvEncoder(nn.Module):
    """The pixel VAE's encoder (the MAR-VAE role in Table 4): PixelDecoder mirrored, strided
    convolutions down to the patch grid's stride. (B, 3, S, S) -> mean, logvar (B, C, h, w)."""

    def __init__(self, C, cfg):
        super().__init__()
        cin, layers = cfg.ch, [nn.Conv2d(3, cfg.ch, 3, padding=1)]
        for i, m in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResnetBlock(cin, cfg.ch * m))
                cin = cfg.ch * m
            if i != len(cfg.ch_mult) - 1:
                layers.append(nn.Conv2d(cin, cin, 3, stride=2, padding=1))  # halve h, w
        layers += [ResnetBlock(cin, cin), AttnBlock(cin), ResnetBlock(cin, cin), Norm(cin), nn.SiLU(),
                   nn.Conv2d(cin, 2 * C, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        mean, logvar = self.net(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)


# ------------------------------------------------------------------------------------------
# 3. The tokenizers. PSVAE.forward is Figure 5; every other latent space of Table 4 (and RPiAE)
#    is a small variation of it. STAGES says, per stage, which modules learn and which loss
#    terms apply; everything else is frozen (no gradient, eval mode).
# ------------------------------------------------------------------------------------------

def encoder_input(x, size, encoder):
    """Images in [-1, 1] as the encoder expects them: resized to its input size (paper: 256 px
    data, 224 px encoder input) and normalised as it was trained (DINOv2: ImageNet's mean and
    std; SigLIP: 0.5 and 0.5)."""
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    mean, std = (torch.tensor(v, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
                 for v in (encoder.input_mean, encoder.input_std))
    return ((x + 1) / 2 - mean) / std


class Tokenizer(nn.Module):
    """What the latent spaces share: the representation encoder and its input normalisation,
    the pixel decoder, encode / decode for the generator, and the freezing of a stage's
    non-learning parts. Images are (B, 3, S, S) in [-1, 1]; the encoder sees them resized to
    encoder_size and normalised as it expects (encoder_input)."""

    STAGES = {}  # stage -> ("modules that learn", "loss terms"), e.g. {1: ("pixel_decoder", "L_p")}

    def __init__(self, encoder, encoder_size, decoder_in, dcfg, latent_dim):
        super().__init__()
        self.encoder, self.encoder_size, self.latent_dim = encoder, encoder_size, latent_dim
        stride = encoder.patch_size if encoder is not None else 2 ** (len(dcfg.ch_mult) - 1)
        self.grid = (encoder_size // stride,) * 2  # the latent's (h, w)
        self.pixel_decoder = PixelDecoder(decoder_in, dcfg)
        self.encoder_ref = None  # a frozen copy of the original encoder: L_s's target when the encoder learns
        self.frozen = []

    # -- the representation encoder
    def features(self, x, encoder=None):
        """f_h: the encoder's normalised patch tokens (B, L, D) of images x."""
        encoder = encoder or self.encoder
        return encoder.forward_features(encoder_input(x, self.encoder_size, encoder))["x_norm_patchtokens"]

    def encoder_pass(self, x):
        """(f_h, the target of L_s). A frozen encoder runs without a graph and its features are
        their own target; an encoder that learns is held to its frozen copy (PS-VAE stage 2)."""
        if "encoder" in self.frozen:
            with torch.no_grad():
                f_h = self.features(x)
            return f_h, f_h
        f_h = self.features(x)
        with torch.no_grad():
            return f_h, None if self.encoder_ref is None else self.features(x, self.encoder_ref)

    def to_map(self, f):
        return f.transpose(1, 2).reshape(len(f), -1, *self.grid)  # (B, L, D) -> (B, D, h, w)

    def L_s(self, f_rec, f):
        return semantic_loss(f_rec, f)

    # -- what the generator uses
    @torch.no_grad()
    def encode(self, x):
        """images (B, 3, S, S) in [-1, 1] -> latent (B, C, h, w): the posterior mean."""
        return self.posterior(x)[0]

    @torch.no_grad()
    def decode(self, z):
        """latent (B, C, h, w) -> images (B, 3, S_out, S_out) in [-1, 1]."""
        return self.pixel_decoder(self.decoder_input(z)).clamp(-1, 1)

    def decoder_input(self, z):
        return z

    def reconstructed_features(self, z):
        """f''_h = D_s(z) where the latent space has a semantic decoder, else None."""
        return None

    def latent_noise(self, idx, seed, stage, step):
        """The reparameterisation noise eps of a batch, seeded per sample (see seeded_randn)."""
        return seeded_randn(idx, (self.latent_dim, *self.grid), seed, stage, step)

    # -- a stage's set-up
    def plan(self, stage):
        """(modules that learn, loss terms) of a stage, as sets of names."""
        train, losses = self.STAGES[stage]
        return set(train.split()), set(losses.split())

    def freeze_all_but(self, train):
        """Frozen parts get no gradient (DDP skips them) and stay in eval mode (see train())."""
        names = ("encoder", "conv_encoder", "E_s", "D_s", "pixel_decoder")
        self.frozen = [n for n in names if getattr(self, n, None) is not None and n not in train]
        for n in self.frozen:
            getattr(self, n).requires_grad_(False)
        return self.train()

    def train(self, mode=True):
        super().train(mode)
        for n in self.frozen if mode else ():
            getattr(self, n).eval()
        return self

    def add_reference(self):
        self.encoder_ref = copy.deepcopy(self.encoder).requires_grad_(False).eval()


class PSVAE(Tokenizer):
    """PS-VAE (Sec 3.3, Figure 5): E_s compresses f_h into a KL-regularised latent z, D_s maps
    z back to the features (L_s), the pixel decoder draws the image from z (L_p). Stage 1 is the
    S-VAE (encoder frozen, z detached before the pixel decoder); stage 2 trains everything.
    Variants: E_s/D_s as a 2-layer MLP (depth 0) and the pixel decoder on D_s's output (Table 5)."""

    STAGES = {1: ("E_s D_s pixel_decoder", "L_s L_kl L_p"),
              2: ("encoder E_s D_s pixel_decoder", "L_s L_kl L_p")}

    def __init__(self, encoder, encoder_size, C, dcfg, depth=3, pixel_from_ds=False):
        super().__init__(encoder, encoder_size, encoder.embed_dim if pixel_from_ds else C, dcfg, C)
        self.E_s, self.D_s = SemanticEncoder(encoder, C, depth), SemanticDecoder(encoder, C, depth)
        self.pixel_from_ds = pixel_from_ds

    def forward(self, x, eps, stage):
        f_h, f_target = self.encoder_pass(x)  # (B, L, D)
        mean, logvar = self.E_s(f_h, self.grid)  # (B, C, h, w) each
        z = mean + torch.exp(0.5 * logvar) * eps  # the reparameterisation trick
        f_rec = self.D_s(z)  # f''_h, (B, L, D)
        x_in = self.decoder_input(z, f_rec)
        # S-VAE (stage 1): the pixel decoder learns from the detached latent, so L_p cannot move E_s
        x_hat = self.pixel_decoder(x_in.detach() if stage == 1 else x_in)
        return dict(f_rec=f_rec, f_target=f_target, mean=mean, logvar=logvar, x_hat=x_hat)

    def posterior(self, x):
        return self.E_s(self.features(x), self.grid)

    def decoder_input(self, z, f_rec=None):
        if not self.pixel_from_ds:
            return z
        return self.to_map(self.D_s(z) if f_rec is None else f_rec)  # Table 5: (B, D, h, w)

    def reconstructed_features(self, z):
        return self.D_s(z)


class SVAE(PSVAE):
    """S-VAE (Table 4): PS-VAE stopped after stage 1, its encoder never touched by pixels."""

    STAGES = {1: PSVAE.STAGES[1]}


class PVAE(Tokenizer):
    """P-VAE (Table 4): the same encoder and E_s, trained for pixels only (no D_s, no L_s); the
    encoder learns. What the semantic loss buys is the difference to PS-VAE."""

    STAGES = {1: ("encoder E_s pixel_decoder", "L_kl L_p")}

    def __init__(self, encoder, encoder_size, C, dcfg):
        super().__init__(encoder, encoder_size, C, dcfg, C)
        self.E_s = SemanticEncoder(encoder, C)

    def forward(self, x, eps, stage):
        mean, logvar = self.posterior(x)
        z = mean + torch.exp(0.5 * logvar) * eps
        return dict(mean=mean, logvar=logvar, x_hat=self.pixel_decoder(z))

    posterior = PSVAE.posterior  # E_s on the encoder's features


class PixelVAE(Tokenizer):
    """A convolutional KL-VAE straight from pixels (the MAR-VAE role in Table 4): no
    representation encoder at all; the latent has the same shape as PS-VAE's."""

    STAGES = {1: ("conv_encoder pixel_decoder", "L_kl L_p")}

    def __init__(self, image_size, C, dcfg):
        super().__init__(None, image_size, C, dcfg, C)
        self.conv_encoder = ConvEncoder(C, dcfg)

    forward = PVAE.forward  # on its own posterior

    def posterior(self, x):
        return self.conv_encoder(x)


class RAE(Tokenizer):
    """RAE: the latent is the frozen encoder's features themselves (D channels), taken as RAE
    takes them: the last block's patch tokens (cls and registers dropped) under a LayerNorm
    without affine. The pixel decoder learns on them with noise augmentation, sigma = tau U(0, 1)
    per image. hd (RAE-HD, Table 6): the encoder learns too, held to its frozen copy by L_s."""

    STAGES = {1: ("pixel_decoder", "L_p")}

    def __init__(self, encoder, encoder_size, C, dcfg, noise_tau=0.8, hd=False):
        super().__init__(encoder, encoder_size, encoder.embed_dim, dcfg, encoder.embed_dim)
        self.noise_tau = noise_tau
        if hd:
            self.STAGES = {1: ("encoder pixel_decoder", "L_s L_p")}
        encoder.norm.requires_grad_(False)  # its affine is unused (DDP wants every learning weight used)

    def features(self, x, encoder=None):
        encoder = encoder or self.encoder
        f = encoder.forward_features(encoder_input(x, self.encoder_size, encoder))["x_prenorm"]
        f = f[:, encoder.num_prefix_tokens:]  # DINOv2's cls and registers go; SigLIP has none
        return F.layer_norm(f, f.shape[-1:], eps=1e-6)

    def forward(self, x, eps, stage):
        f_h, f_target = self.encoder_pass(x)
        return dict(f_rec=f_h, f_target=f_target, x_hat=self.pixel_decoder(self.to_map(f_h) + eps))

    def posterior(self, x):
        return self.to_map(self.features(x)), None

    def latent_noise(self, idx, seed, stage, step):
        sigma = self.noise_tau * torch.special.ndtr(seeded_randn(idx, (1, 1, 1), seed, 100 + stage, step))
        return super().latent_noise(idx, seed, stage, step) * sigma


class RPiAE(Tokenizer):
    """RPiAE, three stages. (I) The encoder is tuned for pixels, held near its frozen copy by a
    "pivot" MSE, while the pixel decoder learns on its features. (II) A variational bridge E_s /
    D_s on the now frozen encoder: feature MSE + KL + the pixel loss through the frozen decoder.
    (III) The pixel decoder is retrained on D_s's output. Its L_s is plain MSE."""

    STAGES = {1: ("encoder pixel_decoder", "L_s L_p"), 2: ("E_s D_s", "L_s L_kl L_p"), 3: ("pixel_decoder", "L_p")}

    def __init__(self, encoder, encoder_size, C, dcfg, stage=None):
        super().__init__(encoder, encoder_size, encoder.embed_dim, dcfg, C)
        self.E_s, self.D_s = SemanticEncoder(encoder, C), SemanticDecoder(encoder, C)
        self.bridge = stage != 1  # stage I has no bridge yet: its latent is the features

    def L_s(self, f_rec, f):
        return F.mse_loss(f_rec, f)

    def forward(self, x, eps, stage):
        f_h, f_target = self.encoder_pass(x)
        if stage == 1:
            return dict(f_rec=f_h, f_target=f_target, x_hat=self.pixel_decoder(self.to_map(f_h)))
        mean, logvar = self.E_s(f_h, self.grid)
        f_rec = self.D_s(mean + torch.exp(0.5 * logvar) * eps)
        return dict(f_rec=f_rec, f_target=f_target, mean=mean, logvar=logvar, x_hat=self.pixel_decoder(self.to_map(f_rec)))

    def posterior(self, x):
        f = self.features(x)
        return self.E_s(f, self.grid) if self.bridge else (self.to_map(f), None)

    def decoder_input(self, z):
        return self.to_map(self.D_s(z)) if self.bridge else z

    def reconstructed_features(self, z):
        return self.D_s(z) if self.bridge else None


RECIPES = {"psvae": PSVAE, "svae": SVAE, "pvae": PVAE, "vae": PixelVAE, "rae": RAE, "rpiae": RPiAE}
# the variant flags and the recipes they belong to (Tables 5 and 6)
VARIANTS = {"svae_arch": ("--svae-arch mlp2", ("psvae", "svae"), "blocks3"),
            "pixel_from_ds": ("--pixel-from-ds", ("psvae", "svae"), False),
            "rae_hd": ("--rae-hd", ("rae",), False)}


def build_tokenizer(cfg, encoder=None, stage=None):
    """A tokenizer with fresh weights from a config dict (argparse's, or a checkpoint's): the
    recipe and its variants come from the config, so a checkpoint needs no flags."""
    c = {**{k: v[2] for k, v in VARIANTS.items()}, **cfg}
    dcfg, C = DECODERS[c["decoder"]], c["latent_channels"]
    if c["recipe"] == "vae":  # no ViT: the conv encoder sees the images at their own size
        return PixelVAE(c["image_size"], C, dcfg)
    enc = encoder or build_encoder(c["encoder"])
    kw = {"psvae": dict(depth=0 if c["svae_arch"] == "mlp2" else 3, pixel_from_ds=c["pixel_from_ds"]),
          "rae": dict(noise_tau=c.get("rae_noise", 0.8), hd=c["rae_hd"]), "rpiae": dict(stage=stage)}
    kw["svae"] = kw["psvae"]
    return RECIPES[c["recipe"]](enc, c["encoder_size"], C, dcfg, **kw.get(c["recipe"], {}))


# ------------------------------------------------------------------------------------------
# 4. Losses (Sec 4.1): L_s on features, L_kl on the latent, L_p on pixels (as LDM's)
# ------------------------------------------------------------------------------------------

def semantic_loss(f_rec, f):
    """L_s = MSE + (1 - cosine similarity), per token, averaged. (B, L, D) each."""
    return F.mse_loss(f_rec, f) + (1 - F.cosine_similarity(f_rec, f, dim=-1)).mean()


def kl_loss(mean, logvar):
    """L_kl = KL(N(mean, var) || N(0, I)) as in LDM, averaged over latent elements (LDM sums
    them; the average keeps --kl-weight independent of the latent size)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def pixel_loss(x_hat, x, lpips=None, lpips_weight=1.0, disc=None, disc_weight=0.5, last_layer=None):
    """L_p: |x - x_hat| + lpips_weight LPIPS(x_hat, x) (the reconstruction term "rec"), plus,
    when a discriminator is given, the hinge-GAN generator loss g with LDM's adaptive weight
    disc_weight * ||dL_rec/dW|| / ||dL_g/dW|| at the decoder's last layer W. -> (L_p, terms).
    LDM's own loss also divides rec by a learned scalar variance (NLL = rec / e^s + s). At its
    optimum e^s = rec, which divides the pixel gradient by rec, a weight that keeps growing as
    reconstruction improves; it is left out so that the fixed L_s : L_p ratio is the one that acts."""
    rec = (x_hat - x).abs().mean()
    if lpips is not None:
        rec = rec + lpips_weight * lpips(x_hat, x).mean()
    if disc is None:
        return rec, {"rec": rec}
    disc.requires_grad_(False)  # the generator side: the discriminator gets no gradient here
    g = -disc(x_hat).mean()
    disc.requires_grad_(True)
    w_gan = disc_weight * adaptive_weight(rec, g, last_layer)
    return rec + w_gan * g, {"rec": rec, "g": g, "w_gan": w_gan}


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / LDM NLayerDiscriminator) with GroupNorm instead of BatchNorm: per-rank
    BatchNorm statistics would make a 2-process run differ from a 1-process one."""

    def __init__(self, ch=64, n_layers=3):
        super().__init__()
        layers = [nn.Conv2d(3, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = ch
        for n in range(1, n_layers + 1):
            cout = ch * min(2 ** n, 8)
            layers += [nn.Conv2d(c, cout, 4, 2 if n < n_layers else 1, 1, bias=False), Norm(cout), nn.LeakyReLU(0.2)]
            c = cout
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))  # (B, 1, h', w') real/fake logits per patch
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x):
        return self.main(x)


def hinge_d_loss(logits_real, logits_fake):
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(rec_loss, g_loss, last_layer, max_weight=1e4):
    """LDM's GAN weight: ||dL_rec/dW|| / ||dL_g/dW|| at the decoder's last layer W. Under DDP the
    gradients are averaged over ranks first, so the weight is that of the global batch."""
    g_rec = all_mean(torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0])
    g_gan = all_mean(torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0])
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, max_weight).detach()


# ------------------------------------------------------------------------------------------
# 5. Stage 0: this world's representation encoder, pre-trained on semantics only (never on
#    pixels), to play DINOv2's role. Labels alone do not ask an encoder to drop anything, and it
#    keeps the pixels; DINOv2 forgets pixel detail because it matches views of one image. Here a
#    view is the same scene with its detail redrawn (world.resample_detail), and the encoder is
#    asked to give both the same patch tokens. Real DINOv2 weights skip this stage.
# ------------------------------------------------------------------------------------------

class TwinScenes(torch.utils.data.Dataset):
    """Stage 0's data: scene i rendered twice, the second time with its pixel detail redrawn.
    Items: (views (2, 3, S, S), [labels of view 1, labels of view 2]) on a (grid, grid) patch grid."""

    def __init__(self, split, n, size, grid):
        self.split, self.n, self.size, self.grid = split, n, size, grid

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        scene = sample_scene(scene_seed(self.split, i))
        twin = resample_detail(scene, np.random.default_rng([scene_seed(self.split, i), 17]))
        return (torch.stack([to_tensor(render(s, self.size)) for s in (scene, twin)]),
                [semantic_targets(s, self.grid) for s in (scene, twin)])


def whitened_distance(z, target, eps=1e-3):
    """Mean squared Mahalanobis distance between tokens z and the (stop-gradient) tokens target,
    (N, D) each, under target's covariance. A difference along a direction in which the features
    hardly vary costs as much as one along a widely varying direction, so the encoder cannot make
    two views agree by shrinking its features (a plain MSE lets it); it has to drop what differs.
    eps * (the mean variance) is added to the covariance's diagonal, for small batches.
    Always in fp32: under bf16 autocast the products would round the covariance to 3 significant
    digits, its small eigenvalues to noise, and 1 / sqrt of them blows the distance up (measured in
    stage 0: 5e8 instead of about 0.1)."""
    with torch.autocast(z.device.type, enabled=False):
        target = target.detach().float()
        # the covariance of the global batch (every rank holds as many tokens), as one process computes it
        mean, second = all_mean(target.mean(0)), all_mean(target.T @ target / len(target))
        cov = second - torch.outer(mean, mean)  # (D, D)
        cov = cov + eps * cov.diagonal().mean() * torch.eye(len(cov), device=cov.device)
        lam, V = torch.linalg.eigh(cov)
        W = V / lam.clamp_min(1e-12).sqrt()  # (D, D): x @ W whitens
        return ((z.float() - target) @ W).pow(2).sum(-1).mean() / len(cov)

class StageZero(nn.Module):
    """The world encoder + linear heads: the per-patch maps (shape, colour, texture) are read
    from the patch tokens, count and background colour from the cls token."""

    MAPS = ("shape", "colour", "texture")

    def __init__(self, encoder, classes):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict({k: nn.Linear(encoder.embed_dim, n) for k, n in sorted(classes.items())})

    def forward(self, x):
        """images (B, 3, S, S) -> (logits per head, (B, n, g, g) or (B, n); patch tokens (B, L, D))."""
        out = self.encoder.forward_features(encoder_input(x, x.shape[-1], self.encoder))
        B, L, _ = out["x_norm_patchtokens"].shape
        g = math.isqrt(L)
        return {k: head(out["x_norm_patchtokens"]).transpose(1, 2).reshape(B, -1, g, g) if k in self.MAPS
                else head(out["x_norm_clstoken"]) for k, head in self.heads.items()}, out["x_norm_patchtokens"]

    def losses(self, logits, targets):
        """Cross-entropy per head."""
        return {f"ce_{k}": F.cross_entropy(lg.float(), targets[k].to(lg.device)) for k, lg in logits.items()}

    def hits(self, logits, targets):
        """Per head: (right answers, questions)."""
        right = {k: lg.argmax(1) == targets[k].to(lg.device) for k, lg in logits.items()}
        return {k: (ok.sum().item(), ok.numel()) for k, ok in right.items()}


# ------------------------------------------------------------------------------------------
# 5b. Stage 0 in SigLIP2's role (Table 3, Sec 4.4): the same encoder, steps and batch, trained on the
#     world's (image, caption) pairs with SigLIP's sigmoid loss beside a small text tower. Stages 1-2
#     load only the encoder ("encoder" in the checkpoint, as before); the text tower stays in "model".
# ------------------------------------------------------------------------------------------

class TextTower(nn.Module):
    """SigLIP's text tower, small: word and position embeddings, pretrained.py's SigLIP layers (no mask), a final norm,
    the last position pooled (it sees the whole caption, padded to `length`), a linear head. ids (B, L) -> (B, D)."""

    length = 16  # caption tokens: the world's longest caption has 14 words, + bos

    def __init__(self, vocab, D, depth, heads):
        super().__init__()
        self.token_embedding, self.position_embedding = nn.Embedding(vocab, D), nn.Embedding(self.length, D)
        self.layers = nn.ModuleList([SiglipEncoderLayer(D, heads, 4 * D, 1e-6) for _ in range(depth)])
        self.final_layer_norm, self.head = nn.LayerNorm(D, eps=1e-6), nn.Linear(D, D)

    def forward(self, ids):
        h = self.token_embedding(ids) + self.position_embedding.weight  # (B, L, D)
        for layer in self.layers:
            h = layer(h)
        return self.head(self.final_layer_norm(h)[:, -1])


class SigLIPStageZero(nn.Module):
    """Image tower: the encoder, SigLIP's attention-pooling (MAP) head over its patch tokens f_h. Text tower: a third of
    its depth (2 at least) over generator.py's word ids. t' (log temperature), b (bias): from log 10, -10 (SigLIP)."""

    def __init__(self, encoder):
        super().__init__()
        from generator import TextTokenizer  # generator.py imports this file: imported here, not at the top
        D, heads, self.words = encoder.embed_dim, encoder.num_heads, TextTokenizer()
        self.encoder, self.image_head = encoder, SiglipPoolingHead(D, heads, 4 * D, 1e-6)
        self.text = TextTower(len(self.words), D, max(2, len(encoder.blocks) // 3), heads)
        self.t_prime, self.b = nn.Parameter(torch.tensor(math.log(10.0))), nn.Parameter(torch.tensor(-10.0))

    def embed_images(self, x, encoder=None, size=None):
        """images (B, 3, S, S) -> (B, D) unit vectors; `encoder` (default the stage-0 one) sees them at `size` px."""
        encoder = encoder or self.encoder
        f_h = encoder.forward_features(encoder_input(x, size or x.shape[-1], encoder))["x_norm_patchtokens"]
        return F.normalize(self.image_head(f_h), dim=-1)

    def caption_ids(self, captions):
        return self.words.batch(list(captions), self.text.length)[0].to(self.b.device)  # (B, L), padded

    def embed_texts(self, ids):
        return F.normalize(self.text(ids), dim=-1)  # (B, D)

    def forward(self, x, ids):
        return self.embed_images(x), self.embed_texts(ids)


def sigmoid_loss(img, txt, t_prime, b):
    """SigLIP's loss (Zhai et al. 2023, Algorithm 1): logits_ij = exp(t') <img_i, txt_j> + b, z_ij = 1 if i = j else -1,
    L = -1/|B| sum_i sum_j log sigmoid(z_ij logits_ij): summed over the texts j, averaged over the images i, as the
    paper (|B| times the mean over all pairs). img, txt (B, d) unit vectors; in fp32, as exp(t') reaches ~100."""
    with torch.autocast(img.device.type, enabled=False):
        logits = img.float() @ txt.float().T * t_prime.float().exp() + b.float()  # (B, B)
        z = 2 * torch.eye(len(img), device=img.device) - 1
        return -F.logsigmoid(z * logits).sum(1).mean()


def siglip_loss(fwd, model, x, captions):
    """The global batch's sigmoid loss. Under DDP every rank gathers all ranks' embeddings (gradients flow back) and
    computes the whole loss, not SigLIP's chunked form: loss and step are one process's, the rows in another order."""
    img, txt = fwd(x, model.caption_ids(captions))
    loss = sigmoid_loss(gather_ranks(img.float()), gather_ranks(txt.float()), model.t_prime, model.b)
    return loss, {"t": model.t_prime.detach().exp(), "b": model.b.detach()}


def caption_matching(img, txt, captions):
    """The share of images whose most similar caption, of the N (caption i is image i's), is theirs or says the same
    words. img, txt: (N, d) unit vectors (exp(t') > 0: the largest logit is the largest <img_i, txt_j>)."""
    pick = (img @ txt.T).argmax(1).tolist()
    return sum(captions[j] == captions[i] for i, j in enumerate(pick)) / len(captions)


@torch.no_grad()
def zero_shot_matching(model, images, captions, encoder=None, size=None, batch=256):
    """Table 3's understanding half: caption_matching of images (N, 3, S, S) and their N captions by a SigLIPStageZero's
    heads on the patch tokens of `encoder` (its own, or a later one: a PS-VAE's after stage 2, at its --encoder-size)."""
    img = torch.cat([model.embed_images(x, encoder, size) for x in images.split(batch)])
    txt = torch.cat([model.embed_texts(ids) for ids in model.caption_ids(captions).split(batch)])
    return caption_matching(img.float(), txt.float(), list(captions))


# ------------------------------------------------------------------------------------------
# 6. Training: the loss of one step, the loop, and what the loop needs set up
# ------------------------------------------------------------------------------------------

def tokenizer_loss(fwd, model, x, idx, stage, step, cfg, lpips, disc):
    """One forward pass and L = w_s L_s + w_kl L_kl + w_p L_p over the stage's loss terms.
    `disc` is None while the GAN is off. Returns (L, terms to log, x_hat)."""
    losses = model.plan(stage)[1]
    out = fwd(x, model.latent_noise(idx, cfg["seed"], stage, step).to(x.device), stage)
    x_hat = out["x_hat"].float()
    terms = {}
    if "L_s" in losses:
        terms["L_s"] = model.L_s(out["f_rec"].float(), out["f_target"].float())
    if "L_kl" in losses:
        terms["L_kl"] = kl_loss(out["mean"].float(), out["logvar"].float())
    terms["L_p"], parts = pixel_loss(x_hat, x, lpips, cfg["lpips_weight"], disc, cfg["disc_weight"],
                                     model.pixel_decoder.conv_out.weight)
    # Sec 4.4: L = 0.1 * L_s + 1 * L_p (+ KL), a semantic:pixel ratio of 0.1:1 (0.05:1 for SigLIP2).
    # Sec 4.1 says L_s + 0.1 L_p instead; the paper contradicts itself, so both weights are flags.
    # Under Adam only ratios act; P-VAE and VAE have no L_s: for them only the KL : L_p ratio acts.
    loss = cfg["semantic_weight"] * terms.get("L_s", 0.0) + cfg["kl_weight"] * terms.get("L_kl", 0.0) \
        + cfg["pixel_weight"] * terms["L_p"]
    return loss, {**terms, **parts}, x_hat


def stage0_loss(fwd, model, x, targets, w_inv):
    """Stage 0: the heads' cross-entropies on the scene's labels, on both views, plus w_inv times
    the twin invariance, the whitened distance between the views' patch tokens, each view held to
    the other (stop gradient) in turn. No pixel loss, ever. x: (B, 2, 3, S, S) views."""
    logits, tokens = fwd(x.flatten(0, 1))  # the two views of a scene are rows 2b and 2b + 1
    labels = {k: torch.stack([t[k] for t in targets], 1).flatten(0, 1) for k in targets[0]}
    terms = model.losses(logits, labels)
    t1, t2 = (t.flatten(0, 1) for t in tokens.unflatten(0, (-1, 2)).unbind(1))  # (B * L, D) each
    terms["invariance"] = 0.5 * (whitened_distance(t1, t2) + whitened_distance(t2, t1))
    return sum(v for k, v in terms.items() if k != "invariance") + w_inv * terms["invariance"], terms


def discriminator_step(disc, opt_d, x, x_hat):
    """The PatchGAN's own step on real and (detached) reconstructed images, in one forward."""
    logits = disc(torch.cat([x, x_hat.detach()])).float()
    d_loss = hinge_d_loss(logits[:len(x)], logits[len(x):])
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    return d_loss.detach()


def lr_at(step, cfg):
    """The lr of `step`: constant, then a linear decay to 0 over the stage's last fraction --cooldown, so
    it ends at the top of its curve, not on a noisy point of it (results/LOG.md, table4/, 2026-12-06)."""
    return wsd_lr(step, cfg["lr"], cfg["steps"], cooldown=round(cfg["steps"] * (cfg.get("cooldown") or 0)))


def train(cfg, ddp, rank, local_rank, world, device):
    """Train one stage: the loop reads as the procedure; the set-up is named below it."""
    stage, out, steps = cfg["stage"], cfg["out"], cfg["steps"]
    ck = start_run(cfg, world)
    model, disc = build_stage(cfg, ck)
    params = [p for p in model.to(device).parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), weight_decay=0.0)
    opt_d = None if disc is None else torch.optim.AdamW(disc.to(device).parameters(), lr=cfg["lr"],
                                                        betas=(cfg["beta1"], cfg["beta2"]), weight_decay=0.0)
    if ck is not None:
        opt.load_state_dict(ck["opt"])
        if opt_d is not None:
            opt_d.load_state_dict(ck["opt_d"])
    ids = [local_rank] if device.type == "cuda" else None
    fwd, disc_fwd = (DDP(m, device_ids=ids) if ddp and m is not None else m for m in (model, disc))
    amp, compiled = choose_speed(cfg, device, steps)  # from the run's total steps: the same on a resume
    if compiled:  # the GAN's adaptive weight back-propagates twice (retain_graph): no donated buffers
        torch._functorch.config.donated_buffer = False
        fwd = torch.compile(fwd)
    lpips = make_lpips(device) if stage and cfg["lpips_weight"] > 0 and cfg["image_size"] >= 64 else None
    train_set, val = make_datasets(cfg, stage, world)
    step, (epoch, pos) = (ck["step"], ck["data"]) if ck is not None else (0, (0, 0))
    data = batches(train_set, cfg["batch_size"] // world, rank, world, cfg["seed"], epoch, pos, cfg["workers"])
    log, time_up = StepLog(out, steps, step, cfg["log_every"], f"stage {stage}", {"stage": stage}), \
        Deadline(cfg["time_limit"], device)
    last_good = ck and os.path.join(out, f"stage{stage}.pt")
    while step < steps:
        (epoch, pos), (idx, x, targets) = next(data)
        x = x.to(device, non_blocking=True)
        lr = lr_at(step, cfg)
        for g in [*opt.param_groups, *(opt_d.param_groups if opt_d is not None else [])]:
            g["lr"] = lr
        gan = disc if stage and step >= cfg["disc_start"] and "pixel_decoder" in model.plan(stage)[0] else None
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            if stage == 0 and cfg["stage0_objective"] == "siglip":
                loss, terms = siglip_loss(fwd, model, x, targets)
            elif stage == 0:
                loss, terms = stage0_loss(fwd, model, x, targets, cfg["s0_invariance"])
            else:
                loss, terms, x_hat = tokenizer_loss(fwd, model, x, idx, stage, step, cfg, lpips, gan)
        terms["loss"], terms["lr"] = loss, torch.tensor(lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
        if gan is not None:
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                terms["d_loss"] = discriminator_step(disc_fwd, opt_d, x, x_hat)
        values = dict(zip(terms, all_mean(torch.stack([v.detach().float() for v in terms.values()])).tolist()))
        if not math.isfinite(values["loss"]):  # before the update: the last checkpoint stays good
            raise TokenizerError(f"the loss became {values['loss']} at step {step + 1}; the run stops and keeps the "
                                 f"last good checkpoint ({last_good or 'none written yet'}); lower --lr or check the data")
        opt.step()
        step += 1
        stop = time_up()
        if stop:
            print0(f"stage {stage}: --time-limit {cfg['time_limit']} min reached at step {step}/{steps}; " +
                   ("--resume continues" if cfg["ckpt_every"] else "no checkpoint written (--ckpt-every 0)"))
        log(step, cfg["batch_size"], values, device, force=stop)
        if cfg["ckpt_every"] and (step % cfg["ckpt_every"] == 0 or step == steps or stop):
            log.last.update(validate_and_save(model, disc, opt, opt_d, val, cfg, step, (epoch, pos), world, device))
            last_good = os.path.join(out, f"stage{stage}.pt")
            log.restart_clock()
        if stop:
            break
    log.close()
    return log.last


def start_run(cfg, world):
    """Check the configuration, make the run folder, and return the checkpoint to resume (or
    None). Never overwrites another recipe's checkpoint."""
    stage, out = cfg["stage"], cfg["out"]
    check_config(cfg, world)
    if is_rank0():
        os.makedirs(out, exist_ok=True)
    barrier()
    path = os.path.join(out, f"stage{stage}.pt")
    old = not cfg["resume"] and stage and os.path.isfile(path) and load_checkpoint(path)["config"]["recipe"]
    if old and old != cfg["recipe"]:
        raise TokenizerError(f"{path} holds a --recipe {old} checkpoint; give this --recipe {cfg['recipe']} "
                             f"run its own --out")
    write_config(out, cfg, key=f"stage{stage}")
    if not cfg["resume"]:
        truncate_metrics(out, step=0, stage=stage)  # a stage trained afresh: its old records go
        return None
    ck = load_checkpoint(path, "checkpoint to resume")
    if ck["stage"] != stage:
        raise TokenizerError(f"{path} holds stage {ck['stage']}, not stage {stage}")
    check_shapes(ck, cfg, path)
    changed = [f"{k} {ck['config'].get(k)} -> {v}" for k, v in cfg.items()
               if k not in ("resume", "steps") and ck["config"].get(k) != v]
    if changed:
        print0("resuming with changed settings: " + ", ".join(changed))
    truncate_metrics(out, step=ck["step"], stage=stage)
    return ck


def check_config(cfg, world):
    """Shape and recipe rules, each broken one as a sentence."""
    r, stage = cfg["recipe"], cfg["stage"]
    if stage and stage not in RECIPES[r].STAGES:
        raise TokenizerError(f"--recipe {r} trains in stage(s) {', '.join(map(str, RECIPES[r].STAGES))}, "
                             f"not --stage {stage}")
    for key, (flag, recipes, off) in VARIANTS.items():
        if cfg[key] != off and r not in recipes:
            raise TokenizerError(f"{flag} is a variant of --recipe {' / '.join(recipes)}, not of --recipe {r}")
    if (stage == 0 or cfg["stage0_objective"] != "twins") and not cfg["encoder"].startswith("world"):
        raise TokenizerError(f"{cfg['encoder']} is already pre-trained and stage 0 pre-trains a world encoder: go to "
                             f"--stage 1, without --stage0-objective")
    if cfg["batch_size"] % world:
        raise TokenizerError(f"--batch-size {cfg['batch_size']} (global) does not split over {world} processes")
    if not 0 <= cfg["cooldown"] <= 1:
        raise TokenizerError(f"--cooldown {cfg['cooldown']} is a fraction of the stage's steps; give 0 to 1")
    patch = ENCODERS[cfg["encoder"]].patch_size
    if cfg["encoder_size"] % patch:
        raise TokenizerError(f"--encoder-size {cfg['encoder_size']} is not a multiple of the patch size {patch}")
    grid, up = cfg["encoder_size"] // patch, 2 ** (len(DECODERS[cfg["decoder"]].ch_mult) - 1)
    if grid * up != cfg["image_size"]:
        raise TokenizerError(f"decoder '{cfg['decoder']}' turns the {grid}x{grid} latent into {grid * up} px "
                             f"images but --image-size is {cfg['image_size']}; pick matching sizes")
    if not cfg["data"] and not cfg["n_train"]:
        raise TokenizerError(f"the {cfg['preset']} preset trains on real images: pass --data PATH "
                             f"(ImageNet layout), or --n-train N for world scenes")


def build_stage(cfg, ck):
    """The stage's model and discriminator with their starting weights: the checkpoint being
    resumed, else the previous stage's (--init), else an encoder from stage 0 or DINOv2. Then the
    parts that do not learn in this stage are frozen."""
    stage = cfg["stage"]
    torch.manual_seed(cfg["seed"])  # the same initial weights on every rank
    if stage == 0:
        enc = build_encoder(cfg["encoder"])
        model = SigLIPStageZero(enc) if cfg["stage0_objective"] == "siglip" else StageZero(enc, TARGET_CLASSES)
        if ck is not None:
            model.load_state_dict(ck["model"])
        return model, None
    fresh = ck is None and stage == 1 and cfg["recipe"] != "vae"
    model = build_tokenizer(cfg, init_encoder(cfg) if fresh else None, stage)
    disc = PatchDiscriminator(DECODERS[cfg["decoder"]].disc_ch, DECODERS[cfg["decoder"]].disc_layers)
    start = ck or (previous_stage(cfg) if stage >= 2 else None)
    if start is not None:
        model.load_state_dict(start["model"]), disc.load_state_dict(start["disc"])
    train, losses = model.plan(stage)
    model.freeze_all_but(train)
    if "encoder" in train and "L_s" in losses:
        model.add_reference()  # a frozen copy of the original encoder: the target of L_s
        if ck is not None:
            model.encoder_ref.load_state_dict(ck["encoder_ref"])
    counts = {n: sum(p.numel() for p in m.parameters()) for n, m in [*model.named_children(), ("disc", disc)]
              if n != "encoder_ref"}
    print0(f"stage {stage} ({cfg['recipe']}): learns {', '.join(sorted(train))}; losses {', '.join(sorted(losses))} "
           f"| parameters " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()))
    return model, disc


def previous_stage(cfg):
    """The checkpoint stage N starts from: --init, or <out>/stage<N-1>.pt ('random': none)."""
    stage, prev = cfg["stage"], cfg["stage"] - 1
    if cfg["init"] == "random":
        print0(f"warning: stage {stage} from random weights (--init random): only for smoke tests and measurements")
        return None
    path = cfg["init"] or os.path.join(cfg["out"], f"stage{prev}.pt")
    if not os.path.isfile(path):
        raise TokenizerError(f"stage {stage} starts from a stage-{prev} checkpoint but {path} does not exist; "
                             f"run --stage {prev} with the same --out first, or pass --init PATH")
    ck = load_checkpoint(path, f"stage-{prev} checkpoint")
    if ck["stage"] != prev:
        raise TokenizerError(f"--init {path} is a stage-{ck['stage']} checkpoint; stage {stage} starts from stage {prev}")
    check_shapes(ck, cfg, path)
    return ck


def init_encoder(cfg):
    """The representation encoder with its weights: DINOv2's official checkpoint (--encoder-ckpt or
    the hub cache), a SigLIP .safetensors (--encoder-ckpt), or this world's encoder from stage 0
    (--encoder-ckpt or <out>/stage0.pt). 'random' keeps random weights."""
    name, path = cfg["encoder"], cfg["encoder_ckpt"]
    enc = build_encoder(name)
    if path == "random":
        print0(f"warning: {name} keeps random weights (--encoder-ckpt random): only for smoke tests and measurements")
        return enc
    try:
        if isinstance(enc, SiglipVisionTower):
            if not path:
                raise ValueError(f"--encoder {name} needs --encoder-ckpt: the model.safetensors of "
                                 f"google/siglip2-so400m-patch14-224 (vision part or full checkpoint)")
            load_siglip_state_dict(path, enc)  # strict, one sentence per problem
            return enc
        sd = load_dinov2_state_dict(name, path) if name in DINOV2_URLS else world_encoder_weights(cfg)
    except ValueError as e:
        raise TokenizerError(str(e))
    try:
        enc.load_state_dict(sd)
    except RuntimeError as e:
        raise TokenizerError(f"the weights in {path or 'the hub cache'} do not fit --encoder {name} "
                             f"({str(e).splitlines()[0]}); pick the matching --encoder")
    return enc


def world_encoder_weights(cfg):
    """The world encoder's weights from a stage-0 checkpoint (--encoder-ckpt or <out>/stage0.pt)."""
    path = cfg["encoder_ckpt"] or os.path.join(cfg["out"], "stage0.pt")
    if not os.path.isfile(path):
        raise TokenizerError(f"the world encoder checkpoint {path} does not exist; run --stage 0 with the same "
                             f"--out first or pass --encoder-ckpt PATH")
    ck = load_checkpoint(path, "stage-0 checkpoint")
    if ck["stage"] != 0:
        raise TokenizerError(f"{path} is a stage-{ck['stage']} checkpoint; --encoder-ckpt needs a stage-0 one")
    check_shapes(ck, cfg, path, keys=("encoder", "stage0_objective"))
    return ck["encoder"]


def make_datasets(cfg, stage, world):
    """(train, val). Stage 0 needs the world's semantic labels on the encoder's patch grid."""
    if cfg["data"]:
        if stage == 0:
            raise TokenizerError("stage 0 learns the world's scene labels and cannot run on --data; "
                                 "use a pre-trained --encoder for real images")
        try:
            train = ImageFolderDataset(cfg["data"], cfg["image_size"])
        except Exception as e:
            raise TokenizerError(f"cannot use --data {cfg['data']}: {e}")
        # real data has no held-out split here: the first n_val images double as a preview set
        val = Subset(train, range(min(cfg["n_val"], len(train))))
    elif stage == 0 and cfg["stage0_objective"] == "siglip":  # (image, caption) pairs at the encoder's input size
        train, val = (WorldCaptions(s, cfg[f"n_{s}"], cfg["encoder_size"]) for s in ("train", "val"))
    elif stage == 0:  # twin views at the encoder's own input size, with their labels
        grid = cfg["encoder_size"] // ENCODERS[cfg["encoder"]].patch_size
        train = TwinScenes("train", cfg["n_train"], cfg["encoder_size"], grid)
        val = WorldImages("val", cfg["n_val"], cfg["encoder_size"], grid=grid)
    else:
        train, val = (WorldImages(s, cfg[f"n_{s}"], cfg["image_size"]) for s in ("train", "val"))
    if len(train) // world < cfg["batch_size"] // world:
        raise TokenizerError(f"the training set has {len(train)} images, fewer than one batch of {cfg['batch_size']}")
    return train, val


@torch.no_grad()
def validate(model, val, stage, device, bs):
    """Stage 0: the heads' accuracy per attribute. Later stages: the PSNR of reconstructions and,
    where there is a D_s, the cosine of D_s(z) to the reference features (semantic preservation:
    the original frozen encoder for S-VAE / PS-VAE; RPiAE's own stage-I encoder). Also returns
    the first 8 inputs and reconstructions. SigLIP's stage 0: zero-shot matching among all held-out captions."""
    if isinstance(model, SigLIPStageZero):
        images, texts = next(iter(DataLoader(val, batch_size=len(val))))
        return {"val_zero_shot": zero_shot_matching(model, images.to(device), texts)}, None
    model.eval()
    sums, first = {}, None
    for item in DataLoader(val, batch_size=bs):
        if stage == 0:
            for k, (h, n) in model.hits(model(item[0].to(device))[0], item[1]).items():
                sums[k] = [a + b for a, b in zip(sums.get(k, (0, 0)), (h, n))]
            continue
        x = (item[0] if isinstance(item, (list, tuple)) else item).to(device)
        z = model.encode(x)
        x_hat, f_rec = model.decode(z), model.reconstructed_features(z)
        sums.setdefault("psnr", []).append(psnr(x_hat, x))
        if f_rec is not None:
            sums.setdefault("feature_cos", []).append(
                F.cosine_similarity(f_rec, model.features(x, model.encoder_ref), dim=-1).mean(1))
        first = first or (x[:8].cpu(), x_hat[:8].cpu())
    model.train()  # frozen parts stay in eval mode (Tokenizer.train)
    if stage == 0:
        return {f"val_acc_{k}": h / n for k, (h, n) in sums.items()}, None
    return {f"val_{k}": torch.cat(v).mean().item() for k, v in sums.items()}, first


def validate_and_save(model, disc, opt, opt_d, val, cfg, step, data_pos, world, device):
    """At a checkpoint: rank 0 validates (metrics.jsonl, a reconstruction grid) and writes the
    checkpoint atomically. Returns the validation."""
    stage, out, ev = cfg["stage"], cfg["out"], {}
    if is_rank0():
        ev, first = validate(model, val, stage, device, cfg["batch_size"] // world)
        append_metrics(out, {"stage": stage, "step": step, **{k: round(v, 5) for k, v in ev.items()}})
        print0(f"stage {stage} step {step} eval | " + " ".join(f"{k} {v:.4f}" for k, v in ev.items()))
        if first is not None:
            save_recon_grid(os.path.join(out, f"recon_stage{stage}_step{step:06d}.png"), *first,
                            f"stage {stage}, step {step}: inputs (top), reconstructions (bottom), "
                            f"val PSNR {ev['val_psnr']:.2f} dB")
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder_ref.")}
    ckpt = dict(script=SCRIPT, stage=stage, step=step, config=cfg, model=sd, opt=opt.state_dict(), data=data_pos,
                world_size=world)
    if stage == 0:
        ckpt["encoder"] = model.encoder.state_dict()
    else:
        ckpt.update(disc=disc.state_dict(), opt_d=opt_d.state_dict())
        if model.encoder_ref is not None:
            ckpt["encoder_ref"] = model.encoder_ref.state_dict()
    save_checkpoint(os.path.join(out, f"stage{stage}.pt"), ckpt)
    return ev


def load_checkpoint(path, what="checkpoint"):
    """A tokenizer.py checkpoint, or a TokenizerError naming why it cannot be used."""
    return read_checkpoint(path, SCRIPT, what, TokenizerError)


def load_tokenizer(path, device="cpu"):
    """A trained tokenizer (eval mode) from a stage-1/2/3 checkpoint of any recipe (recorded in the
    checkpoint); works on CPU for GPU-trained ones."""
    ck = load_checkpoint(path)
    if ck["stage"] not in (1, 2, 3):
        raise TokenizerError(f"{path} is a stage-{ck['stage']} checkpoint; load_tokenizer needs stage 1, 2 or 3")
    model = build_tokenizer(ck["config"], stage=ck["stage"])
    model.load_state_dict(ck["model"])
    return model.to(device).eval()


def check_shapes(ck, cfg, path, keys=SHAPE_KEYS):
    defaults = {**{k: v[2] for k, v in VARIANTS.items()}, "stage0_objective": "twins"}  # keys older checkpoints lack
    for k in keys:
        if ck["config"].get(k, defaults.get(k)) != cfg[k]:
            raise TokenizerError(f"{path} has {k}={ck['config'].get(k)!r} but this run asks for {cfg[k]!r}; "
                                 f"pass --{k.replace('_', '-')} {ck['config'].get(k)} or use a new --out")


# ------------------------------------------------------------------------------------------
# 7. Command line
# ------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description="PS-VAE tokenizer: stage 0 (world encoder), 1 (S-VAE), 2 (PS-VAE)")
    g = p.add_argument_group("run")
    g.add_argument("--stage", type=int, choices=(0, 1, 2, 3), required=True, help="0: pre-train the world encoder "
                   "on semantics; 1: S-VAE, encoder frozen; 2: PS-VAE, all trained (other recipes: their STAGES)")
    g.add_argument("--preset", choices=list(PRESETS), default="cpu", help="a dict of defaults; flags override it")
    g.add_argument("--out", default=None, help="run folder for all stages (default runs/tokenizer-<preset>)")
    g.add_argument("--resume", action="store_true", help="continue exactly from <out>/stage<N>.pt")
    g.add_argument("--init", default=None, help="stage N >= 2 starts from this stage N-1 checkpoint "
                   "(default <out>/stage<N-1>.pt; 'random' for smoke tests and measurements)")
    g.add_argument("--device", default=None, choices=("cpu", "cuda", "mps"), help="default: cuda if available")
    add_speed_args(g)
    g.add_argument("--seed", type=int, default=0, help="seed of the weights, the data order and the noise")
    g = p.add_argument_group("model")
    g.add_argument("--encoder", choices=list(ENCODERS), help="representation encoder")
    g.add_argument("--stage0-objective", choices=("twins", "siglip"), default="twins", help="the world encoder's stage 0: "
                   "twins (DINOv2's role) or siglip (SigLIP2's, Table 3: L_s : L_p 0.05 : 1); give it at every stage")
    g.add_argument("--encoder-ckpt", default=None, help="DINOv2: the official .pth (default: hub cache / download); "
                   "SigLIP: its model.safetensors; world: a stage-0 checkpoint (default <out>/stage0.pt); "
                   "'random': no weights")
    g.add_argument("--encoder-size", type=int, help="encoder input size in px (paper 224)")
    g.add_argument("--image-size", type=int, help="data and reconstruction size in px (paper 256)")
    g.add_argument("--latent-channels", type=int, help="C of the (C, h, w) latent (paper 96)")
    g.add_argument("--decoder", choices=list(DECODERS), help="pixel decoder size")
    g = p.add_argument_group("recipe (Table 4: the latent space; Tables 5, 6: variants)")
    g.add_argument("--recipe", choices=list(RECIPES), default="psvae", help="psvae (stages 1-2), svae (stage 1), "
                   "rae (frozen features), pvae (pixel loss only), vae (conv KL-VAE), rpiae (stages 1-3)")
    g.add_argument("--svae-arch", choices=("blocks3", "mlp2"), default="blocks3", help="E_s/D_s: three "
                   "transformer blocks + MLP (paper), or the 2-layer MLP of Table 5")
    g.add_argument("--pixel-from-ds", action="store_true", help="Table 5: the pixel decoder reads D_s's output")
    g.add_argument("--rae-hd", action="store_true", help="Table 6: RAE whose encoder learns too, held by L_s")
    g.add_argument("--rae-noise", type=float, default=0.8, help="RAE noise augmentation: sigma = tau * U(0, 1), tau")
    g.add_argument("--s0-invariance", type=float, default=1.0, help="stage 0: weight of the twin invariance (the "
                   "whitened distance between a scene's and its redrawn twin's patch tokens); 0 = labels only")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None, help="image folder (ImageNet layout) instead of the world")
    g.add_argument("--n-train", type=int, help="number of world training scenes")
    g.add_argument("--n-val", type=int, help="number of held-out world scenes for evaluation")
    g.add_argument("--workers", type=int, default=0, help="DataLoader workers per process")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=None, help="total steps of this stage (default: the preset's)")
    g.add_argument("--time-limit", type=float, default=0, help="minutes of training after which the run "
                   "checkpoints and stops (--resume continues); 0 = none")
    g.add_argument("--batch-size", type=int, help="global batch size, split over processes (paper 96)")
    g.add_argument("--lr", type=float, help="learning rate (paper 1e-4)")
    g.add_argument("--cooldown", type=float, default=0.2, help="lr decays linearly to 0 over this last part of a stage")
    g.add_argument("--beta1", type=float, default=0.5, help="AdamW beta1 (LDM autoencoders: 0.5)")
    g.add_argument("--beta2", type=float, default=0.9, help="AdamW beta2 (LDM autoencoders: 0.9)")
    g.add_argument("--grad-clip", type=float, default=0.0, help="gradient-norm clip, 0 = off")
    g = p.add_argument_group("losses (Sec 4.1, 4.4)")
    g.add_argument("--semantic-weight", type=float, default=None, help="w_s of L_s (default: LOSS_WEIGHTS of the "
                   "encoder, Sec 4.4: 0.1, SigLIP2 0.05; Sec 4.1: 1)")
    g.add_argument("--pixel-weight", type=float, default=None, help="w_p of L_p (default: LOSS_WEIGHTS of the "
                   "encoder, Sec 4.4: 1; Sec 4.1: 0.1)")
    g.add_argument("--kl-weight", type=float, default=1e-3, help="w_kl of the per-element L_kl (not in the paper)")
    g.add_argument("--lpips-weight", type=float, default=1.0, help="LPIPS inside L_p (skipped if unavailable)")
    g.add_argument("--disc-weight", type=float, default=0.5, help="PatchGAN weight times the adaptive weight (LDM 0.5)")
    g.add_argument("--disc-start", type=int, help="step from which the GAN term is on")
    g = p.add_argument_group("logging")
    g.add_argument("--log-every", type=int, help="steps between log lines / metrics.jsonl records")
    g.add_argument("--ckpt-every", type=int, help="steps between checkpoints (+ eval and recon grid); "
                   "the last step always gets one; 0 = none at all (measurements)")
    pre, _ = p.parse_known_args(argv)
    p.set_defaults(**PRESETS[pre.preset])
    args = p.parse_args(argv)
    w_s, w_p = LOSS_WEIGHTS.get(args.encoder, LOSS_WEIGHTS.get(args.stage0_objective, DEFAULT_LOSS_WEIGHTS))
    args.semantic_weight = w_s if args.semantic_weight is None else args.semantic_weight
    args.pixel_weight = w_p if args.pixel_weight is None else args.pixel_weight
    if isinstance(args.steps, (tuple, list)):  # the preset's per-stage default
        args.steps = args.steps[min(args.stage, 2)]  # rpiae's stage 3 takes stage 2's budget
    if args.out is None:
        suffix = [v for v in (args.recipe, args.stage0_objective) if v not in ("psvae", "twins")]  # e.g. -rae-siglip
        args.out = os.path.join("runs", "-".join(["tokenizer", args.preset, *suffix]))
    return vars(args)


def main(argv=None):
    cfg = parse_args(argv)
    ddp, rank, local_rank, world, device = compute_init(cfg["device"])
    try:
        return train(cfg, ddp, rank, local_rank, world, device)
    except ValueError as e:  # a TokenizerError, or a data reader's one sentence
        raise SystemExit(f"tokenizer.py: error: {e}" if rank == 0 else 1)
    finally:
        compute_cleanup()


if __name__ == "__main__":
    main()
