"""The miniature world: scenes, renderer, captions, edit pairs and data loaders.

DESIGN.md section 3. Nothing in this project can download ImageNet, captioned photos or edit
pairs, so the default data is a procedurally rendered world built for the paper's question:
*semantics* (which objects, colours, textures, counts, positions) against *pixel detail*
(stripe phase and width, dot grid, gradient, noise, exact anti-aliased edges, sub-pixel
position). A semantic encoder should keep the first and may drop the second; a pixel decoder
needs both (the premise of PS-VAE, Sec. 1 and 3).

Read top to bottom:
  1. vocabulary of the world (shapes, colours, textures, sizes, backgrounds, tones, styles)
  2. Scene = a pure function of an integer seed (`sample_scene`)
  3. `render(scene, size)`: vectorised numpy on a coordinate grid, analytic anti-aliasing
  4. `semantic_targets`: per-patch labels for the stage-0 "semantics only" encoder and probes
  5. captions per GenEval category, each with a machine-checkable spec
  6. edit pairs per GEdit category (source, instruction, target)
  7. datasets: world images / captions / edits, and real data (image folder, caption folder,
     JSONL edit triplets) with one-sentence errors

Coordinates are normalised: x to the right, y downwards, both in [0, 1], so one scene renders
the same at any size from 32 to 256 px.
"""
import dataclasses
import json
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

__all__ = [  # the public names; tokenizer.py re-exports exactly these
    "SHAPES", "COLOURS", "TEXTURES", "SIZES", "BG_COLOURS", "TONES", "STYLES", "SPLITS",
    "TEXTURE_DEPTH", "DOT_LIGHT", "OUTLINE_WIDTH", "GAP", "MARGIN", "TARGET_CLASSES",
    "CAPTION_CATEGORIES", "CAPTION_ATTRS", "NUMBER_WORDS", "RELATIONS", "TEMPLATES",
    "EDIT_CATEGORIES", "EDIT_TEMPLATES", "VOCAB", "IMAGE_EXTENSIONS",
    "WorldObject", "Scene", "EditPair", "scene_seed", "place", "random_object", "sample_scene",
    "box_sdf", "shape_sdf", "texture_pattern", "render", "object_masks", "semantic_targets",
    "describe", "noun_phrase", "make_caption", "caption_scene", "make_edit", "vocabulary",
    "to_tensor", "to_uint8", "load_image", "is_image", "check_folder",
    "WorldImages", "WorldCaptions", "WorldEdits", "SkippingDataset",
    "ImageFolderDataset", "CaptionFolderDataset", "EditJsonlDataset",
]

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
