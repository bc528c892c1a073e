"""
tokenizer.py -- images <-> latents: the miniature world, the representation encoder, S-VAE
(stage 1) and PS-VAE (stage 2).

Paper: Zhang et al. 2025, "Both Semantics and Reconstruction Matter" (arXiv 2512.17909),
Sections 3.3 and 4.1, Figure 5; the data is DESIGN.md section 3. Read top to bottom:

Part I, the miniature world (the embedded default data)
  1. vocabulary of the world (shapes, colours, textures, sizes, backgrounds, tones, styles)
  2. Scene = a pure function of an integer seed (`sample_scene`)
  3. `render(scene, size)`: vectorised numpy on a coordinate grid, analytic anti-aliasing
  4. `semantic_targets`: per-patch labels for the stage-0 "semantics only" encoder and probes
  5. captions per GenEval category, each with a machine-checkable spec
  6. edit pairs per GEdit category (source, instruction, target)
  7. datasets: world images / captions / edits, and real data (image folder, caption folder,
     JSONL edit triplets) with one-sentence errors
Part II, the codec
  8. distributed helpers (reused by generator.py and edit.py)
  9. DinoVisionTransformer: a drop-in for the official DINOv2 ViT (same keys, same outputs)
  10. the S-VAE: E_s and D_s, the LDM-style pixel decoder, the Tokenizer that holds them;
      RECIPES: the other latent spaces (RAE, S-VAE, P-VAE, pixel VAE, RPiAE; Table 4)
  11. losses: L_s, KL, L_p (L1 + LPIPS + hinge PatchGAN with the LDM adaptive weight)
  12. presets, model building, checkpoints
  13. data: the world by default, an image folder with --data; an exact, resumable order
  14. evaluation and reconstruction grids
  15. the loop: stages 0 / 1 / 2 (/ 3 for RPiAE)
  16. command line

The world is built for the paper's question: *semantics* (which objects, colours, textures,
counts, positions) against *pixel detail* (stripe phase and width, dot grid, gradient, noise,
exact anti-aliased edges, sub-pixel position). A semantic encoder should keep the first and may
drop the second; a pixel decoder needs both (the premise of PS-VAE, Sec. 1 and 3). World
coordinates are normalised: x to the right, y downwards, both in [0, 1], so one scene renders
the same at any size from 32 to 256 px.

Stage 0 (world encoder only): pre-train a small ViT on the scene's semantics (never pixels)
so that it plays DINOv2's role. Stage 1 (S-VAE): encoder frozen; E_s/D_s learn a compact
KL-regularised latent that reconstructs the encoder features (L_s + KL), and a pixel decoder
learns to draw images from the *detached* latent (L_p). Stage 2 (PS-VAE): everything trains;
L_p now reaches the encoder, and L_s is measured against a frozen copy of the original encoder.
`--recipe` swaps in the baselines (RECIPES says what each stage trains and which losses apply),
all with the same pixel decoder and pixel loss.

  python tokenizer.py --stage 0 --preset cpu     # then --stage 1, then --stage 2
  python tokenizer.py --stage 1 --preset cpu --recipe rae --encoder-ckpt runs/tokenizer-cpu/stage0.pt
  torchrun --nproc_per_node=2 tokenizer.py --stage 1 --preset tiny
"""
import argparse
import contextlib
import copy
import dataclasses
import datetime
import io
import json
import math
import os
import random
import resource
import sys
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

# ----------------------------------------------------------------------------------------------
# 1. The vocabulary of the world. Object colours are saturated and >= 44 degrees apart in hue;
# background colours are neutral (no chroma), so "is this pixel an object?" is a chroma test and
# "which colour?" a hue test: this is what lets the detector (evaluate.py) be exact.

SHAPES = ["circle", "square", "triangle", "diamond"]
COLOURS = {  # name -> RGB (hue in degrees: 0, 52, 128, 183, 227, 284)
    "red": (215, 45, 45), "yellow": (230, 200, 40), "green": (40, 180, 60),
    "cyan": (40, 190, 200), "blue": (50, 90, 225), "purple": (165, 60, 205),
}
TEXTURES = ["solid", "striped", "dotted"]
# half-extent of the object's box, as a fraction of the image side; the gap between the two
# ranges lets the detector name the size. Small objects are >= 7 px wide even at 32 px.
SIZES = {"small": (0.11, 0.135), "large": (0.17, 0.21)}
BG_COLOURS = {"white": 220, "grey": 132, "black": 40}  # mean grey level; with the gradient
# (<= 18) and a tone cast (<= 16) no channel clips, so a background stays exactly neutral + cast
TONES = {"neutral": (0, 0, 0), "warm": (16, 4, -16), "cool": (-14, 0, 16)}  # global RGB shift
STYLES = ["flat", "outlined"]  # "outlined" = cartoon style: a bold ring around every object
SPLITS = {"train": 0, "val": 1, "test": 2}  # held-out splits use disjoint seeds

# stripes darken the object colour, dots lighten it (towards white): the sign of the variation
# names the texture, which stays readable on a 7-px object at 32 px and under noise
TEXTURE_DEPTH = 0.42  # striped: colour * (1 - depth * pattern)
DOT_LIGHT = 0.5  # dotted: colour + (255 - colour) * light * pattern
OUTLINE_WIDTH = 0.04  # of the image side (>= 1.3 px at 32 px)
GAP = 0.06  # minimum empty space between two objects' boxes (outlines never touch)
MARGIN = 0.05  # objects (and outlines) keep off the border: the 1-px frame is pure background

# class counts for `semantic_targets` (class 0 = background for the per-patch maps)
TARGET_CLASSES = {
    "shape": 1 + len(SHAPES), "colour": 1 + len(COLOURS), "texture": 1 + len(TEXTURES),
    "count": 4, "bg_colour": len(BG_COLOURS),
}

# ----------------------------------------------------------------------------------------------
# 2. Scenes. Every continuous parameter below is "pixel detail" except position and size.


@dataclass(frozen=True)
class WorldObject:
    shape: str
    colour: str
    texture: str
    size: str  # "small" | "large"
    x: float  # centre, normalised
    y: float
    h: float  # half-extent of the box (the shape fits in [x-h, x+h] x [y-h, y+h])
    tex_angle: float  # stripe / dot-grid orientation (radians)
    tex_period: float  # stripe / dot spacing, normalised (>= 3 px at 32 px)
    tex_phase: float  # stripe / dot-grid phase (radians)


@dataclass(frozen=True)
class Scene:
    objects: tuple  # of WorldObject, 1..4, boxes never overlap
    bg_colour: str
    bg_angle: float  # direction of the background gradient
    bg_amp: float  # gradient strength in grey levels
    noise_seed: int  # the faint background noise
    tone: str = "neutral"
    style: str = "flat"


def scene_seed(split, index):
    """The seed of item `index` of a split: disjoint across splits, so train and val never meet."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(SPLITS)}")
    return index * len(SPLITS) + SPLITS[split]


def place(rng, size, taken, tries=200):
    """Rejection-sample a centre for a box of the given size name; None if the scene is full.
    All candidates are drawn at once; the first one whose box is at least GAP away from every
    taken box (x, y, h) along x or along y wins, so objects never overlap or touch."""
    h = rng.uniform(*SIZES[size], size=tries)
    x, y = rng.uniform(h + MARGIN, 1 - h - MARGIN, size=(2, tries))
    free = np.ones(tries, bool)
    for tx, ty, th in taken:
        free &= (np.abs(x - tx) > h + th + GAP) | (np.abs(y - ty) > h + th + GAP)
    k = int(np.argmax(free))
    return (float(x[k]), float(y[k]), float(h[k])) if free[k] else None


def random_object(rng, taken):
    """A new object with random attributes, placed in free space (None if there is none)."""
    size = ("small", "large")[rng.integers(2)]
    spot = place(rng, size, taken) or (place(rng, "small", taken) if size == "large" else None)
    if spot is None:
        return None
    x, y, h = spot
    if h < SIZES["large"][0]:
        size = "small"
    return WorldObject(
        shape=SHAPES[rng.integers(len(SHAPES))], colour=list(COLOURS)[rng.integers(len(COLOURS))],
        texture=TEXTURES[rng.integers(len(TEXTURES))], size=size, x=x, y=y, h=h,
        tex_angle=float(rng.uniform(0, math.pi)), tex_period=float(rng.uniform(0.10, 0.14)),
        tex_phase=float(rng.uniform(0, 2 * math.pi)))


def sample_scene(seed, n_objects=None):
    """Scene as a pure function of `seed` (and optionally a fixed object count, 1..4)."""
    rng = np.random.default_rng([int(seed), 7])
    n = int(n_objects or rng.integers(1, 5))
    objects = []
    for _ in range(n):
        o = random_object(rng, [(o.x, o.y, o.h) for o in objects])
        if o is not None:  # a crowded scene keeps fewer objects rather than overlapping them
            objects.append(o)
    return Scene(
        objects=tuple(objects), bg_colour=list(BG_COLOURS)[rng.integers(len(BG_COLOURS))],
        bg_angle=float(rng.uniform(0, 2 * math.pi)), bg_amp=float(rng.uniform(6, 18)),
        noise_seed=int(rng.integers(2**31)),
        tone=("neutral", "neutral", "warm", "cool")[rng.integers(4)],
        style=("flat", "flat", "flat", "outlined")[rng.integers(4)])


# ----------------------------------------------------------------------------------------------
# 3. Rendering. Each shape is a signed distance d (negative inside, in normalised units);
# coverage = clip(0.5 - d * size, 0, 1) is the analytic anti-aliasing of a 1-px wide edge.
# Work happens only inside each object's window, so a 64 px scene costs well under a millisecond.


def box_sdf(qx, qy, a):
    """Exact signed distance to a square of half-side a, given |dx| and |dy|."""
    ex, ey = qx - a, qy - a
    return np.sqrt(np.maximum(ex, 0) ** 2 + np.maximum(ey, 0) ** 2) + \
        np.minimum(np.maximum(ex, ey), 0)


def shape_sdf(shape, dx, dy, h):
    """Exact Euclidean signed distance (negative inside) to a shape of half-extent h centred at
    dx = dy = 0. Exact outside too, so an outline of width w is a rounded offset that stays
    within w of the shape's box (a mitred triangle corner would reach 2.2 w beyond)."""
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - h
    if shape == "square":
        return box_sdf(np.abs(dx), np.abs(dy), h)
    if shape == "diamond":  # a square turned by 45 degrees
        r = 1 / math.sqrt(2)
        return box_sdf(np.abs(dx + dy) * r, np.abs(dx - dy) * r, h * r)
    if shape == "triangle":  # apex (0, -h), base from (-h, h) to (h, h); centroid sits h/3 low
        px, qy = np.abs(dx), dy + h  # fold onto the right half, origin at the apex
        t = np.clip((px * h + qy * 2 * h) / (5 * h * h), 0, 1)  # projection on the side (h, 2h)
        side = np.sqrt((px - t * h) ** 2 + (qy - t * 2 * h) ** 2)
        base = np.sqrt((px - np.minimum(px, h)) ** 2 + (dy - h) ** 2)
        inside = (2 * px - qy < 0) & (dy < h)
        return np.where(inside, -np.minimum(side, base), np.minimum(side, base))
    raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")


def texture_pattern(o, dx, dy):
    """Pattern p in [0, 1], how strongly the texture shows at each pixel (None for solid);
    smooth, so it does not alias even at 32 px."""
    if o.texture == "solid":
        return None
    if o.shape == "triangle":
        dy = dy - o.h / 3  # centre the pattern on the triangle's centroid, not its box
    c, s = math.cos(o.tex_angle), math.sin(o.tex_angle)
    u = (dx * c + dy * s) * (2 * math.pi / o.tex_period)
    if o.texture == "striped":
        return 0.5 + 0.5 * np.cos(u + o.tex_phase)
    # dotted: a grid of soft round dots; the grid shifts by at most a quarter period, so a dot
    # always sits near the centre (a 7-px object at 32 px still shows one)
    v = (dy * c - dx * s) * (2 * math.pi / o.tex_period)
    shift = (o.tex_phase - math.pi) / 4
    return ((0.5 + 0.5 * np.cos(u + shift)) * (0.5 + 0.5 * np.cos(v - shift))) ** 1.5


def render(scene, size):
    """Scene -> uint8 RGB array (size, size, 3), any size from 32 to 256."""
    if not 16 <= size <= 1024:
        raise ValueError(f"render size {size} is out of range; use 16..1024 px (the world is "
                         "designed for 32..256)")
    px = 1.0 / size
    coords = (np.arange(size, dtype=np.float32) + 0.5) * px  # pixel centres, normalised
    # background: neutral grey level + a linear gradient + faint noise (pixel detail)
    gx = (coords - 0.5) * (2 * scene.bg_amp * math.cos(scene.bg_angle))
    gy = (coords - 0.5) * (2 * scene.bg_amp * math.sin(scene.bg_angle))
    noise = np.random.default_rng(scene.noise_seed).standard_normal((size, size), np.float32)
    grey = BG_COLOURS[scene.bg_colour] + gy[:, None] + gx[None, :] + 2.0 * noise
    img = np.repeat(grey[:, :, None], 3, axis=2)  # (H, W, 3) float32
    ring = OUTLINE_WIDTH if scene.style == "outlined" else 0.0
    outline = 245.0 if scene.bg_colour == "black" else 15.0  # contrasts with the background
    for o in scene.objects:
        # window of pixels that can be touched by this object (+ its outline and the AA band)
        r = o.h + ring + 2 * px
        i0, i1 = max(0, int((o.y - r) * size)), min(size, int((o.y + r) * size) + 1)
        j0, j1 = max(0, int((o.x - r) * size)), min(size, int((o.x + r) * size) + 1)
        dy = (coords[i0:i1] - o.y)[:, None]  # (h, 1)
        dx = (coords[j0:j1] - o.x)[None, :]  # (1, w)
        d = shape_sdf(o.shape, dx, dy, o.h)  # (h, w)
        win = img[i0:i1, j0:j1]  # a view: writes go into img
        if ring:
            cov = np.clip(0.5 - (d - ring) * size, 0.0, 1.0)[:, :, None]
            win += (outline - win) * cov
        cov = np.clip(0.5 - d * size, 0.0, 1.0)[:, :, None]
        colour = np.asarray(COLOURS[o.colour], np.float32)
        p = texture_pattern(o, dx, dy)
        if p is None:
            fill = colour
        elif o.texture == "striped":
            fill = colour * (1 - TEXTURE_DEPTH * p)[:, :, None]
        else:
            fill = colour + (255 - colour) * (DOT_LIGHT * p)[:, :, None]
        win += (fill - win) * cov
    img += np.asarray(TONES[scene.tone], np.float32)  # tone: a global colour cast
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def object_masks(scene, size, supersample=1):
    """Boolean (n_objects, size, size) masks of each object's coverage > 0.5 (for tests and
    semantic targets); `supersample` evaluates that many points per pixel side."""
    n = size * supersample
    coords = (np.arange(n, dtype=np.float32) + 0.5) / n
    masks = np.zeros((len(scene.objects), n, n), bool)
    for k, o in enumerate(scene.objects):
        masks[k] = shape_sdf(o.shape, coords[None, :] - o.x, coords[:, None] - o.y, o.h) < 0
    return masks


# ----------------------------------------------------------------------------------------------
# 4. Semantic targets for stage 0: the representation encoder of this world is pre-trained to
# predict semantics only (never pixels), playing the role of DINOv2 (DESIGN.md section 3).


def semantic_targets(scene, grid):
    """Labels on a (grid, grid) patch grid: 'shape', 'colour', 'texture' = 1 + index of the object
    covering more than half of the cell (0 = background); scalars 'count' = n_objects - 1 (0..3)
    and 'bg_colour' = index into BG_COLOURS. All torch.long."""
    cover = object_masks(scene, grid, supersample=8).reshape(-1, grid, 8, grid, 8).mean((2, 4))
    out = {k: torch.zeros(grid, grid, dtype=torch.long) for k in ("shape", "colour", "texture")}
    for k, o in enumerate(scene.objects):
        cell = torch.from_numpy(cover[k] > 0.5)  # objects never overlap: at most one wins a cell
        out["shape"][cell] = 1 + SHAPES.index(o.shape)
        out["colour"][cell] = 1 + list(COLOURS).index(o.colour)
        out["texture"][cell] = 1 + TEXTURES.index(o.texture)
    out["count"] = torch.tensor(len(scene.objects) - 1)
    out["bg_colour"] = torch.tensor(list(BG_COLOURS).index(scene.bg_colour))
    return out


def describe(scene):
    """The semantic description of a scene, in the same format as evaluate.detect returns:
    what a caption or an edit may talk about, and nothing of the pixel detail."""
    return {
        "bg_colour": scene.bg_colour, "tone": scene.tone, "style": scene.style,
        "objects": [{"shape": o.shape, "colour": o.colour, "texture": o.texture, "size": o.size,
                     "x": o.x, "y": o.y, "box": (o.x - o.h, o.y - o.h, o.x + o.h, o.y + o.h)}
                    for o in scene.objects],
    }


# ----------------------------------------------------------------------------------------------
# 5. Captions, one family per GenEval category (Sec. 4.1 evaluates T2I with GenEval). Each
# caption comes with a spec that evaluate.check_caption tests against the detector's output:
#   spec = {"category", "n_objects": exact total or None, "bg_colour": name or None,
#           "objects": [{"count": exact number, attribute: value, ...}],
#           "relation": None or [i, "left of" | "right of" | "above" | "below", j]}

CAPTION_CATEGORIES = ["single_object", "two_object", "counting", "colors", "position",
                      "color_attr"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four"]
RELATIONS = ["left of", "right of", "above", "below"]  # by the centres' dominant axis
TEMPLATES = {
    "single_object": ["a photo of a {o0}", "a {o0} on a {bg} background", "an image with a {o0}"],
    "two_object": ["a photo of a {o0} and a {o1}", "a {o0} and a {o1} on a {bg} background",
                   "an image with a {o0} and a {o1}"],
    "counting": ["a photo of {n} {o0}s", "{n} {o0}s on a {bg} background",
                 "there are {n} {o0}s in the image"],
    "colors": ["a photo of a {o0}", "a {o0} on a {bg} background", "the {o0_shape} is {o0_colour}"],
    "position": ["a photo of a {o0} {rel} a {o1}", "a {o0} is {rel} a {o1}",
                 "on a {bg} background a {o0} {rel} a {o1}"],
    "color_attr": ["a photo of a {o0} and a {o1}", "a {o0} and a {o1} on a {bg} background",
                   "an image with a {o0} and a {o1}"],
}
# the attributes each category names besides the shape: a texture word only for a textured
# object ("striped", "dotted"), a size word only for the single object
CAPTION_ATTRS = {"single_object": ("size", "texture"), "two_object": ("texture",),
                 "counting": (), "colors": ("colour", "texture"), "position": ("texture",),
                 "color_attr": ("colour", "texture")}


def noun_phrase(o, attrs):
    words = [o.size] if "size" in attrs else []
    words += [o.texture] if "texture" in attrs and o.texture != "solid" else []
    words += [o.colour] if "colour" in attrs else []
    return " ".join(words + [o.shape])


def make_caption(scene, category, rng):
    """(caption text, spec) for a scene that fits `category` (see caption_scene); rng picks the
    phrasing. Only true things are said, so the render satisfies its own caption."""
    attrs = CAPTION_ATTRS[category]
    objs = scene.objects
    fmt = {"bg": scene.bg_colour, "n": NUMBER_WORDS[len(objs)]}
    spec = {"category": category, "n_objects": len(objs), "bg_colour": None, "relation": None}
    template = TEMPLATES[category][rng.integers(len(TEMPLATES[category]))]
    if "{bg}" in template:
        spec["bg_colour"] = scene.bg_colour
    shown = objs[:1] if category in ("single_object", "colors", "counting") else objs[:2]
    for k, o in enumerate(shown):
        fmt[f"o{k}"] = noun_phrase(o, attrs)
        fmt[f"o{k}_shape"], fmt[f"o{k}_colour"] = o.shape, o.colour
    if "{o0_colour}" in template and objs[0].texture != "solid":  # "the striped circle is red"
        fmt["o0_shape"] = f"{objs[0].texture} {objs[0].shape}"
    spec["objects"] = [dict({"count": 1, "shape": o.shape},
                            **{a: getattr(o, a) for a in attrs
                               if not (a == "texture" and o.texture == "solid")})
                       for o in shown]
    if category == "counting":
        spec["objects"] = [{"count": len(objs), "shape": objs[0].shape}]
    if category == "position":
        a, b = objs[0], objs[1]
        rel = ("left of" if a.x < b.x else "right of") if abs(a.x - b.x) >= abs(a.y - b.y) \
            else ("above" if a.y < b.y else "below")
        fmt["rel"] = rel if rel in ("above", "below") else "to the " + rel
        spec["relation"] = [0, rel, 1]
    return template.format(**fmt), spec


def caption_scene(seed, category=None):
    """(scene, caption, spec) for a seed; category defaults to one picked by the seed. The scene
    is constrained to fit the category (e.g. counting: all objects share a shape)."""
    if category is None:
        category = CAPTION_CATEGORIES[np.random.default_rng([int(seed), 11]).integers(6)]
    rng = np.random.default_rng([int(seed), 11, CAPTION_CATEGORIES.index(category)])
    n = {"single_object": 1, "colors": 1, "counting": int(rng.integers(2, 5))}.get(category, 2)
    for attempt in range(100):
        scene = sample_scene(int(rng.integers(2**31)), n_objects=n)
        objs = list(scene.objects)
        if len(objs) != n:
            continue
        if category == "counting":  # one shape for all
            objs = [dataclasses.replace(o, shape=objs[0].shape) for o in objs]
        named_two = category in ("two_object", "position", "color_attr")
        if named_two and objs[0].shape == objs[1].shape:  # two named objects: different shapes
            others = [v for v in SHAPES if v != objs[0].shape]
            objs[1] = dataclasses.replace(objs[1], shape=others[rng.integers(3)])
        if category == "color_attr" and objs[0].colour == objs[1].colour:
            others = [v for v in COLOURS if v != objs[0].colour]
            objs[1] = dataclasses.replace(objs[1], colour=others[rng.integers(5)])
        a, b = objs[0], objs[-1]
        if category == "position" and max(abs(a.x - b.x), abs(a.y - b.y)) < 0.2:
            continue  # the relation must be unambiguous
        scene = dataclasses.replace(scene, objects=tuple(objs))
        text, spec = make_caption(scene, category, rng)
        return scene, text, spec
    raise RuntimeError(f"could not build a {category} scene for seed {seed}")  # pragma: no cover


# ----------------------------------------------------------------------------------------------
# 6. Edit pairs, one family per GEdit-Bench category the paper reports (Sec. 4.1, Table 4).
# The target is the source scene with exactly the instructed change: same background gradient
# and noise, same other objects, same texture phase; an added object goes into free space.
# spec = {"category", "ref": {"shape", "colour"} of the edited object or None,
#         "change": {attribute: new value} or the added object's attributes}

EDIT_CATEGORIES = ["background_change", "color_alter", "material_alter", "style_change",
                   "subject-add", "subject-remove", "subject-replace", "tone_transfer"]
EDIT_TEMPLATES = {
    "background_change": ["change the background to {new}", "make the background {new}",
                          "replace the {old} background with a {new} one"],
    "color_alter": ["make the {ref} {new}", "change the colour of the {ref} to {new}",
                    "turn the {ref} {new}"],
    "material_alter": ["make the {ref} {new}", "give the {ref} a {new} texture",
                       "change the texture of the {ref} to {new}"],
    "style_change": {"outlined": ["make it a cartoon with bold outlines",
                                  "draw bold outlines around the objects"],
                     "flat": ["remove the outlines", "make it a flat image without outlines"]},
    "subject-add": ["add a {new}", "put a {new} in the image", "insert a {new}"],
    "subject-remove": ["remove the {ref}", "delete the {ref}", "take the {ref} away"],
    "subject-replace": ["replace the {ref} with a {new}", "turn the {ref} into a {new}",
                        "change the {ref} into a {new}"],
    "tone_transfer": {"warm": ["give the image a warm tone", "make the colours warmer"],
                      "cool": ["give the image a cool tone", "make the colours cooler"],
                      "neutral": ["remove the colour cast", "make the tone neutral"]},
}


@dataclass(frozen=True)
class EditPair:
    source: Scene
    instruction: str
    target: Scene
    category: str
    spec: dict


def make_edit(seed, category=None):
    """EditPair for a seed; category defaults to one picked by the seed."""
    if category is None:
        category = EDIT_CATEGORIES[np.random.default_rng([int(seed), 13]).integers(8)]
    rng = np.random.default_rng([int(seed), 13, EDIT_CATEGORIES.index(category)])
    pick = lambda options: options[rng.integers(len(options))]  # noqa: E731
    for attempt in range(100):
        n = {"subject-add": int(rng.integers(1, 4)), "subject-remove": int(rng.integers(2, 5))}
        src = sample_scene(int(rng.integers(2**31)), n_objects=n.get(category))
        objs = list(src.objects)
        # the edited object must be nameable without ambiguity: its (colour, shape) is unique
        unique = [k for k, o in enumerate(objs)
                  if sum((p.colour, p.shape) == (o.colour, o.shape) for p in objs) == 1]
        if not unique or (category == "subject-remove" and len(objs) < 2):
            continue
        k = unique[rng.integers(len(unique))]
        o = objs[k]
        ref = {"shape": o.shape, "colour": o.colour}
        fmt = {"ref": f"{o.colour} {o.shape}"}
        tgt, change = src, {}
        if category == "background_change":
            new = pick([c for c in BG_COLOURS if c != src.bg_colour])
            fmt.update(new=new, old=src.bg_colour)
            tgt, change, ref = dataclasses.replace(src, bg_colour=new), {"bg_colour": new}, None
        elif category == "style_change":
            new = "flat" if src.style == "outlined" else "outlined"
            tgt, change, ref = dataclasses.replace(src, style=new), {"style": new}, None
        elif category == "tone_transfer":
            new = pick([t for t in TONES if t != src.tone])
            tgt, change, ref = dataclasses.replace(src, tone=new), {"tone": new}, None
        elif category == "subject-add":
            taken = [(p.x, p.y, p.h) for p in objs]
            new = random_object(rng, taken)
            if new is None or any((p.colour, p.shape) == (new.colour, new.shape) for p in objs):
                continue
            fmt["new"] = noun_phrase(new, ("size", "texture", "colour"))
            change = {a: getattr(new, a) for a in ("shape", "colour", "texture", "size")}
            tgt, ref = dataclasses.replace(src, objects=tuple(objs + [new])), None
        elif category == "subject-remove":
            tgt = dataclasses.replace(src, objects=tuple(objs[:k] + objs[k + 1:]))
        else:  # one attribute of one object: colour, texture (material) or shape (replace)
            attr, values = {"color_alter": ("colour", list(COLOURS)),
                            "material_alter": ("texture", TEXTURES),
                            "subject-replace": ("shape", SHAPES)}[category]
            new = pick([v for v in values if v != getattr(o, attr)])
            edited = dataclasses.replace(o, **{attr: new})
            if any((p.colour, p.shape) == (edited.colour, edited.shape)
                   for j, p in enumerate(objs) if j != k):
                continue  # keep every object nameable after the edit too
            fmt["new"] = new if category != "subject-replace" else noun_phrase(edited, ("colour",))
            change = {attr: new}
            objs[k] = edited
            tgt = dataclasses.replace(src, objects=tuple(objs))
        templates = EDIT_TEMPLATES[category]  # style and tone: phrasings per new value
        templates = templates[new] if isinstance(templates, dict) else templates
        text = pick(templates).format(**fmt)
        return EditPair(src, text, tgt, category, {"category": category, "ref": ref,
                                                   "change": change})
    raise RuntimeError(f"could not build a {category} edit for seed {seed}")  # pragma: no cover


def vocabulary():
    """Every word a caption or instruction can use (a fixed vocabulary, listed here)."""
    words = set(SHAPES) | {s + "s" for s in SHAPES} | set(COLOURS) | set(TEXTURES) | set(SIZES)
    words |= set(BG_COLOURS) | set(NUMBER_WORDS) | {"to", "the", "left", "right", "of"}
    phrases = [t for ts in TEMPLATES.values() for t in ts] + RELATIONS
    for ts in EDIT_TEMPLATES.values():
        phrases += [t for v in ts.values() for t in v] if isinstance(ts, dict) else ts
    for t in phrases:
        words |= {w for w in t.split() if "{" not in w}
    return sorted(words)


VOCAB = vocabulary()

# ----------------------------------------------------------------------------------------------
# 7. Datasets. Images are float (3, H, W) in [-1, 1] (DESIGN.md section 4). World datasets are
# map-style (so DistributedSampler works) and item i is a pure function of (split, i).


def to_tensor(img):
    """uint8 (H, W, 3) -> float (3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 127.5 - 1.0


def to_uint8(x):
    """float (3, H, W) in [-1, 1] -> uint8 (H, W, 3)."""
    x = (x.detach().float().clamp(-1, 1) + 1) * 127.5
    return x.round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


class WorldImages(torch.utils.data.Dataset):
    """Rendered scenes; with `grid`, items are (image, semantic_targets(scene, grid))."""

    def __init__(self, split, n, size, grid=None):
        scene_seed(split, 0)  # validates the split name
        self.split, self.n, self.size, self.grid = split, int(n), int(size), grid

    def __len__(self):
        return self.n

    def scene(self, i):
        return sample_scene(scene_seed(self.split, i))

    def __getitem__(self, i):
        scene = self.scene(i)
        img = to_tensor(render(scene, self.size))
        return img if self.grid is None else (img, semantic_targets(scene, self.grid))


class WorldCaptions(WorldImages):
    """(image, caption) pairs, the six GenEval categories in turn (item i has category i % 6)."""

    def item(self, i):
        """(scene, caption, spec) of item i."""
        cat = CAPTION_CATEGORIES[i % len(CAPTION_CATEGORIES)]
        return caption_scene(scene_seed(self.split, i), cat)

    def __getitem__(self, i):
        scene, text, _ = self.item(i)
        return to_tensor(render(scene, self.size)), text


class WorldEdits(WorldImages):
    """(source, instruction, target), the eight GEdit categories in turn (category i % 8)."""

    def item(self, i):
        return make_edit(scene_seed(self.split, i), EDIT_CATEGORIES[i % len(EDIT_CATEGORIES)])

    def __getitem__(self, i):
        e = self.item(i)
        return to_tensor(render(e.source, self.size)), e.instruction, \
            to_tensor(render(e.target, self.size))


# Real data. Errors are one sentence naming the problem and the fix; the scripts' CLIs turn
# ValueError / FileNotFoundError into a clean exit message.

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def load_image(path, size):
    """Read an image, resize its shorter side to `size`, centre-crop to (3, size, size) in [-1, 1].
    Raises ValueError with a sentence if the file is not a readable image."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = size / min(im.size)
            w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
            im = im.resize((w, h), Image.BICUBIC)
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return to_tensor(np.array(im))
    except (OSError, Image.DecompressionBombError, SyntaxError) as e:
        raise ValueError(f"cannot read image {path} ({e.__class__.__name__}); "
                         "replace or delete the file") from None


def check_folder(root, what):
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{what} folder {root} does not exist; pass the path of an "
                                "existing folder")


def is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


class SkippingDataset(torch.utils.data.Dataset):
    """Shared reading logic: an unreadable file among many is skipped with a warning (the next
    file is returned instead); if none can be read, the sentence from load_image is raised."""

    def __len__(self):
        return len(self.items)

    def read(self, i):  # -> the item tuple; subclasses load their files here
        raise NotImplementedError

    def __getitem__(self, i):
        for k in range(len(self.items)):
            j = (i + k) % len(self.items)
            try:
                return self.read(j)
            except ValueError as e:
                if len(self.items) == 1:
                    raise
                warnings.warn(f"skipping: {e}", stacklevel=2)
        raise ValueError(f"no readable image in {self.root}; check the files")


class ImageFolderDataset(SkippingDataset):
    """ImageNet layout root/<class>/<image>; items (image in [-1, 1], class index). Classes are
    the sorted sub-folder names (as torchvision's ImageFolder), images found recursively."""

    def __init__(self, root, size):
        check_folder(root, "image")
        self.root, self.size = root, size
        self.classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        self.items = [(os.path.join(dp, f), c) for c, name in enumerate(self.classes)
                      for dp, _, fs in sorted(os.walk(os.path.join(root, name)))
                      for f in sorted(fs) if is_image(f)]
        if not self.items:
            raise ValueError(f"image folder {root} has no images in class sub-folders; use the "
                             "ImageNet layout root/<class>/<image>.jpg")

    def read(self, i):
        path, label = self.items[i]
        return load_image(path, self.size), label


class CaptionFolderDataset(SkippingDataset):
    """A folder of images each with a same-named .txt caption (a.png + a.txt); items
    (image in [-1, 1], caption). Images without a caption are skipped with a warning."""

    def __init__(self, root, size):
        check_folder(root, "caption")
        self.root, self.size = root, size
        names = sorted(os.listdir(root))
        images = {os.path.splitext(f)[0]: f for f in names if is_image(f)}
        captions = [f for f in names if f.endswith(".txt")]
        for f in captions:
            if os.path.splitext(f)[0] not in images:
                raise ValueError(f"caption {os.path.join(root, f)} has no image with the same "
                                 "name beside it; add the image or delete the caption")
        stems = {os.path.splitext(f)[0] for f in captions}
        lonely = sorted(s for s in images if s not in stems)
        if lonely:
            warnings.warn(f"{len(lonely)} image(s) in {root} have no .txt caption and are skipped "
                          f"(first: {images[lonely[0]]})", stacklevel=2)
        self.items = [images[s] for s in sorted(stems)]
        if not self.items:
            raise ValueError(f"caption folder {root} has no image with a same-named .txt caption; "
                             "put pairs like a.png + a.txt in it")

    def read(self, i):
        name = self.items[i]
        path = os.path.join(self.root, os.path.splitext(name)[0] + ".txt")
        with open(path, encoding="utf-8") as f:
            caption = f.read().strip()
        return load_image(os.path.join(self.root, name), self.size), caption


class EditJsonlDataset(SkippingDataset):
    """JSONL lines {"input": path, "instruction": text, "output": path}, paths relative to the
    JSONL file's folder; items (source, instruction, target), images in [-1, 1]."""

    KEYS = ("input", "instruction", "output")

    def __init__(self, path, size):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"edit triplet file {path} does not exist; pass the path of "
                                    "a JSONL file with input/instruction/output per line")
        self.root, self.size = os.path.dirname(os.path.abspath(path)), size
        self.items = []
        with open(path, encoding="utf-8") as f:
            for ln, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise ValueError(f"line {ln} of {path} is not valid JSON; fix or delete "
                                     "that line") from None
                if not isinstance(rec, dict) or any(k not in rec for k in self.KEYS):
                    raise ValueError(f"line {ln} of {path} lacks one of the keys {self.KEYS}; "
                                     "give every line all three")
                for k in ("input", "output"):
                    p = os.path.join(self.root, rec[k])
                    if not os.path.isfile(p):
                        raise FileNotFoundError(f"line {ln} of {path} names image {p}, which does "
                                                "not exist; fix the path or add the image")
                self.items.append(rec)
        if not self.items:
            raise ValueError(f"edit triplet file {path} is empty; add one JSON line per triplet")

    def read(self, i):
        rec = self.items[i]
        return (load_image(os.path.join(self.root, rec["input"]), self.size), rec["instruction"],
                load_image(os.path.join(self.root, rec["output"]), self.size))


SCRIPT = "tokenizer.py"  # written into every checkpoint, checked when one is loaded


class TokenizerError(Exception):
    """A problem the user can fix; main() turns it into one clear sentence (never a traceback)."""


# ------------------------------------------------------------------------------------------
# 8. Distributed helpers: one code path for a laptop CPU, one GPU, or torchrun on many
# ------------------------------------------------------------------------------------------

DIST_TIMEOUT_HOURS = 3  # how long a rank waits at a collective before the run aborts


def compute_init(device=None):
    """Detect torchrun (RANK in the environment), start gloo on CPU or NCCL on GPU.
    Returns (ddp, rank, local_rank, world_size, device)."""
    ddp = int(os.environ.get("RANK", -1)) != -1
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(kind)
    if ddp and not dist.is_initialized():
        # generator.py and edit.py let rank 0 encode the latent cache while the other ranks wait at
        # a barrier; at ImageNet scale that outlasts NCCL's default 10-minute collective timeout
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(hours=DIST_TIMEOUT_HOURS))
    return ddp, rank, local_rank, world_size, dev


def compute_cleanup():
    """Tear down the process group, only if one was started."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_rank0():
    return not dist.is_initialized() or dist.get_rank() == 0


def print0(*args, **kwargs):
    """print on rank 0 only."""
    if is_rank0():
        print(*args, **kwargs, flush=True)


def barrier():
    if dist.is_initialized():
        dist.barrier()


def seed_everything(seed, rank=0, world_size=1):
    """Per-rank seed `seed * world_size + rank` (DiT), for anything drawn per process."""
    s = seed * world_size + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


class Deadline:
    """`--time-limit MIN`: a run stops cleanly (last checkpoint written, --resume continues)
    once this many minutes of training have passed, as a cluster's job limit would stop it,
    but at a step boundary. Rank 0's clock decides for every rank, so all stop at one step."""

    def __init__(self, minutes, device):
        self.t0, self.minutes, self.device = time.time(), minutes, device

    def __call__(self):
        if not self.minutes:
            return False
        up = time.time() - self.t0 > 60 * self.minutes
        if not dist.is_initialized():
            return up
        up = torch.tensor([float(up)], device=self.device)
        dist.broadcast(up, 0)
        return bool(up.item())


def all_mean(t):
    """Average a tensor over ranks (a no-op in one process)."""
    if dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


# ------------------------------------------------------------------------------------------
# 9. DINOv2: a drop-in for the official ViT (facebookresearch/dinov2, hub models vitb14[_reg])
#    Same constructor keywords, same state_dict names and shapes, same outputs (to 1e-5 on the
#    fixture in ../shared/fixtures/dinov2). The world encoder is this class at a small size.
# ------------------------------------------------------------------------------------------

class PatchEmbed(nn.Module):
    def __init__(self, patch_size, in_chans, embed_dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)

    def forward(self, x):  # (B, 3, H, W) -> (B, H/p * W/p, D)
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
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


class Mlp(nn.Module):
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


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale: x += ls1(attn(norm1 x)); x += ls2(mlp(norm2 x))."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, init_values=None, qkv_bias=True,
                 proj_bias=True, ffn_bias=True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, proj_bias)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), ffn_bias)
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
        self.n_blocks = depth
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
            [Block(embed_dim, num_heads, mlp_ratio, init_values, qkv_bias, proj_bias, ffn_bias)
             for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
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
        h = self.prepare_tokens_with_masks(x)
        outs = []
        for i, blk in enumerate(self.blocks):
            h = blk(h)
            if i in take:
                outs.append(h)
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


@dataclass
class ViTConfig:
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


# Model-size registry for --encoder. The world encoders see 64 px images with patch 8: an 8x8
# token grid, so that the 8x8 x C latent keeps the paper's compression (256^2*3 / (16^2*96) = 8
# = 64^2*3 / (8^2*24)). dinov2_* are the official hub models (meta.json of the fixture).
ENCODERS = {
    "world-tiny": ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2),
    "world-cpu": ViTConfig(img_size=64, patch_size=8, embed_dim=128, depth=6, num_heads=4),
    "world": ViTConfig(img_size=64, patch_size=8, embed_dim=384, depth=12, num_heads=6),
    "dinov2_vitb14": ViTConfig(img_size=518, patch_size=14, embed_dim=768, depth=12, num_heads=12),
    "dinov2_vitb14_reg": ViTConfig(img_size=518, patch_size=14, embed_dim=768, depth=12, num_heads=12,
                                   num_register_tokens=4, interpolate_antialias=True,
                                   interpolate_offset=0.0),
}
DINOV2_URLS = {
    "dinov2_vitb14": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
    "dinov2_vitb14_reg": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth",
}


def build_encoder(name):
    return DinoVisionTransformer(**asdict(ENCODERS[name]))


def load_dinov2_state_dict(name, path=None):
    """The official checkpoint of `name`: from `path`, else from the hub cache / official URL."""
    if path:
        if not os.path.isfile(path):
            raise TokenizerError(f"--encoder-ckpt {path} does not exist; give the path of {os.path.basename(DINOV2_URLS[name])}")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise TokenizerError(f"cannot read {path} as a DINOv2 state dict ({type(e).__name__}); download it again from {DINOV2_URLS[name]}")
    url = DINOV2_URLS[name]
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu")  # uses the cache when present
    except Exception as e:
        raise TokenizerError(
            f"cannot download the {name} weights ({type(e).__name__}: offline?); fetch {url} on a "
            f"machine with internet and put it at {cached} or pass --encoder-ckpt PATH")


# ------------------------------------------------------------------------------------------
# 10. The S-VAE (Sec 3.3, Fig. 5): E_s, D_s, the pixel decoder, and the Tokenizer holding them
# ------------------------------------------------------------------------------------------

class SemanticEncoder(nn.Module):
    """E_s: three transformer blocks copied from the representation encoder's last blocks, then
    an MLP projection to 2C (mean, log-variance) per token. (B, L, D) -> 2 x (B, C, h, w)."""

    def __init__(self, encoder, C, depth=3):
        super().__init__()
        D = encoder.embed_dim
        self.blocks = copy.deepcopy(encoder.blocks[len(encoder.blocks) - depth:])  # depth 0: Table 5's MLP
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.proj = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, 2 * C))

    def forward(self, f, grid):
        for blk in self.blocks:
            f = blk(f)
        m = self.proj(self.norm(f))  # (B, L, 2C)
        B, L, C2 = m.shape
        m = m.transpose(1, 2).reshape(B, C2, *grid)  # (B, 2C, h, w)
        mean, logvar = m.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # the LDM clamp keeps exp(logvar) finite


class SemanticDecoder(nn.Module):
    """D_s, symmetric to E_s: MLP from C, three blocks (copies of the encoder's last blocks) and
    a copy of the encoder's final norm, so it predicts the normalised features. -> (B, L, D)."""

    def __init__(self, encoder, C, depth=3):
        super().__init__()
        D = encoder.embed_dim
        self.proj = nn.Sequential(nn.Linear(C, D), nn.GELU(), nn.Linear(D, D))
        self.blocks = copy.deepcopy(encoder.blocks[len(encoder.blocks) - depth:])
        self.norm = copy.deepcopy(encoder.norm)

    def forward(self, z):
        f = self.proj(z.flatten(2).transpose(1, 2))  # (B, C, h, w) -> (B, L, D)
        for blk in self.blocks:
            f = blk(f)
        return self.norm(f)


def Norm(c):
    return nn.GroupNorm(math.gcd(32, c), c, eps=1e-6)  # 32 groups as LDM where c allows


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = Norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = Norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions (LDM), residual."""

    def __init__(self, c):
        super().__init__()
        self.norm = Norm(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(2, 3).unbind(1)  # (B, HW, C)
        h = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(h.transpose(1, 2).reshape(B, C, H, W))


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


@dataclass
class DecoderConfig:
    ch: int
    ch_mult: tuple
    num_res_blocks: int
    disc_ch: int        # PatchGAN width (LDM: 64)
    disc_layers: int    # PatchGAN depth (LDM: 3)


# Pixel-decoder sizes. paper = LDM's 16x16 -> 256 decoder (ch 128, ch_mult (1,1,2,2,4), 2 res
# blocks). world/cpu map the 8x8 latent to 64 px (three upsamplings); cpu keeps the widest maps
# narrow (16 channels at 64x64) because full-resolution convolutions dominate the CPU time.
DECODERS = {
    "tiny": DecoderConfig(ch=16, ch_mult=(1, 1, 2, 2), num_res_blocks=1, disc_ch=8, disc_layers=2),
    "cpu": DecoderConfig(ch=16, ch_mult=(1, 2, 4, 8), num_res_blocks=1, disc_ch=16, disc_layers=2),
    "world": DecoderConfig(ch=64, ch_mult=(1, 1, 2, 4), num_res_blocks=2, disc_ch=64, disc_layers=3),
    "paper": DecoderConfig(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, disc_ch=64, disc_layers=3),
}


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
        self.conv_out = nn.Conv2d(cin, 3, 3, padding=1)  # its weight is "the last layer" of L_p

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in self.up:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class ConvEncoder(nn.Module):
    """The pixel VAE's encoder (recipe vae, the MAR-VAE role in Table 4): PixelDecoder mirrored,
    strided convolutions down to the same stride as the patch grid. (B, 3, S, S) -> 2 x (B, C, h, w)."""

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


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Recipes: the latent spaces of Table 4 and their relatives. For each stage: the modules that
# learn, the loss terms, and whether L_p sees a detached latent (S-VAE, Sec 3.3). Stage 0 (the
# world encoder) is shared. "L_s" is against the frozen features, or a frozen copy of the encoder
# when the encoder itself learns (MSE + cos; plain MSE for RPiAE's pivot and bridge losses).
RECIPES = {
    "psvae": {1: ("E_s D_s pixel_decoder", "L_s kl L_p", True),      # S-VAE, then Sec 3.3 stage 2
              2: ("encoder E_s D_s pixel_decoder", "L_s kl L_p", False)},
    "svae": {1: ("E_s D_s pixel_decoder", "L_s kl L_p", True)},      # stage 1 only
    "pvae": {1: ("encoder E_s pixel_decoder", "kl L_p", False)},     # same networks, pixels only (no D_s)
    "vae": {1: ("conv_encoder pixel_decoder", "kl L_p", False)},     # convolutional KL-VAE from pixels
    "rae": {1: ("pixel_decoder", "L_p", False)},                      # frozen features are the latent
    # RPiAE: (I) encoder tuned for pixels with a pivot MSE to its frozen copy, decoder on features;
    # (II) variational bridge E_s/D_s on the frozen encoder, pixel L1 through the frozen decoder;
    # (III) the pixel decoder retrained on D_s's output, encoder and bridge frozen.
    "rpiae": {1: ("encoder pixel_decoder", "L_s L_p", False), 2: ("E_s D_s", "L_s kl L_p", False),
              3: ("pixel_decoder", "L_p", False)},
}
MODULES = ("encoder", "conv_encoder", "E_s", "D_s", "pixel_decoder")


def stage_plan(cfg, stage):
    """(trainable module names, loss terms, detach) of the recipe's stage; --rae-hd (Table 6)
    makes RAE's encoder learn too, held near its frozen copy by L_s."""
    train, losses, detach = RECIPES[cfg.get("recipe", "psvae")][stage]
    train, losses = set(train.split()), set(losses.split())
    if cfg.get("rae_hd"):
        train, losses = train | {"encoder"}, losses | {"L_s"}
    return train, losses, detach


class Tokenizer(nn.Module):
    """Representation encoder + E_s + D_s + pixel decoder. Images are (B, 3, S, S) in [-1, 1];
    the encoder sees them resized to encoder_size and ImageNet-normalised (as DINOv2 expects).
    The recipe decides which parts exist (RECIPES): rae has no E_s/D_s (the latent is the
    features), pvae no D_s, vae a ConvEncoder instead of the ViT (encoder=None). The pixel decoder
    reads the latent z, or D features (rae, rpiae, --pixel-from-ds: D_s's output, Table 5)."""

    def __init__(self, encoder, encoder_size, latent_channels, decoder_cfg, recipe="psvae", svae_arch="blocks3",
                 pixel_from_ds=False):
        super().__init__()
        self.encoder, self.recipe = encoder, recipe
        self.encoder_size = encoder_size
        stride = encoder.patch_size if encoder is not None else 2 ** (len(decoder_cfg.ch_mult) - 1)
        self.grid = (encoder_size // stride,) * 2
        depth = 0 if svae_arch == "mlp2" else 3
        has = lambda *r: recipe in r  # noqa: E731
        self.E_s = SemanticEncoder(encoder, latent_channels, depth) if has("psvae", "svae", "pvae", "rpiae") else None
        self.D_s = SemanticDecoder(encoder, latent_channels, depth) if has("psvae", "svae", "rpiae") else None
        self.conv_encoder = ConvEncoder(latent_channels, decoder_cfg) if has("vae") else None
        self.feat_in = has("rae", "rpiae") or pixel_from_ds  # the pixel decoder reads D-dim features
        self.latent_dim = encoder.embed_dim if has("rae") else latent_channels
        self.pixel_decoder = PixelDecoder(encoder.embed_dim if self.feat_in else latent_channels, decoder_cfg)
        self.encoder_ref = None  # stage 2: frozen copy of the original encoder, target of L_s
        self.bridge = True  # False in RPiAE stage I: no E_s/D_s yet, the features are the latent
        self.frozen, self.detach = [], True
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if encoder is not None:
            encoder.mask_token.requires_grad_(False)  # never used in training; DDP needs every trainable param used
            if recipe == "rae":
                encoder.norm.requires_grad_(False)  # RAE drops the final norm's affine: unused

    def configure(self, train, detach):
        """Freeze every module not named in `train`; frozen ones stay in eval mode (see train())."""
        self.frozen = [n for n in MODULES if getattr(self, n) is not None and n not in train]
        for n in self.frozen:
            getattr(self, n).requires_grad_(False)
        self.detach = detach
        return self.train()

    def train(self, mode=True):
        super().train(mode)
        for n in self.frozen if mode else ():
            getattr(self, n).eval()
        return self

    def add_reference(self):
        self.encoder_ref = copy.deepcopy(self.encoder).requires_grad_(False).eval()

    def features(self, x, encoder=None):
        """(B, 3, S, S) in [-1, 1] -> normalised patch tokens (B, L, D)."""
        if x.shape[-1] != self.encoder_size:  # e.g. paper: 256 px data -> 224 px encoder input
            x = F.interpolate(x, size=(self.encoder_size,) * 2, mode="bicubic", antialias=True, align_corners=False)
        x = ((x + 1) / 2 - self.mean) / self.std
        out = (encoder or self.encoder).forward_features(x)
        if self.recipe == "rae":  # RAE: final LayerNorm without its affine, cls/register tokens dropped
            f = out["x_prenorm"][:, 1 + self.encoder.num_register_tokens:]
            return F.layer_norm(f, f.shape[-1:], eps=1e-6)
        return out["x_norm_patchtokens"]

    def to_map(self, f):
        return f.transpose(1, 2).reshape(len(f), -1, *self.grid)  # (B, L, D) -> (B, D, h, w)

    def posterior(self, x, f):
        """(mean, logvar) of the latent, logvar None where the latent is deterministic features."""
        if self.conv_encoder is not None:
            return self.conv_encoder(x)
        if self.E_s is None or not self.bridge:
            return self.to_map(f), None
        return self.E_s(f, self.grid)

    def forward(self, x, eps, stage):
        """One training forward. eps: (B, latent_dim, h, w) noise: the reparameterisation noise,
        or for RAE the noise augmentation itself (already scaled by sigma)."""
        f = target = None
        if self.encoder is not None:
            if "encoder" in self.frozen:  # frozen encoder: its features are both the input and the L_s target
                with torch.no_grad():
                    target = f = self.features(x)
            else:
                f = self.features(x)
                with torch.no_grad():
                    target = self.features(x, self.encoder_ref) if self.encoder_ref is not None else None
        mean, logvar = self.posterior(x, f)
        z = mean + eps if self.recipe == "rae" else mean if logvar is None else mean + torch.exp(0.5 * logvar) * eps
        f_rec = self.D_s(z) if self.D_s is not None and self.bridge else f  # (B, L, D)
        h = self.to_map(f_rec) if self.feat_in and self.bridge and self.D_s is not None else z
        # S-VAE (stage 1): the pixel decoder learns from the detached latent, so L_p cannot change E_s
        x_rec = self.pixel_decoder(h.detach() if self.detach else h)
        return dict(target=target, f_rec=f_rec, mean=mean, logvar=logvar, x_rec=x_rec)

    @torch.no_grad()
    def encode(self, x):
        """images (B, 3, S, S) in [-1, 1] -> latent (B, C, h, w): the posterior mean (RAE: the
        features, (B, D, h, w), without noise)."""
        return self.posterior(x, self.features(x) if self.encoder is not None else None)[0]

    @torch.no_grad()
    def decode(self, z):
        """latent (B, C, h, w) -> images (B, 3, S_out, S_out) in [-1, 1]."""
        if self.feat_in and self.bridge and self.D_s is not None:
            z = self.to_map(self.D_s(z))
        return self.pixel_decoder(z).clamp(-1, 1)


class StageZero(nn.Module):
    """Stage 0: world encoder + linear heads. Per-patch maps (shape, colour, texture) are read from
    the patch tokens, scalars (count, background colour) from the cls token. Semantics only.
    targets='global' (--s0-targets) asks image-level questions only, all from the cls token:
    count, background colour, and which shapes / colours / textures occur (multi-label), so no
    loss ever looks at a patch token (DINOv2's DINO loss is on the cls token too)."""

    MAPS = ("shape", "colour", "texture")

    def __init__(self, encoder, classes, targets="maps"):
        super().__init__()
        self.encoder = encoder
        encoder.mask_token.requires_grad_(False)
        D = encoder.embed_dim
        # the heads that ask "which classes occur": one logit per non-background class
        self.occurs = set(self.MAPS) if targets == "global" else set()
        self.heads = nn.ModuleDict({k: nn.Linear(D, n - (k in self.occurs)) for k, n in sorted(classes.items())})

    def forward(self, x):
        x = ((x + 1) / 2 - torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)) \
            / torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        out = self.encoder.forward_features(x)
        B, L, D = out["x_norm_patchtokens"].shape
        g = int(math.isqrt(L))
        logits = {}
        for k, head in self.heads.items():
            if k not in self.MAPS or k in self.occurs:
                logits[k] = head(out["x_norm_clstoken"])  # (B, n), or (B, n - 1) occurrence logits
            else:  # (B, L, n) -> (B, n, g, g), the layout cross_entropy wants
                logits[k] = head(out["x_norm_patchtokens"]).transpose(1, 2).reshape(B, -1, g, g)
        return logits

    def losses(self, logits, targets):
        """Cross-entropy per head; for global targets binary cross-entropy of the occurrences,
        which are read off the patch maps (a class occurs if it covers a cell)."""
        terms = {}
        for k, lg in logits.items():
            y = targets[k].to(lg.device)
            if k in self.occurs:
                terms[f"bce_{k}"] = F.binary_cross_entropy_with_logits(lg.float(), occurrences(y, lg.shape[1]))
            else:
                terms[f"ce_{k}"] = F.cross_entropy(lg.float(), y)
        return terms

    def hits(self, logits, targets):
        """Per head: (right answers, questions). A global map head is right on an image when the
        whole set of classes it names is right."""
        out = {}
        for k, lg in logits.items():
            y = targets[k].to(lg.device)
            if k in self.occurs:
                ok = ((lg > 0).float() == occurrences(y, lg.shape[1])).all(1)
            else:
                ok = lg.argmax(1) == y
            out[k] = (ok.sum().item(), ok.numel())
        return out


def occurrences(maps, n):
    """(B, g, g) class maps (0 = background) -> (B, n) float: 1 where class 1..n covers a cell."""
    return F.one_hot(maps.flatten(1), n + 1)[..., 1:].amax(1).float()


# ------------------------------------------------------------------------------------------
# 11. Losses (Sec 4.1): L_s on features, KL on the latent, L_p on pixels (LDM)
# ------------------------------------------------------------------------------------------

def semantic_loss(f_rec, f):
    """L_s = MSE + (1 - cosine similarity), per token, averaged. (B, L, D) each."""
    return F.mse_loss(f_rec, f) + (1 - F.cosine_similarity(f_rec, f, dim=-1)).mean()


def kl_loss(mean, logvar):
    """KL(N(mean, var) || N(0, I)) as in LDM, averaged over latent elements (LDM sums them; the
    average keeps --kl-weight independent of the latent size)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / LDM NLayerDiscriminator) with GroupNorm instead of BatchNorm: per-rank
    BatchNorm statistics would make a 2-process run differ from a 1-process one."""

    def __init__(self, ch=64, n_layers=3):
        super().__init__()
        layers = [nn.Conv2d(3, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = ch
        for n in range(1, n_layers + 1):
            cout = ch * min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(c, cout, 4, stride, 1, bias=False), Norm(cout), nn.LeakyReLU(0.2)]
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
    """LDM's GAN weight: ||dL_rec/dW|| / ||dL_gan/dW|| at the decoder's last layer W. Under DDP the
    gradients are averaged over ranks first, so the weight is that of the global batch."""
    g_rec = all_mean(torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0])
    g_gan = all_mean(torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0])
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, max_weight).detach()


_LPIPS_WARNED = []


def make_lpips(device):
    """The lpips package's AlexNet LPIPS, or None (with one warning) when its backbone weights
    cannot be loaded (torchvision downloads them; offline machines have no copy)."""
    try:
        import lpips
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = lpips.LPIPS(net="alex", verbose=False)
        return net.to(device).eval().requires_grad_(False)
    except Exception as e:
        if not _LPIPS_WARNED and is_rank0():
            warnings.warn(f"LPIPS skipped: its AlexNet weights could not be loaded ({type(e).__name__}); "
                          f"L_p uses L1 + GAN only", stacklevel=2)
        _LPIPS_WARNED.append(1)
        return None


def psnr(x, y):
    """Per-image PSNR in dB of images in [-1, 1] (peak = 1 after mapping to [0, 1]). -> (B,)"""
    mse = ((x.clamp(-1, 1) - y.clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


# ------------------------------------------------------------------------------------------
# 12. Presets, model building, checkpoints
# ------------------------------------------------------------------------------------------

# A preset is a dict of argparse defaults; any flag overrides it. `steps` is per stage (0, 1, 2).
PRESETS = {
    # tests: seconds on CPU
    "tiny": dict(encoder="world-tiny", decoder="tiny", image_size=32, encoder_size=32, latent_channels=4,
                 batch_size=4, lr=1e-3, steps=(6, 6, 6), n_train=64, n_val=4, log_every=1, ckpt_every=3,
                 disc_start=4),
    # the laptop demo: the three stages in well under 20 minutes on 2 CPU cores
    # (one thread per process is fastest on a busy 2-core machine: OMP_NUM_THREADS=1). The GAN
    # needs longer runs than this demo affords, so it stays off here (the tests switch it on).
    "cpu": dict(encoder="world-cpu", decoder="cpu", image_size=64, encoder_size=64, latent_channels=24,
                batch_size=32, lr=5e-4, steps=(300, 450, 300), n_train=20000, n_val=64, log_every=25,
                ckpt_every=150, disc_start=10**9),
    # the miniature paper on one GPU
    "world": dict(encoder="world", decoder="world", image_size=64, encoder_size=64, latent_channels=24,
                  batch_size=128, lr=2e-4, steps=(20000, 40000, 20000), n_train=200000, n_val=512,
                  log_every=100, ckpt_every=2000, disc_start=20000),
    # the paper's sizes (Sec 4.1): DINOv2-B/14, 224 px in, 256 px out, 16x16x96 latent, batch 96, lr 1e-4.
    # The paper says "DINOv2-B" without naming the variant; --encoder dinov2_vitb14_reg also works
    # (RAE's own runs use the register variant: pass it for --recipe rae as its authors ran it).
    "paper": dict(encoder="dinov2_vitb14", decoder="paper", image_size=256, encoder_size=224,
                  latent_channels=96, batch_size=96, lr=1e-4, steps=(0, 200000, 100000), n_train=0,
                  n_val=256, log_every=100, ckpt_every=5000, disc_start=50000),
}
# config keys that fix tensor shapes: a checkpoint must agree on them
SHAPE_KEYS = ("encoder", "encoder_size", "image_size", "latent_channels", "decoder", "recipe", "svae_arch",
              "pixel_from_ds")
# what a checkpoint written before --recipe existed was (a PS-VAE / S-VAE one)
RECIPE_DEFAULTS = dict(recipe="psvae", svae_arch="blocks3", pixel_from_ds=False, rae_hd=False)


def build_tokenizer(cfg, encoder=None, stage=None):
    """A Tokenizer with fresh weights from a config dict (argparse vars or a checkpoint's); the
    recipe and its variant flags come from the config, so a checkpoint needs no flags."""
    c = {**RECIPE_DEFAULTS, **cfg}
    vae = c["recipe"] == "vae"  # no ViT: the conv encoder sees the images at their own size
    enc = None if vae else encoder or build_encoder(c["encoder"])
    model = Tokenizer(enc, c["image_size"] if vae else c["encoder_size"], c["latent_channels"], DECODERS[c["decoder"]],
                      c["recipe"], c["svae_arch"], c["pixel_from_ds"])
    model.bridge = not (c["recipe"] == "rpiae" and stage == 1)
    return model


def param_counts(model, disc=None):
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    counts = {k: n(getattr(model, k)) for k in MODULES if getattr(model, k) is not None}
    if disc is not None:
        counts["discriminator"] = n(disc)
    return counts


def check_config(cfg):
    """Shape and recipe rules, each broken one as a sentence."""
    r, stage = cfg["recipe"], cfg["stage"]
    if stage and stage not in RECIPES[r]:
        raise TokenizerError(f"--recipe {r} trains in stage(s) {', '.join(map(str, RECIPES[r]))}, not --stage {stage}")
    for flag, ok, on in (("--svae-arch mlp2", ("psvae", "svae"), cfg["svae_arch"] == "mlp2"),
                         ("--pixel-from-ds", ("psvae", "svae"), cfg["pixel_from_ds"]),
                         ("--rae-hd", ("rae",), cfg["rae_hd"])):
        if on and r not in ok:
            raise TokenizerError(f"{flag} is a variant of --recipe {' / '.join(ok)}, not of --recipe {r}")
    enc = ENCODERS[cfg["encoder"]]
    if cfg["encoder_size"] % enc.patch_size:
        raise TokenizerError(f"--encoder-size {cfg['encoder_size']} is not a multiple of the patch size {enc.patch_size}")
    grid = cfg["encoder_size"] // enc.patch_size
    up = 2 ** (len(DECODERS[cfg["decoder"]].ch_mult) - 1)
    if grid * up != cfg["image_size"]:
        raise TokenizerError(f"decoder '{cfg['decoder']}' turns the {grid}x{grid} latent into {grid * up} px "
                             f"images but --image-size is {cfg['image_size']}; pick matching sizes")


def rng_state():
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    np.random.set_state((s["numpy"][0], np.array(s["numpy"][1], dtype=np.uint32), *s["numpy"][2:]))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in s["python"]))
    if torch.cuda.is_available() and s["cuda"]:
        torch.cuda.set_rng_state_all(s["cuda"])


def save_checkpoint(path, ckpt):
    """Rank 0 writes to a temporary file and renames it (atomic); then everyone waits."""
    if is_rank0():
        tmp = path + ".tmp"
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    barrier()


def load_checkpoint(path, what="checkpoint"):
    """Read a tokenizer.py checkpoint on CPU, or say in one sentence why it cannot be used."""
    if not os.path.isfile(path):
        raise TokenizerError(f"the {what} {path} does not exist")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TokenizerError(f"cannot read {path} ({type(e).__name__}): it is not a PyTorch checkpoint or it is damaged")
    if not isinstance(ck, dict) or ck.get("script") != SCRIPT:
        who = ck.get("script", "an unknown program") if isinstance(ck, dict) else "an unknown program"
        raise TokenizerError(f"{path} was written by {who}, not {SCRIPT}; pass a checkpoint written by {SCRIPT}")
    return ck


def check_shapes(ck, cfg, path, keys=SHAPE_KEYS):
    for k in keys:
        if ck["config"].get(k, RECIPE_DEFAULTS.get(k)) != cfg[k]:
            flag = "--" + k.replace("_", "-")
            raise TokenizerError(f"{path} has {k}={ck['config'].get(k)!r} but this run asks for {cfg[k]!r}; "
                                 f"pass {flag} {ck['config'].get(k)} or use a new --out")


def load_tokenizer(path, device="cpu"):
    """A trained tokenizer (eval mode) from a stage-1/2/3 checkpoint of any recipe (recorded in the
    checkpoint); works on CPU for GPU-trained ones."""
    ck = load_checkpoint(path)
    if ck["stage"] not in (1, 2, 3):
        raise TokenizerError(f"{path} is a stage-{ck['stage']} checkpoint; load_tokenizer needs stage 1, 2 or 3")
    model = build_tokenizer(ck["config"], stage=ck["stage"])
    model.load_state_dict(ck["model"])
    return model.to(device).eval()


def encode(model, images):
    """images (B, 3, S, S) in [-1, 1] -> latent (B, C, h, w)."""
    return model.encode(images)


def decode(model, latent):
    """latent (B, C, h, w) -> images (B, 3, S, S) in [-1, 1]."""
    return model.decode(latent)


# ------------------------------------------------------------------------------------------
# 13. Data: the world by default, an image folder with --data; an exact, resumable order
# ------------------------------------------------------------------------------------------

class Indexed(Dataset):
    """Yields (index, item): the index seeds each sample's latent noise (see latent_noise)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return i, self.ds[i]


def make_datasets(cfg, stage):
    """(train, val) datasets. Stage 0 needs the world's semantic labels on the encoder's patch grid."""
    grid = cfg["encoder_size"] // ENCODERS[cfg["encoder"]].patch_size
    if cfg["data"]:
        if stage == 0:
            raise TokenizerError("stage 0 learns the world's scene labels and cannot run on --data; "
                                 "use a pre-trained --encoder for real images")
        if not os.path.isdir(cfg["data"]):
            raise TokenizerError(f"--data {cfg['data']} is not a folder; give an image folder in ImageNet layout")
        try:
            train = ImageFolderDataset(cfg["data"], cfg["image_size"])
        except Exception as e:
            raise TokenizerError(f"cannot use --data {cfg['data']}: {e}")
        # real data has no held-out split here: the first n_val images double as a preview set
        return train, Subset(train, range(min(cfg["n_val"], len(train))))
    if stage == 0:  # the world encoder sees the scene at its own input size
        return (WorldImages("train", cfg["n_train"], cfg["encoder_size"], grid=grid),
                WorldImages("val", cfg["n_val"], cfg["encoder_size"], grid=grid))
    return (WorldImages("train", cfg["n_train"], cfg["image_size"]),
            WorldImages("val", cfg["n_val"], cfg["image_size"]))


def batches(ds, local_bs, rank, world, seed, epoch, pos, workers):
    """Endless batches. Each epoch is a DistributedSampler permutation (set_epoch), rank r taking
    every world-th index, so the union of the ranks' batches at a step is the same global batch
    for any number of processes. Yields ((epoch, position after this batch), batch)."""
    while True:
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        idx = list(sampler)
        n = len(idx) // local_bs
        if pos < n:  # on resume: skip the batches already seen in this epoch
            loader = DataLoader(Subset(Indexed(ds), idx[pos * local_bs:n * local_bs]), batch_size=local_bs,
                                num_workers=workers)
            for b in loader:
                pos += 1
                yield (epoch, pos), b
        epoch, pos = epoch + 1, 0


def unpack(batch):
    """(index, image) or (index, (image, targets/label)) -> (index, image, targets or None)."""
    idx, item = batch
    if isinstance(item, (list, tuple)):
        return idx, item[0], item[1]
    return idx, item, None


def latent_noise(idx, shape, seed, stage, step):
    """Reparameterisation noise drawn per sample from (seed, stage, step, data index): the same
    sample gets the same noise whether it is processed by 1 process or by rank 1 of 2."""
    g = torch.Generator()
    return torch.stack([torch.randn(shape, generator=g.manual_seed(hash((seed, stage, step, int(i))) % 2**63))
                        for i in idx])


def photometric_views(x, idx, seed, step, strength):
    """Stage 0's optional invariances (--s0-augment S), in the spirit of DINOv2's colour jitter and
    blur but label-preserving in this world: per image a brightness shift and a contrast scale of up
    to S/2, a Gaussian blur of up to 2 S px (sigma) and pixel noise of std up to S/2. Trained on such
    views the encoder learns to ignore exact intensities, edges and noise: the pixel detail that
    DINOv2's features lack and a decoder needs. x: (B, 3, H, W) in [-1, 1]; seeded per sample and
    step like latent_noise, so resume and 2 processes see the same views. The blur kernel has 7 taps,
    enough for S up to about 1."""
    B, _, H, W = x.shape
    u = torch.special.ndtr(latent_noise(idx, (4,), seed, 200, step)).to(x.device)  # (B, 4) in (0, 1)
    shift, scale = (u[:, 0] * 2 - 1) * strength / 2, 1 + (u[:, 1] * 2 - 1) * strength / 2
    sigma = (u[:, 2] * 2 * strength).clamp(min=1e-3)
    r = torch.arange(-3, 4, device=x.device, dtype=x.dtype)
    k = torch.exp(-r[None] ** 2 / (2 * sigma[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(3, 0)  # (B * 3, 7): one separable kernel per channel
    y = F.pad(x.reshape(1, B * 3, H, W), (3, 3, 3, 3), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=B * 3)  # along width
    y = F.conv2d(y, k[:, None, :, None], groups=B * 3).reshape(B, 3, H, W)  # along height
    mean = y.mean((1, 2, 3), keepdim=True)
    y = (y - mean) * scale.view(B, 1, 1, 1) + mean + shift.view(B, 1, 1, 1)
    y = y + latent_noise(idx, (3, H, W), seed, 201, step).to(x.device) * (u[:, 3] * strength / 2).view(B, 1, 1, 1)
    return y.clamp(-1, 1)


# ------------------------------------------------------------------------------------------
# 14. Evaluation and figures (rank 0, at each checkpoint)
# ------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model, val, stage, device, bs):
    model.eval()
    loader = DataLoader(val, batch_size=bs)
    if stage == 0:  # linear-probe accuracy of the stage-0 heads, per attribute
        hits, tot = {}, {}
        for x, t in loader:
            for k, (h, n) in model.hits(model(x.to(device)), t).items():
                hits[k], tot[k] = hits.get(k, 0) + h, tot.get(k, 0) + n
        model.train()
        return {f"val_acc_{k}": hits[k] / tot[k] for k in hits}, None
    ps, cos, first = [], [], None
    for item in loader:
        x = (item[0] if isinstance(item, (list, tuple)) else item).to(device)
        z = model.encode(x)
        x_rec = model.decode(z)
        ps.append(psnr(x_rec, x))
        if model.D_s is not None and model.bridge:
            # semantic preservation: D_s(E_s) features against the reference encoder: the original,
            # frozen one for S-VAE / PS-VAE; for RPiAE stages II-III the stage-I encoder itself
            f0 = model.features(x, model.encoder_ref)
            cos.append(F.cosine_similarity(model.D_s(z), f0, dim=-1).mean(1))
        if first is None:
            first = (x[:8].cpu(), x_rec[:8].cpu())
    model.train()  # frozen parts stay in eval mode (Tokenizer.train)
    ev = {"val_psnr": torch.cat(ps).mean().item()}
    if cos:
        ev["val_feature_cos"] = torch.cat(cos).mean().item()
    return ev, first


def save_recon_grid(path, x, x_rec, title):
    """Top row: inputs; bottom row: reconstructions. PNG via matplotlib (no display needed)."""
    from matplotlib.figure import Figure
    n, S = x.shape[0], x.shape[-1]
    x = F.interpolate(x, size=x_rec.shape[-2:], mode="nearest") if x.shape[-1] != x_rec.shape[-1] else x
    S = x_rec.shape[-1]
    imgs = torch.stack([x, x_rec]).clamp(-1, 1).add(1).div(2)  # (2, n, 3, S, S)
    grid = imgs.permute(0, 3, 1, 4, 2).reshape(2 * S, n * S, 3).numpy()
    fig = Figure(figsize=(1.3 * n, 3.0))
    ax = fig.add_subplot()
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")


# ------------------------------------------------------------------------------------------
# 15. The loop: stages 0 / 1 / 2
# ------------------------------------------------------------------------------------------

def init_encoder(cfg):
    """The representation encoder with its weights: the official DINOv2 checkpoint, or the world
    encoder from stage 0 (--encoder-ckpt or <out>/stage0.pt). 'random' keeps random weights."""
    name, path = cfg["encoder"], cfg["encoder_ckpt"]
    enc = build_encoder(name)
    if path == "random":
        print0(f"warning: {name} keeps random weights (--encoder-ckpt random): only for smoke tests and measurements")
        return enc
    if name in DINOV2_URLS:
        sd = load_dinov2_state_dict(name, path)
    else:
        path = path or os.path.join(cfg["out"], "stage0.pt")
        if not os.path.isfile(path):
            raise TokenizerError(f"the world encoder checkpoint {path} does not exist; run --stage 0 with the same "
                                 f"--out first or pass --encoder-ckpt PATH")
        ck = load_checkpoint(path, "stage-0 checkpoint")
        if ck["stage"] != 0:
            raise TokenizerError(f"{path} is a stage-{ck['stage']} checkpoint; --encoder-ckpt needs a stage-0 one")
        check_shapes(ck, cfg, path, keys=("encoder",))
        sd = ck["encoder"]
    try:
        enc.load_state_dict(sd)
    except RuntimeError as e:
        raise TokenizerError(f"the weights in {path or 'the hub cache'} do not fit --encoder {name} "
                             f"({str(e).splitlines()[0]}); pick the matching --encoder")
    return enc


def append_metrics(out, rec):
    if is_rank0():
        with open(os.path.join(out, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")


def truncate_metrics(out, stage, step):
    """On resume, drop records this stage wrote after the checkpoint (they will be written again)."""
    path = os.path.join(out, "metrics.jsonl")
    if not is_rank0() or not os.path.isfile(path):
        return
    with open(path) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    keep = [r for r in recs if not (r.get("stage") == stage and r.get("step", 0) > step)]
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in keep)
    os.replace(path + ".tmp", path)


def run_stage(cfg, ddp, rank, local_rank, world, device):
    stage, out = cfg["stage"], cfg["out"]
    check_config(cfg)
    if stage == 0 and cfg["encoder"] in DINOV2_URLS:
        raise TokenizerError(f"stage 0 pre-trains a world encoder; {cfg['encoder']} is already pre-trained, go to --stage 1")
    if cfg["batch_size"] % world:
        raise TokenizerError(f"--batch-size {cfg['batch_size']} (global) does not split over {world} processes")
    B = cfg["batch_size"] // world
    if is_rank0():
        os.makedirs(out, exist_ok=True)
    barrier()
    ckpt_path = os.path.join(out, f"stage{stage}.pt")
    ck = None
    if cfg["resume"]:
        ck = load_checkpoint(ckpt_path, "checkpoint to resume")
        if ck["stage"] != stage:
            raise TokenizerError(f"{ckpt_path} holds stage {ck['stage']}, not stage {stage}")
        check_shapes(ck, cfg, ckpt_path)
        if stage == 0 and ck["config"].get("s0_targets", "maps") != cfg["s0_targets"]:
            raise TokenizerError(f"{ckpt_path} was trained with --s0-targets {ck['config'].get('s0_targets', 'maps')}; "
                                 f"its heads do not answer --s0-targets {cfg['s0_targets']}: give the run its own --out")
        changed = {k: (ck["config"].get(k), v) for k, v in cfg.items()
                   if k not in ("resume", "steps") and ck["config"].get(k) != v}
        if changed:
            print0("resuming with changed settings: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
    elif stage and os.path.isfile(ckpt_path):  # never overwrite another recipe's checkpoint
        old = load_checkpoint(ckpt_path)["config"].get("recipe", "psvae")
        if old != cfg["recipe"]:
            raise TokenizerError(f"{ckpt_path} holds a --recipe {old} checkpoint; give this --recipe {cfg['recipe']} "
                                 f"run its own --out")

    # ---- model: the same initial weights on every rank (DDP also broadcasts rank 0's)
    torch.manual_seed(cfg["seed"])
    disc = None
    if stage == 0:
        model = StageZero(build_encoder(cfg["encoder"]), TARGET_CLASSES, cfg["s0_targets"])
    else:
        dcfg = DECODERS[cfg["decoder"]]
        disc = PatchDiscriminator(dcfg.disc_ch, dcfg.disc_layers)
        if cfg["recipe"] == "vae":  # no representation encoder at all
            enc = None
        elif ck is not None or stage >= 2:  # weights come from a checkpoint below
            enc = build_encoder(cfg["encoder"])
        else:
            enc = init_encoder(cfg)
        model = build_tokenizer(cfg, enc, stage)
        prev = stage - 1
        if stage >= 2 and ck is None and cfg["init"] != "random":
            init = cfg["init"] or os.path.join(out, f"stage{prev}.pt")
            if not os.path.isfile(init):
                raise TokenizerError(f"stage {stage} starts from a stage-{prev} checkpoint but {init} does not exist; "
                                     f"run --stage {prev} with the same --out first, or pass --init PATH")
            ck1 = load_checkpoint(init, f"stage-{prev} checkpoint")
            if ck1["stage"] != prev:
                raise TokenizerError(f"--init {init} is a stage-{ck1['stage']} checkpoint; stage {stage} starts "
                                     f"from stage {prev}")
            check_shapes(ck1, cfg, init)
            model.load_state_dict(ck1["model"])
            disc.load_state_dict(ck1["disc"])
        elif stage >= 2 and ck is None:
            print0(f"warning: stage {stage} from random weights (--init random): only for smoke tests and measurements")
    if ck is not None:
        model.load_state_dict(ck["model"])
        if disc is not None:
            disc.load_state_dict(ck["disc"])
    if stage:
        train_set, losses, detach = stage_plan(cfg, stage)
        model.configure(train_set, detach)  # frozen parts: no grads (DDP skips them), eval mode
        if "encoder" in train_set and "L_s" in losses:
            model.add_reference()  # frozen copy of the original encoder: the target of L_s
            if ck is not None:
                model.encoder_ref.load_state_dict(ck["encoder_ref"])
    model.to(device)
    counts = param_counts(model, disc) if stage else {"encoder": sum(p.numel() for p in model.encoder.parameters())}
    print0(f"stage {stage} | {world} process(es) on {device} | parameters " +
           ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()))

    params = [p for p in model.parameters() if p.requires_grad]
    betas = (cfg["beta1"], cfg["beta2"])
    opt = torch.optim.AdamW(params, lr=cfg["lr"], betas=betas, weight_decay=0.0)
    opt_d = None
    if disc is not None:
        disc.to(device)
        opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg["lr"], betas=betas, weight_decay=0.0)
    if ck is not None:
        opt.load_state_dict(ck["opt"])
        if opt_d is not None:
            opt_d.load_state_dict(ck["opt_d"])
    ids = [local_rank] if device.type == "cuda" else None
    model_ddp = DDP(model, device_ids=ids) if ddp else model
    disc_ddp = DDP(disc, device_ids=ids) if ddp and disc is not None else disc
    fwd = model_ddp
    if cfg["compile"]:
        # the GAN's adaptive weight back-propagates twice through the graph (retain_graph=True),
        # which compiled backward functions allow only without donated buffers
        torch._functorch.config.donated_buffer = False
        fwd = torch.compile(model_ddp)
    lp = None
    if stage > 0 and cfg["lpips_weight"] > 0 and cfg["pixel_weight"] > 0:
        lp = make_lpips(device) if cfg["image_size"] >= 64 else None  # AlexNet needs >= 64 px

    # ---- data and loop state
    if not cfg["data"] and not cfg["n_train"]:
        raise TokenizerError(f"the {cfg['preset']} preset trains on real images: pass --data PATH "
                             f"(ImageNet layout), or --n-train N for world scenes")
    train, val = make_datasets(cfg, stage)
    if len(train) // world < B:
        raise TokenizerError(f"the training set has {len(train)} images, fewer than one batch of {cfg['batch_size']}")
    step, (epoch, pos) = (ck["step"], ck["data"]) if ck is not None else (0, (0, 0))
    seed_everything(cfg["seed"], rank, world)
    if ck is not None and len(ck["rng"]) == world:
        set_rng_state(ck["rng"][rank])
    data = batches(train, B, rank, world, cfg["seed"], epoch, pos, cfg["workers"])
    if ck is not None:
        truncate_metrics(out, stage, step)
    if is_rank0():  # config.json: one entry per stage
        cpath = os.path.join(out, "config.json")
        allc = json.load(open(cpath)) if os.path.isfile(cpath) else {}
        allc[f"stage{stage}"] = cfg
        with open(cpath + ".tmp", "w") as f:
            json.dump(allc, f, indent=1, default=str)
        os.replace(cpath + ".tmp", cpath)
    last_good = ckpt_path if os.path.isfile(ckpt_path) else None
    steps, amp = cfg["steps"], device.type == "cuda"
    grid = model.grid if stage else None
    C = model.latent_dim if stage else None
    pbar = tqdm(total=steps, initial=step, disable=not (is_rank0() and sys.stderr.isatty()), desc=f"stage {stage}")
    t_last, seen, summary = time.time(), 0, {}
    time_up = Deadline(cfg["time_limit"], device)

    while step < steps:
        (epoch, pos), batch = next(data)
        idx, x, targets = unpack(batch)
        x = x.to(device, non_blocking=True)
        gan = stage > 0 and step >= cfg["disc_start"] and "pixel_decoder" in train_set
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            if stage == 0:
                # semantics only: cross-entropy of linear heads, never a pixel loss
                if cfg["s0_augment"]:
                    x = photometric_views(x, idx, cfg["seed"], step, cfg["s0_augment"])
                logits = fwd(x)
                terms = model.losses(logits, targets)
                loss = sum(terms.values())
            else:
                eps = latent_noise(idx, (C, *grid), cfg["seed"], stage, step).to(device)
                if cfg["recipe"] == "rae":  # RAE's noise augmentation: sigma = tau * U(0, 1) per image
                    u = torch.special.ndtr(latent_noise(idx, (1, 1, 1), cfg["seed"], 100 + stage, step))
                    eps = eps * cfg["rae_noise"] * u.to(device)
                o = fwd(x, eps, stage)
                x_rec = o["x_rec"].float()
                terms = {}
                if "L_s" in losses:  # RPiAE's pivot / bridge losses are plain feature MSE
                    L_fn = F.mse_loss if cfg["recipe"] == "rpiae" else semantic_loss
                    terms["L_s"] = L_fn(o["f_rec"].float(), o["target"].float())
                if "kl" in losses:
                    terms["kl"] = kl_loss(o["mean"].float(), o["logvar"].float())
                rec = (x_rec - x).abs().mean()  # L1
                if lp is not None:
                    rec = rec + cfg["lpips_weight"] * lp(x_rec, x).mean()
                terms["rec"] = rec
                L_p = rec
                if gan:  # hinge PatchGAN, generator side; the discriminator gets no gradient here
                    disc.requires_grad_(False)
                    g_loss = -disc(x_rec).mean()
                    w_gan = cfg["disc_weight"] * adaptive_weight(rec, g_loss, model.pixel_decoder.conv_out.weight)
                    disc.requires_grad_(True)
                    L_p = rec + w_gan * g_loss
                    terms.update(g=g_loss, w_gan=w_gan)
                terms["L_p"] = L_p
                # L_p is LDM's loss without its learned scalar log-variance (NLL = rec / e^s + s): at
                # its optimum e^s = rec that divides the pixel gradient by rec, a weight that keeps
                # growing as reconstruction improves; left out so that the fixed L_s : L_p ratio
                # below is the ratio that acts. P-VAE and VAE have no L_s: for them only the
                # KL : L_p ratio matters (Adam ignores the loss's scale, the clip aside), the same as PS-VAE's.
                # Sec 4.1: L = 1 * L_s + 0.1 * L_p (+ KL). Sec 4.4 instead speaks of a semantic:pixel
                # ratio of 0.1:1 (DINOv2) and 0.05:1 (SigLIP2); the paper contradicts itself, so both
                # weights are flags and the defaults follow Sec 4.1.
                loss = cfg["semantic_weight"] * terms.get("L_s", 0.0) + cfg["kl_weight"] * terms.get("kl", 0.0) \
                    + cfg["pixel_weight"] * L_p
        terms["loss"] = loss
        logged = all_mean(torch.stack([v.detach().float() for v in terms.values()]))
        if not torch.isfinite(logged).all():
            raise TokenizerError(f"the loss became {logged[-1].item()} at step {step + 1}; the run stops and keeps the "
                                 f"last good checkpoint ({last_good or 'none written yet'}); lower --lr or check the data")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
        opt.step()
        if gan:  # discriminator step on real and (detached) reconstructed images, one forward
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                lg = disc_ddp(torch.cat([x, x_rec.detach()])).float()
                d_loss = hinge_d_loss(lg[:len(x)], lg[len(x):])
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            logged = torch.cat([logged, all_mean(d_loss.detach().float()).view(1)])
        step += 1
        seen += cfg["batch_size"]
        pbar.update(1)
        stop = time_up()
        if stop:
            print0(f"stage {stage}: --time-limit {cfg['time_limit']} min reached at step {step}/{steps}; " +
                   ("--resume continues" if cfg["ckpt_every"] else "no checkpoint written (--ckpt-every 0)"))
        names = list(terms) + (["d_loss"] if gan else [])
        if step % cfg["log_every"] == 0 or step == steps or stop:
            dt = time.time() - t_last
            rec = {"stage": stage, "step": step, **{k: round(v, 6) for k, v in zip(names, logged.tolist())},
                   "img_per_s": round(seen / dt, 2)}
            if device.type == "cuda":
                rec["mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            else:  # peak resident memory of this process (Linux reports KiB)
                rec["mem_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
            append_metrics(out, rec)
            if is_rank0():
                pbar.write(f"stage {stage} step {step}/{steps} | " +
                           " ".join(f"{k} {v:.4f}" for k, v in zip(names, logged.tolist())) +
                           f" | {rec['img_per_s']:.1f} img/s | mem {rec['mem_gib']} GiB")
            summary = rec
            t_last, seen = time.time(), 0
        if cfg["ckpt_every"] and (step % cfg["ckpt_every"] == 0 or step == steps or stop):
            if is_rank0():
                ev, first = evaluate(model, val, stage, device, B)
                append_metrics(out, {"stage": stage, "step": step, **{k: round(v, 5) for k, v in ev.items()}})
                print0(f"stage {stage} step {step} eval | " + " ".join(f"{k} {v:.4f}" for k, v in ev.items()))
                if first is not None:
                    save_recon_grid(os.path.join(out, f"recon_stage{stage}_step{step:06d}.png"), *first,
                                    f"stage {stage}, step {step}: inputs (top), reconstructions (bottom), "
                                    f"val PSNR {ev['val_psnr']:.2f} dB")
                summary = {**summary, **ev}
            rng = [None] * world
            if ddp:
                dist.all_gather_object(rng, rng_state())
            else:
                rng = [rng_state()]
            sd = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder_ref.")}
            ckpt = dict(script=SCRIPT, stage=stage, step=step, config=cfg, model=sd, opt=opt.state_dict(),
                        data=(epoch, pos), rng=rng, world_size=world)
            if stage == 0:
                ckpt["encoder"] = model.encoder.state_dict()
            else:
                ckpt.update(disc=disc.state_dict(), opt_d=opt_d.state_dict())
            if stage and model.encoder_ref is not None:
                ckpt["encoder_ref"] = model.encoder_ref.state_dict()
            save_checkpoint(ckpt_path, ckpt)
            last_good = ckpt_path
            t_last = time.time()
        if stop:
            break
    pbar.close()
    return summary


# ------------------------------------------------------------------------------------------
# 16. Command line
# ------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description="PS-VAE tokenizer: stage 0 (world encoder), 1 (S-VAE), 2 (PS-VAE)")
    g = p.add_argument_group("run")
    g.add_argument("--stage", type=int, choices=(0, 1, 2, 3), required=True, help="0: pre-train the world encoder "
                   "on semantics; 1: S-VAE with the encoder frozen; 2: PS-VAE, everything trained "
                   "(other recipes: see RECIPES; rpiae has stages 1-3)")
    g.add_argument("--preset", choices=list(PRESETS), default="cpu", help="a dict of defaults; flags override it")
    g.add_argument("--out", default=None, help="run folder for all stages (default runs/tokenizer-<preset>)")
    g.add_argument("--resume", action="store_true", help="continue exactly from <out>/stage<N>.pt")
    g.add_argument("--init", default=None, help="stage 2: the stage-1 checkpoint to start from "
                   "(default <out>/stage1.pt; 'random' for smoke tests and measurements)")
    g.add_argument("--device", default=None, choices=("cpu", "cuda", "mps"), help="default: cuda if available")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--seed", type=int, default=0, help="base seed; rank r draws with seed * world_size + r")
    g = p.add_argument_group("model")
    g.add_argument("--encoder", choices=list(ENCODERS), help="representation encoder")
    g.add_argument("--encoder-ckpt", default=None, help="DINOv2: the official .pth (default: hub cache / download); "
                   "world: a stage-0 checkpoint (default <out>/stage0.pt); 'random': no weights")
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
    g.add_argument("--rae-hd", action="store_true", help="Table 6: RAE whose encoder learns too, L_s against "
                   "its frozen copy")
    g.add_argument("--rae-noise", type=float, default=0.8, help="RAE noise augmentation: sigma = tau * U(0, 1), tau")
    g.add_argument("--s0-augment", type=float, default=0.0, help="stage 0: train on label-preserving photometric "
                   "views of strength S (brightness, contrast, blur, noise; 0 = none), a DINOv2-like invariance")
    g.add_argument("--s0-targets", choices=("maps", "global"), default="maps", help="stage 0's questions: per-patch "
                   "shape / colour / texture maps plus count and background (maps), or image-level ones only, from "
                   "the cls token (global: count, background, which shapes / colours / textures occur)")
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
    g.add_argument("--beta1", type=float, default=0.5, help="AdamW beta1 (LDM autoencoders: 0.5)")
    g.add_argument("--beta2", type=float, default=0.9, help="AdamW beta2 (LDM autoencoders: 0.9)")
    g.add_argument("--grad-clip", type=float, default=0.0, help="gradient-norm clip, 0 = off")
    g = p.add_argument_group("losses (Sec 4.1)")
    g.add_argument("--semantic-weight", type=float, default=1.0, help="weight of L_s (Sec 4.1: 1)")
    g.add_argument("--pixel-weight", type=float, default=0.1, help="weight of L_p (Sec 4.1: 0.1; Sec 4.4 differs)")
    g.add_argument("--kl-weight", type=float, default=1e-3, help="weight of the per-element KL (not in the paper)")
    g.add_argument("--lpips-weight", type=float, default=1.0, help="LPIPS inside L_p (skipped if unavailable)")
    g.add_argument("--disc-weight", type=float, default=0.5, help="PatchGAN weight times the adaptive weight (LDM 0.5)")
    g.add_argument("--disc-start", type=int, help="step from which the GAN term is on")
    g = p.add_argument_group("logging")
    g.add_argument("--log-every", type=int, help="steps between log lines / metrics.jsonl records")
    g.add_argument("--ckpt-every", type=int, help="steps between checkpoints (+ eval and recon grid); "
                   "the last step always gets one; 0 = none at all (measurements)")
    pre, _ = p.parse_known_args(argv)
    p.set_defaults(**PRESETS[pre.preset] if pre.preset else {})
    args = p.parse_args(argv)
    if isinstance(args.steps, (tuple, list)):  # the preset's per-stage default
        args.steps = args.steps[min(args.stage, 2)]  # rpiae's stage 3 takes stage 2's budget
    if args.out is None:
        name = f"tokenizer-{args.preset}" + ("" if args.recipe == "psvae" else f"-{args.recipe}")
        args.out = os.path.join("runs", name)
    return vars(args)


def main(argv=None):
    cfg = parse_args(argv)
    ddp, rank, local_rank, world, device = compute_init(cfg["device"])
    try:
        return run_stage(cfg, ddp, rank, local_rank, world, device)
    except TokenizerError as e:
        raise SystemExit(f"tokenizer.py: error: {e}" if rank == 0 else 1)
    finally:
        compute_cleanup()


if __name__ == "__main__":
    main()
