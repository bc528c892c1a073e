"""
world.py -- the miniature world that replaces ImageNet here, and its judge.

Nothing in this project can download ImageNet, DINOv2, Inception or a VLM, so the data is a
procedurally rendered world built for the paper's question: *semantics* (which objects, colours,
textures, counts, positions) against *pixel detail* (texture phase, angle and period, background
lines and gradient, anti-aliased edges, sub-pixel position; `resample_detail` redraws it). A
semantic encoder should keep the first and may drop the second; a pixel decoder needs both (the
premise of PS-VAE, Sec. 1 and 3). Every scene is a pure function of an integer seed, so datasets
are infinite, reproducible and need no files. Coordinates are normalised (x right, y down, both
in [0, 1]), so one scene renders the same at any size from 32 to 256 px. Read top to bottom:

  1. the vocabulary (shapes, colours, textures, sizes, backgrounds, tones, styles)
  2. scenes: `sample_scene(seed)`
  3. rendering: `render(scene, size)`, vectorised numpy with analytic anti-aliasing
  4. semantics: `semantic_targets` (stage 0's labels) and `describe`
  5. captions, one family per GenEval category, each with a machine-checkable spec
  6. edit pairs, one family per GEdit category (source, instruction, target)
  7. datasets: world images / captions / edits; real data (image folder, caption folder, JSONL)
  8. the scene detector: pixels -> scene description, exact on clean renders
  9. the judge: `check_caption`, `check_edit` and the comparisons they use
  10. the mini-GenEval and mini-GEdit suites and their scorers (run by evaluate.py)
"""
import dataclasses
import itertools
import json
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from scipy import ndimage as ndi

# ----------------------------------------------------------------------------------------------
# 1. The vocabulary of the world. Object colours are saturated and >= 44 degrees apart in hue;
# background colours are neutral (no chroma), so "is this pixel an object?" is a chroma test and
# "which colour?" a hue test: this is what lets the detector (section 8) be exact.

SHAPES = ["circle", "square", "triangle", "diamond"]
COLOURS = {  # name -> RGB (hue in degrees: 0, 52, 128, 183, 227, 284)
    "red": (215, 45, 45), "yellow": (230, 200, 40), "green": (40, 180, 60),
    "cyan": (40, 190, 200), "blue": (50, 90, 225), "purple": (165, 60, 205)}
TEXTURES = ["solid", "striped", "dotted"]
# half-extent of the object's box, as a fraction of the image side; the gap between the two
# ranges lets the detector name the size. Small objects are >= 7 px wide even at 32 px.
SIZES = {"small": (0.11, 0.135), "large": (0.17, 0.21)}
BG_COLOURS = {"white": 220, "grey": 132, "black": 40}  # grey level
# a background's lines (its texture): their sign (dark on white and grey) and where on their
# profile (0 = between lines, 3/8 = its mean) the level sits; with the gradient (<= 18) and a
# tone cast (<= 16) no channel clips, so a background stays exactly neutral + cast
BG_LINES = {"white": (-1.0, 0.0), "grey": (-1.0, 0.375), "black": (1.0, 0.0)}
TONES = {"neutral": (0, 0, 0), "warm": (16, 4, -16), "cool": (-14, 0, 16)}  # global RGB shift
SPLITS = {"train": 0, "val": 1, "test": 2}  # held-out splits use disjoint seeds

# stripes darken the object colour, dots lighten it (towards white): the sign of the variation
# names the texture, which stays readable on a 7-px object at 32 px and under noise
TEXTURE_DEPTH = 0.42  # striped: colour * (1 - depth * pattern)
DOT_LIGHT = 0.5  # dotted: colour + (255 - colour) * light * pattern
OUTLINE_WIDTH = 0.04  # of the image side (>= 1.3 px at 32 px)
GAP = 0.06  # minimum empty space between two objects' boxes (outlines never touch)
MARGIN = 0.05  # objects (and outlines) keep off the border: the 1-px frame is pure background

# class counts for `semantic_targets` (class 0 = background for the per-patch maps)
TARGET_CLASSES = {"shape": 1 + len(SHAPES), "colour": 1 + len(COLOURS),
                  "texture": 1 + len(TEXTURES), "count": 4, "bg_colour": len(BG_COLOURS)}

# ----------------------------------------------------------------------------------------------
# 2. Scenes. Every continuous parameter is pixel detail except position and size.


@dataclass(frozen=True)
class WorldObject:
    shape: str
    colour: str
    texture: str
    size: str  # "small" | "large"
    x: float  # centre, normalised
    y: float
    half: float  # half-extent of the box (the shape fits in [x-half, x+half] x [y-half, y+half])
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
    bg_tex_angle: float = 0.0  # the background's lines (background_grating)
    bg_tex_period: float = 0.1
    bg_tex_phase: float = 0.0
    bg_tex_contrast: float = 0.0  # grey levels; 0 = no lines


# Pixel detail, drawn uniformly from these ranges in order: per object, per background (then a
# noise seed), and the background's lines (period >= 2.5 px at 32 px, contrast in grey levels)
# from a stream of their own, so that adding them left every scene's semantics as it was.
OBJECT_DETAIL = {"tex_angle": (0, math.pi), "tex_period": (0.10, 0.14), "tex_phase": (0, math.tau)}
GRADIENT_DETAIL = {"bg_angle": (0, math.tau), "bg_amp": (6, 18)}
LINE_DETAIL = {"bg_tex_angle": (0, math.pi), "bg_tex_period": (0.08, 0.16),
               "bg_tex_phase": (0, math.tau), "bg_tex_contrast": (65.0, 95.0)}


def draw_detail(rng, ranges):
    """One uniform draw per detail variable named in `ranges`, in its order."""
    return {name: float(rng.uniform(*r)) for name, r in ranges.items()}


def scene_seed(split, index):
    """The seed of item `index` of a split: disjoint across splits, so train and val never meet."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(SPLITS)}")
    return index * len(SPLITS) + SPLITS[split]


def place(rng, size, taken, tries=200):
    """Rejection-sample a centre for a box of the given size name (None if the scene is full):
    the first of `tries` candidates at least GAP from every taken box (x, y, half) along x or y."""
    a = rng.uniform(*SIZES[size], size=tries)  # half-extents
    x, y = rng.uniform(a + MARGIN, 1 - a - MARGIN, size=(2, tries))
    free = np.ones(tries, bool)
    for tx, ty, ta in taken:
        free &= (np.abs(x - tx) > a + ta + GAP) | (np.abs(y - ty) > a + ta + GAP)
    k = int(np.argmax(free))
    return (float(x[k]), float(y[k]), float(a[k])) if free[k] else None


def random_object(rng, taken):
    """A new object with random attributes, placed in free space (None if there is none)."""
    size = ("small", "large")[rng.integers(2)]
    spot = place(rng, size, taken) or (place(rng, "small", taken) if size == "large" else None)
    if spot is None:
        return None
    x, y, a = spot
    if a < SIZES["large"][0]:
        size = "small"
    return WorldObject(
        shape=SHAPES[rng.integers(len(SHAPES))], colour=list(COLOURS)[rng.integers(len(COLOURS))],
        texture=TEXTURES[rng.integers(len(TEXTURES))], size=size, x=x, y=y, half=a,
        **draw_detail(rng, OBJECT_DETAIL))


def sample_scene(seed, n_objects=None):
    """Scene as a pure function of `seed` (and optionally a fixed object count, 1..4)."""
    rng = np.random.default_rng([int(seed), 7])
    n = int(n_objects or rng.integers(1, 5))
    objects = []
    for _ in range(n):
        o = random_object(rng, [(o.x, o.y, o.half) for o in objects])
        if o is not None:  # a crowded scene keeps fewer objects rather than overlapping them
            objects.append(o)
    return Scene(
        objects=tuple(objects), bg_colour=list(BG_COLOURS)[rng.integers(len(BG_COLOURS))],
        **draw_detail(rng, GRADIENT_DETAIL), noise_seed=int(rng.integers(2**31)),
        tone=("neutral", "neutral", "warm", "cool")[rng.integers(4)],
        style=("flat", "flat", "flat", "outlined")[rng.integers(4)],
        **draw_detail(np.random.default_rng([int(seed), 8]), LINE_DETAIL))


def resample_detail(scene, rng, jitter=0.01):
    """The same scene (all that describe, captions and edits read) with new detail from rng; the
    centres move by up to `jitter` (0.64 px at 64 px) if one of 20 draws keeps the layout."""
    objects = tuple(dataclasses.replace(o, **draw_detail(rng, OBJECT_DETAIL))
                    for o in scene.objects)
    for _ in range(20 if jitter else 0):
        shift = rng.uniform(-jitter, jitter, size=(len(objects), 2))
        moved = tuple(dataclasses.replace(o, x=o.x + dx, y=o.y + dy)
                      for o, (dx, dy) in zip(objects, shift))
        if layout_kept(objects, moved):
            objects = moved
            break
    return dataclasses.replace(scene, objects=objects, **draw_detail(rng, GRADIENT_DETAIL),
                               noise_seed=int(rng.integers(2**31)), **draw_detail(rng, LINE_DETAIL))


def layout_kept(old, new):
    """Do the moved objects `new` keep MARGIN, GAP and, per pair, what captions and the judge read:
    the dominant axis (make_caption), the signs, the offsets past REL_MARGIN (relation_holds)?"""
    def where(a, b):
        dx, dy = a.x - b.x, a.y - b.y
        return [abs(dx) >= abs(dy)] + [d > m for d in (dx, -dx, dy, -dy) for m in (0, REL_MARGIN)]
    if any(min(o.x, o.y) - o.half < MARGIN or max(o.x, o.y) + o.half > 1 - MARGIN for o in new):
        return False
    pairs = zip(itertools.combinations(old, 2), itertools.combinations(new, 2))
    return all(max(abs(p.x - q.x), abs(p.y - q.y)) > p.half + q.half + GAP and
               where(a, b) == where(p, q) for (a, b), (p, q) in pairs)


# ----------------------------------------------------------------------------------------------
# 3. Rendering. Each shape is a signed distance d (negative inside, in normalised units);
# coverage = clip(0.5 - d * size, 0, 1) is the analytic anti-aliasing of a 1-px wide edge.
# Work happens only inside each object's window, so a 64 px scene costs well under a millisecond.


def box_sdf(qx, qy, a):
    """Exact signed distance to a square of half-side a, given |dx| and |dy|."""
    ex, ey = qx - a, qy - a
    return np.sqrt(np.maximum(ex, 0) ** 2 + np.maximum(ey, 0) ** 2) + \
        np.minimum(np.maximum(ex, ey), 0)


def shape_sdf(shape, dx, dy, a):
    """Exact signed distance (negative inside) to a shape of half-extent a at dx = dy = 0, outside
    too: an outline of width w stays within w of the box (a mitred corner would reach 2.2 w)."""
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - a
    if shape == "square":
        return box_sdf(np.abs(dx), np.abs(dy), a)
    if shape == "diamond":  # a square turned by 45 degrees
        r = 1 / math.sqrt(2)
        return box_sdf(np.abs(dx + dy) * r, np.abs(dx - dy) * r, a * r)
    if shape == "triangle":  # apex (0, -a), base from (-a, a) to (a, a); centroid sits a/3 low
        px, qy = np.abs(dx), dy + a  # fold onto the right half, origin at the apex
        t = np.clip((px * a + qy * 2 * a) / (5 * a * a), 0, 1)  # projection on the side (a, 2h)
        side = np.sqrt((px - t * a) ** 2 + (qy - t * 2 * a) ** 2)
        base = np.sqrt((px - np.minimum(px, a)) ** 2 + (dy - a) ** 2)
        inside = (2 * px - qy < 0) & (dy < a)
        return np.where(inside, -np.minimum(side, base), np.minimum(side, base))
    raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")


def texture_pattern(o, dx, dy):
    """Texture strength p in [0, 1] per pixel (None if solid); smooth: it never aliases at 32 px."""
    if o.texture == "solid":
        return None
    if o.shape == "triangle":
        dy = dy - o.half / 3  # centre the pattern on the triangle's centroid, not its box
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
    # background: neutral grey level + a linear gradient + faint noise + lines (pixel detail)
    gx = (coords - 0.5) * (2 * scene.bg_amp * math.cos(scene.bg_angle))
    gy = (coords - 0.5) * (2 * scene.bg_amp * math.sin(scene.bg_angle))
    noise = np.random.default_rng(scene.noise_seed).standard_normal((size, size), np.float32)
    grey = BG_COLOURS[scene.bg_colour] + gy[:, None] + gx[None, :] + 2.0 * noise + \
        background_grating(scene, coords)
    img = np.repeat(grey[:, :, None], 3, axis=2)  # (H, W, 3) float32
    ring = OUTLINE_WIDTH if scene.style == "outlined" else 0.0
    outline = 245.0 if scene.bg_colour == "black" else 15.0  # contrasts with the background
    for o in scene.objects:
        # window of pixels that can be touched by this object (+ its outline and the AA band)
        r = o.half + ring + 2 * px
        i0, i1 = max(0, int((o.y - r) * size)), min(size, int((o.y + r) * size) + 1)
        j0, j1 = max(0, int((o.x - r) * size)), min(size, int((o.x + r) * size) + 1)
        dy = (coords[i0:i1] - o.y)[:, None]  # (h, 1)
        dx = (coords[j0:j1] - o.x)[None, :]  # (1, w)
        d = shape_sdf(o.shape, dx, dy, o.half)  # (h, w)
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


def background_grating(scene, coords):
    """The background's lines (H, W) in grey levels at pixel centres `coords` (W,), signed and
    placed by BG_LINES: ((1 + cos u) / 2)^2 = 3/8 + cos(u) / 2 + cos(2u) / 8, each harmonic averaged
    over the pixel's square (exactly: two sincs damp it), so it never aliases at any size."""
    c, s = math.cos(scene.bg_tex_angle), math.sin(scene.bg_tex_angle)
    k = 2 * math.pi / scene.bg_tex_period  # radians per unit length
    # e^{iu}, u = k (x c + y s) + phase: the outer product of a y factor and an x factor
    wave = np.exp(1j * (k * s * coords + scene.bg_tex_phase))[:, None] * np.exp(1j * k * c * coords)
    side = float(coords[1] - coords[0]) / scene.bg_tex_period  # the pixel's side in periods
    sinc = lambda t: math.sin(math.pi * t) / (math.pi * t) if t else 1.0  # noqa: E731
    d1, d2 = (sinc(m * side * c) * sinc(m * side * s) for m in (1, 2))  # harmonic m's damping
    profile = 3 / 8 + d1 / 2 * wave.real + d2 / 8 * (wave * wave).real  # (H, W) in [0, 1]
    sign, level_at = BG_LINES[scene.bg_colour]
    return sign * scene.bg_tex_contrast * (profile - level_at)


def object_masks(scene, size, supersample=1):
    """Boolean (n_objects, size, size) masks of each object's coverage > 0.5 (for tests and
    semantic targets); `supersample` evaluates that many points per pixel side."""
    n = size * supersample
    coords = (np.arange(n, dtype=np.float32) + 0.5) / n
    masks = np.zeros((len(scene.objects), n, n), bool)
    for k, o in enumerate(scene.objects):
        masks[k] = shape_sdf(o.shape, coords[None, :] - o.x, coords[:, None] - o.y, o.half) < 0
    return masks


# ----------------------------------------------------------------------------------------------
# 4. Semantics: the labels stage 0 pre-trains the world encoder on (never pixels: it plays
# DINOv2's role), and the description captions, edits and the detector speak of.


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
    """The semantic description of a scene in detect's format: what captions and edits speak of."""
    return {
        "bg_colour": scene.bg_colour, "tone": scene.tone, "style": scene.style,
        "objects": [{"shape": o.shape, "colour": o.colour, "texture": o.texture, "size": o.size,
                     "x": o.x, "y": o.y, "box": (o.x - o.half, o.y - o.half, o.x + o.half, o.y + o.half)}
                    for o in scene.objects]}


def no_detail_bound(n_scenes, size, k=16, split="val"):
    """What semantics and positions alone can reconstruct: the PSNR (dB) against the render of the
    mean of k renders with the detail redrawn (resample_detail, centres kept), the best guess of
    one who knows all but the detail; mean, spread, min and max over n_scenes of `split`."""
    psnrs = []
    for i in range(n_scenes):
        scene = sample_scene(scene_seed(split, i))
        rng = np.random.default_rng([i, 9])
        guess = np.mean([render(resample_detail(scene, rng, jitter=0), size) for _ in range(k)], 0)
        mse = np.mean(((render(scene, size) - guess) / 255.0) ** 2)
        psnrs.append(10 * math.log10(1.0 / max(mse, 1e-10)))
    return {"n_scenes": n_scenes, "size": size, "k": k, "split": split,
            "psnr_mean": float(np.mean(psnrs)), "psnr_std": float(np.std(psnrs)),
            "psnr_min": min(psnrs), "psnr_max": max(psnrs)}


# ----------------------------------------------------------------------------------------------
# 5. Captions, one family per GenEval category (Sec. 4.1 evaluates T2I with GenEval). Each
# caption comes with a spec that check_caption tests against the detector's output:
#   spec = {"category", "n_objects": exact total or None, "bg_colour": name or None,
#           "objects": [{"count": exact number, attribute: value, ...}],
#           "relation": None or [i, "left of" | "right of" | "above" | "below", j]}

CAPTION_CATEGORIES = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
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
                   "an image with a {o0} and a {o1}"]}
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
# The target is the source scene with exactly the instructed change and the same detail; an
# added object goes into free space.
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
                      "neutral": ["remove the colour cast", "make the tone neutral"]}}


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
            taken = [(p.x, p.y, p.half) for p in objs]
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
# 7. Datasets. Images are float (3, H, W) in [-1, 1] inside the models. World datasets are
# map-style (so DistributedSampler works) and item i is a pure function of (split, i); the
# real-data readers (image folder, caption folder, edit JSONL) follow them.


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


# ----------------------------------------------------------------------------------------------
# 8. The scene detector reads a scene description back from pixels with nothing pretrained; it
# judges mini-GenEval and mini-GEdit. The world lets it be exact: backgrounds are neutral, object
# colours saturated and far apart in hue, objects never touch and keep off the border. So:
#   1. the 1-px border frame is pure background: it gives the tone (colour cast), the noise level
#      and the gradient; the mean grey away from all colour gives the background colour;
#   2. "object" = a pixel with chroma after removing the cast; connected components = objects;
#   3. colour = nearest palette hue of the component's mean colour;
#   4. shape and size = the ideal shape (from the component's area and centroid) that fits best;
#   5. texture = how the pixel brightness varies along the object colour inside the object;
#   6. style = whether the ring just outside each object is pushed away from the background.

FG_CHROMA = 30.0  # chroma (max - min of RGB, cast removed) above which a pixel may be an object
MIN_AREA = 0.006  # components smaller than this fraction of the image are noise specks
LARGE_H = 0.152  # half-extent threshold between "small" and "large" (SIZES)
TEXTURE_MIN = 0.12  # brightness variation inside an object above which it is textured
OUTLINE_PUSH = 50.0  # grey levels by which an outline ring departs from the background
DENOISE_SIGMA = 0.6  # px; Gaussian blur for noisy images (a 7-px object at 32 px survives it)


def opponent(rgb):
    """(..., 3) -> (..., 2) opponent colour axes whose angle is the hue."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.stack([r - 0.5 * (g + b), (math.sqrt(3) / 2) * (g - b)], -1)


PALETTE = np.asarray(list(COLOURS.values()), np.float32)  # (6, 3)
PALETTE_HUE = np.arctan2(*opponent(PALETTE)[:, ::-1].T)  # (6,)
TONE_CAST = {t: np.asarray(v, np.float32) for t, v in TONES.items()}
BG_MEAN = {c: BG_COLOURS[c] + sign * np.mean(LINE_DETAIL["bg_tex_contrast"]) * (3 / 8 - at)
           for c, (sign, at) in BG_LINES.items()}  # each background's mean grey, lines and all


def as_uint8(image):
    """Accept uint8 (H, W, 3) or a float tensor/array (3, H, W) in [-1, 1]."""
    image = image if isinstance(image, torch.Tensor) else np.asarray(image)
    return image if image.dtype == np.uint8 else to_uint8(torch.as_tensor(image))


def denoise(a):
    """The blur applied to noisy images (and to the ideal shapes compared with them)."""
    sigma = (DENOISE_SIGMA, DENOISE_SIGMA, 0)[:a.ndim]  # (H, W) or (H, W, 3): not across RGB
    return ndi.gaussian_filter(a, sigma, mode="nearest", truncate=2.0)


def frame(a):
    """The 1-px border of an (H, W, ...) array, as (4H - 4, ...)."""
    return np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])


def fit_shape(alpha, oy, ox, size, blurred=False):
    """(shape, x, y, a) that best fits a soft coverage map `alpha` (a window from pixel (oy, ox)):
    each shape takes its centre and size from alpha's area and centroid and is scored by how far
    its own anti-aliased coverage (blurred like the image, if it was) is from alpha."""
    gy = (np.arange(alpha.shape[0]) + oy + 0.5)[:, None] / size
    gx = (np.arange(alpha.shape[1]) + ox + 0.5)[None, :] / size
    area = alpha.sum() / size**2
    cx, cy = (alpha * gx).sum() / alpha.sum(), (alpha * gy).sum() / alpha.sum()
    best = None
    # area of each shape as a multiple of a^2, and its centroid's offset below the box centre
    for shape, k, drop in (("circle", math.pi, 0), ("square", 4, 0), ("diamond", 2, 0),
                           ("triangle", 2, 1 / 3)):
        a = math.sqrt(area / k)
        y0 = cy - drop * a
        ideal = np.clip(0.5 - shape_sdf(shape, gx - cx, gy - y0, a) * size, 0, 1)
        if blurred:
            ideal = denoise(ideal)
        err = np.abs(ideal - alpha).sum()
        if best is None or err < best[0]:
            best = (err, shape, cx, y0, a)
    return best[1:]


def read_background(img):
    """Step 1, mostly from the border frame of a float (H, W, 3) image. Returns the image with the
    colour cast removed (and blurred if it is noisy), the tone and background names, the
    background level as a plane fitted to the frame (H, W), and whether it was blurred."""
    size = img.shape[0]
    # each frame pixel's channels about their mean: the cast of a neutral grey (its gradient and
    # lines cancel) plus noise, whose level their spread about the cast gives
    spread = frame(img) - frame(img).mean(1, keepdims=True)  # (4H - 4, 3)
    cast = np.median(spread, 0)
    noise = np.median(np.abs(spread - cast)) * 1.4826 / math.sqrt(2 / 3)  # std of one channel
    blurred = noise > 5  # the world's own faint noise is neutral: it does not show here
    img = denoise(img) if blurred else img
    tone = min(TONE_CAST, key=lambda t: np.abs(TONE_CAST[t] - TONE_CAST[t].mean() - cast).sum())
    img = img - TONE_CAST[tone]
    # background colour: the mean grey away from the objects (the frame, and every pixel farther
    # than an outline from colour) against each background's mean with its texture (BG_MEAN)
    grey = img.mean(2)
    colour = img.max(2) - img.min(2) > FG_CHROMA
    reach = math.ceil(OUTLINE_WIDTH * size + 1)
    far = ~ndi.binary_dilation(colour, np.ones((3, 3), bool), iterations=reach)
    level = np.concatenate([frame(grey), grey[far]]).mean()
    bg = min(BG_COLOURS, key=lambda c: abs(BG_MEAN[c] - level))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    A = np.stack([np.ones_like(frame(xx)), frame(xx), frame(yy)], 1)  # plane a + b x + c y
    plane = np.linalg.lstsq(A, frame(grey), rcond=None)[0]
    return img, tone, bg, plane[0] + plane[1] * xx + plane[2] * yy, blurred


def read_object(pix, c, own, free, origin, size, blurred):
    """Steps 3-5 for one component: pix (h, w, 3) and chroma c (h, w) of a window starting at
    pixel `origin`, `own` its pixels, `free` the background ones. Returns the object's
    description and its coverage mask (for the style test)."""
    # 3. colour: hue of the mean opponent colour over the component
    a, b = opponent(pix[own]).mean(0)
    ci = int(np.argmin(np.abs(np.angle(np.exp(1j * (PALETTE_HUE - math.atan2(b, a)))))))
    ref = PALETTE[ci]
    # 4. soft coverage = chroma relative to the object's chroma nearby (background and outlines
    # have none; "nearby" follows the darker stripes), 1 well inside; then the best ideal shape
    mask = own & (c > 0.5 * np.median(c[own]))  # ~ coverage > 0.5
    inner = ndi.binary_erosion(mask, iterations=2 if blurred else 1)
    near = own | (free & ndi.binary_dilation(own))  # the object and the 1-px ring around it
    if inner.any():  # the shade's chroma at each pixel = that of the nearest inner pixel
        iy, ix = ndi.distance_transform_edt(~inner, return_distances=False, return_indices=True)
        local = c[iy, ix]
    else:
        local = np.full_like(c, ref.max() - ref.min())
    alpha = np.where(inner, 1.0, np.clip(c / local, 0, 1) * near)
    shape, x, y, a = fit_shape(alpha, origin[0], origin[1], size, blurred)
    # 5. texture from the pixels at least 0.7 px (1.2 px after the blur) inside the fitted shape
    # (coverage is exactly 1 from 0.5 px in)
    gy = (np.arange(pix.shape[0]) + origin[0] + 0.5)[:, None] / size
    gx = (np.arange(pix.shape[1]) + origin[1] + 0.5)[None, :] / size
    depth = -shape_sdf(shape, gx - x, gy - y, a) * size  # px inside the edge
    inside = depth > (1.2 if blurred else 0.7)
    if np.count_nonzero(inside) < 4:
        inside = depth > 0.5
    obj = {"shape": shape, "colour": list(COLOURS)[ci],
           "texture": classify_texture(pix[inside], ref),
           "size": "large" if a > LARGE_H else "small", "x": x, "y": y,
           "box": (x - a, y - a, x + a, y + a)}
    return obj, mask, alpha, ref


def detect(image):
    """Scene description from pixels: {'bg_colour', 'tone', 'style', 'objects': [{'shape',
    'colour', 'texture', 'size', 'x', 'y', 'box'}]}, the format of describe.
    `image`: uint8 (H, W, 3), or float (3, H, W) in [-1, 1]; square, any size from 32 px."""
    img = as_uint8(image).astype(np.float32)
    size = img.shape[0]
    if img.ndim != 3 or img.shape[1] != size or img.shape[2] != 3:
        raise ValueError(f"detect needs a square RGB image, got shape {img.shape}; "
                         "pass (H, H, 3) uint8 or (3, H, H) float")
    img, tone, bg, bg_level, blurred = read_background(img)  # 1.
    # 2. objects = connected chromatic components (8-connected: thin triangle tips stay attached)
    chroma = img.max(2) - img.min(2)
    labels, _ = ndi.label(chroma > FG_CHROMA, structure=np.ones((3, 3)))
    objects, push = [], []
    for k, sl in enumerate(ndi.find_objects(labels), 1):
        if np.count_nonzero(labels[sl] == k) < MIN_AREA * size**2:
            continue  # a noise speck
        # grow the window by 3 px so the ring outside the object is inside it
        sl = tuple(slice(max(0, s.start - 3), min(size, s.stop + 3)) for s in sl)
        own, free = labels[sl] == k, labels[sl] == 0
        obj, mask, alpha, ref = read_object(img[sl], chroma[sl], own, free,
                                            (sl[0].start, sl[1].start), size, blurred)
        objects.append(obj)
        # 6. style evidence: the ring within 2 px outside the object, its share (alpha) taken out,
        # pushed away from the background (outlines are dark on white and grey, light on black)
        ring = ndi.binary_dilation(mask, iterations=2) & ~mask & (own | free) & (alpha < 0.7)
        al = alpha[ring]
        rest = (img[sl][ring].mean(1) - al * ref.mean()) / (1 - al)  # the neutral remainder
        push.append((rest - bg_level[sl][ring]) * (1 if bg == "black" else -1))
    push = np.concatenate(push) if push else np.zeros(0)
    style = "outlined" if push.size and np.median(push) > OUTLINE_PUSH else "flat"
    return {"bg_colour": bg, "tone": tone, "style": style, "objects": objects}


def classify_texture(pix, ref):
    """Solid / striped / dotted from the (n, 3) pixels inside an object of palette colour ref.
    Stripes only darken (pixel = ref * (1 - D p)), dots only lighten towards white (pixel =
    ref + L p (255 - ref)): project each pixel's departure from ref on those two directions."""
    dark = (ref - pix) @ ref / (ref @ ref)  # = D p on stripes, <= 0 on dots
    w = 255.0 - ref
    light = (pix - ref) @ w / (w @ w)  # = L p on dots, <= 0 on stripes
    if len(pix) == 0:  # nothing well inside (a speck of an object): call it plain
        return "solid"
    top = max(1, len(pix) // 5)  # mean of the strongest fifth: robust to noise, yet a few
    lo, hi = np.sort(dark)[-top:].mean(), np.sort(light)[-top:].mean()  # dots are enough
    if max(lo, hi) < TEXTURE_MIN:
        return "solid"
    return "striped" if lo > hi else "dotted"


# ----------------------------------------------------------------------------------------------
# 9. The judge: comparing scene descriptions (detector accuracy), and checking a description
# against a caption's or an edit's spec. Objects are matched by box centre within POS_TOL.

POS_TOL = 0.05  # normalised distance under which two object centres are "the same place"
REL_MARGIN = 0.05  # "A left of B" needs A's centre at least this far left of B's
ATTRS = ("shape", "colour", "texture", "size")
RELATION_AXES = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}


def match_objects(pred, true, tol=POS_TOL):
    """Greedy nearest-centre matching; returns [(i_pred, i_true)] for pairs closer than tol."""
    pairs = sorted((math.hypot(p["x"] - t["x"], p["y"] - t["y"]), i, j)
                   for i, p in enumerate(pred) for j, t in enumerate(true))
    used_p, used_t, out = set(), set(), []
    for dist, i, j in pairs:
        if dist < tol and i not in used_p and j not in used_t:
            used_p.add(i), used_t.add(j), out.append((i, j))
    return out


def same_object(a, b):
    return all(a[k] == b[k] for k in ATTRS)


def same_scene(pred, true, tol=POS_TOL):
    """Whole-scene agreement: background colour, tone, style, and every object (same place,
    same shape, colour, texture and size), with nothing extra."""
    if any(pred[k] != true[k] for k in ("bg_colour", "tone", "style")):
        return False
    if len(pred["objects"]) != len(true["objects"]):
        return False
    pairs = match_objects(pred["objects"], true["objects"], tol)
    return len(pairs) == len(true["objects"]) and \
        all(same_object(pred["objects"][i], true["objects"][j]) for i, j in pairs)


def object_counts(pred, true, tol=POS_TOL):
    """(true positives, n predicted, n true) for object-level precision / recall / F1."""
    tp = sum(same_object(pred["objects"][i], true["objects"][j])
             for i, j in match_objects(pred["objects"], true["objects"], tol))
    return tp, len(pred["objects"]), len(true["objects"])


def fits(obj, req):
    """Does a described object have every attribute the requirement names?"""
    return all(obj[k] == v for k, v in req.items() if k != "count")


def check_caption(desc, spec):
    """Does a scene description satisfy a caption's spec (make_caption)? GenEval style: exact
    counts per named object, the total and background colour where given, the relation."""
    objs = desc["objects"]
    if spec.get("n_objects") is not None and len(objs) != spec["n_objects"]:
        return False
    if spec.get("bg_colour") is not None and desc["bg_colour"] != spec["bg_colour"]:
        return False
    # identical requirements add up ("a square and a square" = two squares); each requirement's
    # count is exact, and the named objects must be different objects (a matching)
    reqs = {}
    for req in spec["objects"]:
        key = tuple(sorted((k, v) for k, v in req.items() if k != "count"))
        reqs[key] = reqs.get(key, 0) + req["count"]
    if any(sum(fits(o, dict(key)) for o in objs) != n for key, n in reqs.items()):
        return False
    slots = [dict(key) for key, n in reqs.items() for _ in range(n)]
    if not any(all(fits(o, r) for o, r in zip(perm, slots))
               for perm in itertools.permutations(objs, len(slots))):
        return False
    if spec.get("relation"):
        i, rel, j = spec["relation"]
        return relation_holds(objs, rel, spec["objects"][i], spec["objects"][j])
    return True


def relation_holds(objs, rel, req_a, req_b):
    """Is some object that fits req_a `rel` ("left of", ...) some other object that fits req_b,
    by the centres along the relation's axis, by more than REL_MARGIN?"""
    axis, sign = RELATION_AXES[rel]
    key = "xy"[axis]
    return any(a is not b and sign * (a[key] - b[key]) > REL_MARGIN
               for a in objs if fits(a, req_a) for b in objs if fits(b, req_b))


def check_caption_geneval_rules(desc, spec):
    """The spec judged by GenEval's own rules: only the attribute the category is about counts.
    Each named object must be there at least `count` times, by shape, plus its colour in 'colors'
    and 'color_attr'; 'counting' is exact; 'position' needs the relation. Texture, size, background
    and other objects are not checked (GenEval's COCO prompts name none); where GenEval checks the
    colour of the most confident detections, any object of the shape counts (no confidences)."""
    objs, cat = desc["objects"], spec["category"]
    wants = [{k: v for k, v in req.items() if k == "shape" or (k == "colour" and cat in ("colors", "color_attr"))}
             for req in spec["objects"]]
    need = {}
    for want, req in zip(wants, spec["objects"]):  # two named squares need two squares
        key = tuple(sorted(want.items()))
        need[key] = need.get(key, 0) + req["count"]
    for key, n in need.items():
        found = sum(fits(o, dict(key)) for o in objs)
        if found < n or (cat == "counting" and found > n):
            return False
    if spec.get("relation"):
        i, rel, j = spec["relation"]
        return relation_holds(objs, rel, wants[i], wants[j])
    return True


def check_edit(src, out, spec, tol=POS_TOL):
    """Does the edited image's description `out` equal the source description `src` changed
    exactly as the edit spec says (make_edit), and in nothing else?"""
    expected = {k: src[k] for k in ("bg_colour", "tone", "style")}
    objs = [dict(o) for o in src["objects"]]
    change, ref = spec["change"], spec["ref"]
    if ref is not None:  # the named object must exist, once, in the source
        hits = [k for k, o in enumerate(objs) if fits(o, ref)]
        if len(hits) != 1:
            return False
        if spec["category"] == "subject-remove":
            objs.pop(hits[0])
        else:
            objs[hits[0]].update(change)
    elif spec["category"] != "subject-add":
        expected.update(change)  # background, tone or style
    if any(out[k] != v for k, v in expected.items()):
        return False
    # every expected object must be in its place, unchanged; what is left over must be exactly
    # the added object (anywhere) for subject-add, and nothing otherwise
    pairs = match_objects(out["objects"], objs, tol)
    if len(pairs) != len(objs) or not all(same_object(out["objects"][i], objs[j])
                                          for i, j in pairs):
        return False
    extra = [o for i, o in enumerate(out["objects"]) if i not in {p for p, _ in pairs}]
    if spec["category"] == "subject-add":
        return len(extra) == 1 and fits(extra[0], change)
    return not extra


def add_noise(img, std, seed):
    """Gaussian pixel noise of `std` on the [0, 1] scale (0.05 = 12.75 grey levels), as uint8."""
    noise = np.random.default_rng(seed).normal(0.0, std * 255.0, img.shape)
    return np.clip(img + noise + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# 10. The benchmark suites. mini-GenEval (Sec. 4.1 reports GenEval): captions of the six GenEval
# categories, several generated images per caption, the scene detector as the judge. Accuracy per
# category = share of images that satisfy their caption; overall = the mean over categories. Two
# scores: the strict one (check_caption: every word, exact totals) and GenEval's own rules
# (check_caption_geneval_rules), the closer reading of the paper's GenEval numbers. Prompt k of
# category c is caption_scene(scene_seed("test", k), c) for k < n, from the test split training
# never reads; its sha1 is printed. v2: the prompts of v1, rendered with the background lines.
GENEVAL_VERSION = "mini-geneval-v2"
GENEVAL_SIZES = {"tiny": (2, 2), "cpu": (50, 2), "world": (100, 4)}  # prompts, images per prompt


def geneval_suite(per_category):
    """[(category, caption, spec)] of the suite, category by category."""
    return [(c, *caption_scene(scene_seed("test", k), c)[1:])
            for c in CAPTION_CATEGORIES for k in range(per_category)]


# ----------------------------------------------------------------------------------------------
# mini-GEdit (Sec. 4.1 reports GEdit-Bench): edits of the eight GEdit categories, scored two ways.
#   adherence: check_edit on the detector's reading: is the output the source changed exactly as
#     the instruction says, and in nothing else (GEdit's semantic consistency, without a VLM)?
#   consistency: PSNR between the output and the exact target render outside the edited objects'
#     boxes (GEdit's perceptual consistency: what should not change did not); the whole image for
#     global edits. The tokenizer's own reconstruction PSNR is its ceiling.
# Per category the mean over its edits; overall the mean over categories. Edit k of category c is
# make_edit(scene_seed("test", k), c) for k < n; its sha1 is printed. v2: v1's edits, with lines.
GEDIT_VERSION = "mini-gedit-v2"
GEDIT_SIZES = {"tiny": 2, "cpu": 30, "world": 50}  # edits per category


def gedit_suite(per_category):
    return [make_edit(scene_seed("test", k), c)
            for c in EDIT_CATEGORIES for k in range(per_category)]


def consistency_region(pair, size, margin=None):
    """(size, size) bool, where consistency is measured: outside the boxes of the objects the edit
    changes (those in only one of source and target; every object for a style edit), padded by
    `margin` (default 0.04 + 1.5 px: outlines, anti-aliasing); all of it for background and tone."""
    margin = 0.04 + 1.5 / size if margin is None else margin
    region = np.ones((size, size), bool)
    if pair.category in ("background_change", "tone_transfer"):
        return region
    changed = pair.source.objects if pair.category == "style_change" else \
        set(pair.source.objects) ^ set(pair.target.objects)
    c = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(c, c, indexing="ij")
    for o in changed:
        region &= ~((np.abs(xx - o.x) <= o.half + margin) & (np.abs(yy - o.y) <= o.half + margin))
    return region


def masked_psnr(a, b, mask):
    """PSNR of images a, b (3, S, S) in [-1, 1] over the pixels where mask (S, S) is True, on the
    [0, 1] scale after clamping (as psnr); capped at 100 dB for identical pixels."""
    m = torch.as_tensor(mask)
    if not m.any():
        raise ValueError("masked_psnr got an empty mask: no pixel to compare")
    d = (a.float().clamp(-1, 1) - b.float().clamp(-1, 1)) / 2
    mse = d.pow(2)[:, m].mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-10))


def check_instruction(src, out, spec, tol=POS_TOL):
    """Did the instructed change happen, whatever else changed? Background, tone, style: the new
    value. Colour / material / replace: an object where the named one was has the new value.
    Remove: none is left there. Add: one of the new shape and colour where the source had none.
    check_edit adds "and nothing else changed", which a half-trained model rarely achieves."""
    cat, change = spec["category"], spec["change"]
    if cat in ("background_change", "tone_transfer", "style_change"):
        key = {"background_change": "bg_colour", "tone_transfer": "tone", "style_change": "style"}[cat]
        return out[key] == change[key]
    if cat == "subject-add":
        return any(o["shape"] == change["shape"] and o["colour"] == change["colour"] and
                   all(math.hypot(o["x"] - p["x"], o["y"] - p["y"]) >= tol for p in src["objects"])
                   for o in out["objects"])
    hits = [o for o in src["objects"] if fits(o, spec["ref"])]
    if len(hits) != 1:
        return False
    near = [o for o in out["objects"] if math.hypot(o["x"] - hits[0]["x"], o["y"] - hits[0]["y"]) < tol]
    if cat == "subject-remove":
        return not near
    return any(all(o[k] == v for k, v in change.items()) for o in near)


def score_edit(pair, output, size):
    """(adherence 0/1, consistency PSNR, instruction hit 0/1) of an edited image (3, S, S) in
    [-1, 1] for an EditPair: check_edit, masked_psnr over consistency_region, check_instruction."""
    src, out = describe(pair.source), detect(output)
    tgt = to_tensor(render(pair.target, size))
    return (float(check_edit(src, out, pair.spec)), masked_psnr(output, tgt, consistency_region(pair, size)),
            float(check_instruction(src, out, pair.spec)))

