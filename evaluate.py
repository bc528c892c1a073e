"""evaluate.py -- metrics and benchmarks for PS-VAE, minimal.

This file starts with the scene detector of the miniature world (DESIGN.md section 3): it reads
a scene description back from pixels using nothing pretrained, and is what makes mini-GenEval
("does the image satisfy its caption?") and mini-GEdit ("did the edit do what was asked, and
nothing else?") possible without Inception, CLIP or a VLM judge.

Sub-commands (each one is a function `cmd_<name>(args)` registered in `main`):
    python evaluate.py detector --n 1000 --size 64   # detector accuracy on held-out scenes
    python evaluate.py world-sheet --out results/      # contact sheets world.png and edits.png
    python evaluate.py world-bench --size 64           # renderer speed (images/s)
    python evaluate.py data --images PATH              # check a real-data folder before training
    python evaluate.py recon --ckpt runs/tokenizer-cpu  # PSNR, SSIM, LPIPS, rFID of a tokenizer
    python evaluate.py probe --ckpt runs/tokenizer-cpu  # linear probe of its latent
    python evaluate.py table4 --preset cpu             # every recipe: results/table4_recon.md
    python evaluate.py geneval --ckpt runs/generator-cpu  # mini-GenEval of a generator run
    python evaluate.py gedit --ckpt runs/edit-cpu         # mini-GEdit of an edit run
"""
import argparse
import itertools
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from tqdm import tqdm

import tokenizer

# ----------------------------------------------------------------------------------------------
# The scene detector. The world is designed so this can be exact (tokenizer.py, world section):
# backgrounds are neutral grey levels, object colours are saturated and far apart in hue,
# objects never touch and keep off the border. So:
#   1. the 1-px border frame is pure background: it gives tone (colour cast), background colour,
#      noise level and the background gradient;
#   2. "object" = a pixel with chroma after removing the cast; connected components = objects;
#   3. colour = nearest palette hue of the component's mean colour;
#   4. shape and size = the ideal shape (fitted from the component's area and centroid) that
#      best overlaps the component's mask;
#   5. texture = how the pixel brightness varies along the object colour inside the object;
#   6. style = whether the ring just outside each object is pushed away from the background.

FG_CHROMA = 30.0  # chroma (max - min of RGB, cast removed) above which a pixel may be an object
MIN_AREA = 0.006  # components smaller than this fraction of the image are noise specks
LARGE_H = 0.152  # half-extent threshold between "small" and "large" (tokenizer.SIZES)
TEXTURE_MIN = 0.12  # brightness variation inside an object above which it is textured
OUTLINE_PUSH = 50.0  # grey levels by which an outline ring departs from the background
DENOISE_SIGMA = 0.6  # px; Gaussian blur for noisy images (a 7-px object at 32 px survives it)


def opponent(rgb):
    """(..., 3) -> (..., 2) opponent colour axes whose angle is the hue."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.stack([r - 0.5 * (g + b), (math.sqrt(3) / 2) * (g - b)], -1)


PALETTE = np.asarray(list(tokenizer.COLOURS.values()), np.float32)  # (6, 3)
PALETTE_HUE = np.arctan2(*opponent(PALETTE)[:, ::-1].T)  # (6,)
TONE_CAST = {t: np.asarray(v, np.float32) for t, v in tokenizer.TONES.items()}


def as_uint8(image):
    """Accept uint8 (H, W, 3) or a float tensor/array (3, H, W) in [-1, 1]."""
    if isinstance(image, torch.Tensor):
        return tokenizer.to_uint8(image)
    image = np.asarray(image)
    if image.dtype != np.uint8:  # float (3, H, W) in [-1, 1]
        return tokenizer.to_uint8(torch.as_tensor(image))
    return image


def denoise(a):
    """The blur applied to noisy images (and to the ideal shapes compared with them)."""
    sigma = (DENOISE_SIGMA, DENOISE_SIGMA, 0)[:a.ndim]  # (H, W) or (H, W, 3): not across RGB
    return ndi.gaussian_filter(a, sigma, mode="nearest", truncate=2.0)


def frame(a):
    """The 1-px border of an (H, W, ...) array, as (4H - 4, ...)."""
    return np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])


def fit_shape(alpha, oy, ox, size, blurred=False):
    """Best ideal shape for a soft coverage map `alpha` (a window starting at pixel (oy, ox)):
    each candidate takes its centre and half-extent from the area and centroid of alpha and is
    scored by how far its own anti-aliased coverage (blurred like the image, if it was) is from
    alpha. Returns (shape, x, y, h)."""
    gy = (np.arange(alpha.shape[0]) + oy + 0.5)[:, None] / size
    gx = (np.arange(alpha.shape[1]) + ox + 0.5)[None, :] / size
    area = alpha.sum() / size**2
    cx, cy = (alpha * gx).sum() / alpha.sum(), (alpha * gy).sum() / alpha.sum()
    best = None
    # area of each shape as a multiple of h^2, and its centroid's offset below the box centre
    for shape, k, drop in (("circle", math.pi, 0), ("square", 4, 0), ("diamond", 2, 0),
                           ("triangle", 2, 1 / 3)):
        h = math.sqrt(area / k)
        y0 = cy - drop * h
        ideal = np.clip(0.5 - tokenizer.shape_sdf(shape, gx - cx, gy - y0, h) * size, 0, 1)
        if blurred:
            ideal = denoise(ideal)
        err = np.abs(ideal - alpha).sum()
        if best is None or err < best[0]:
            best = (err, shape, cx, y0, h)
    return best[1:]


def read_background(img):
    """Step 1, from the border frame of a float (H, W, 3) image. Returns the image with the
    colour cast removed (and blurred if it is noisy), the tone and background names, the
    background level as a plane fitted to the frame (H, W), and whether it was blurred."""
    size = img.shape[0]
    f = frame(img)
    # noise level from neighbour differences along the frame (the smooth gradient cancels)
    noise = np.median(np.abs(np.diff(f.mean(1)))) * 1.48 / math.sqrt(2)
    blurred = noise > 5  # the world's own faint noise is 2 grey levels
    if blurred:
        img = denoise(img)
        f = frame(img)
    cast = np.median(f - f.mean(1, keepdims=True), 0)  # what is left of a neutral grey
    tone = min(TONE_CAST, key=lambda t: np.abs(TONE_CAST[t] - TONE_CAST[t].mean() - cast).sum())
    img = img - TONE_CAST[tone]
    grey = frame(img).mean(1)
    bg = min(tokenizer.BG_COLOURS, key=lambda c: abs(tokenizer.BG_COLOURS[c] - np.median(grey)))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    A = np.stack([np.ones_like(frame(xx)), frame(xx), frame(yy)], 1)  # plane a + b x + c y
    plane = np.linalg.lstsq(A, grey, rcond=None)[0]
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
    # have none; "nearby" follows the darker stripes), 1 well inside; then the best-fitting
    # ideal shape
    mask = own & (c > 0.5 * np.median(c[own]))  # ~ coverage > 0.5
    inner = ndi.binary_erosion(mask, iterations=2 if blurred else 1)
    near = own | (free & ndi.binary_dilation(own))  # the object and the 1-px ring around it
    if inner.any():  # the shade's chroma at each pixel = that of the nearest inner pixel
        iy, ix = ndi.distance_transform_edt(~inner, return_distances=False, return_indices=True)
        local = c[iy, ix]
    else:
        local = np.full_like(c, ref.max() - ref.min())
    alpha = np.where(inner, 1.0, np.clip(c / local, 0, 1) * near)
    shape, x, y, h = fit_shape(alpha, origin[0], origin[1], size, blurred)
    # 5. texture from the pixels at least 0.7 px (1.2 px after the blur) inside the fitted shape
    # (coverage is exactly 1 from 0.5 px in)
    gy = (np.arange(pix.shape[0]) + origin[0] + 0.5)[:, None] / size
    gx = (np.arange(pix.shape[1]) + origin[1] + 0.5)[None, :] / size
    depth = -tokenizer.shape_sdf(shape, gx - x, gy - y, h) * size  # px inside the edge
    inside = depth > (1.2 if blurred else 0.7)
    if np.count_nonzero(inside) < 4:
        inside = depth > 0.5
    obj = {"shape": shape, "colour": list(tokenizer.COLOURS)[ci],
           "texture": classify_texture(pix[inside], ref),
           "size": "large" if h > LARGE_H else "small", "x": x, "y": y,
           "box": (x - h, y - h, x + h, y + h)}
    return obj, mask, alpha, ref


def detect(image):
    """Scene description from pixels: {'bg_colour', 'tone', 'style', 'objects': [{'shape',
    'colour', 'texture', 'size', 'x', 'y', 'box'}]}, the format of tokenizer.describe.
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
        # 6. style evidence: the ring within 2 px outside the object, with the object's own
        # share (alpha) taken out, pushed away from the background level (outlines are dark
        # on white and grey backgrounds, light on black)
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
# Comparing scene descriptions: the helpers the world's benchmarks use (detector accuracy here,
# mini-GenEval and mini-GEdit later). Objects are matched by box centre within POS_TOL.

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
    """Does a scene description satisfy a caption's spec (tokenizer.make_caption)? GenEval
    style: exact counts per named object, the total where given, background colour where
    named, and the spatial relation between the two named objects."""
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
    """The same spec judged by GenEval's own rules instead of this world's strict ones: only the
    attribute the category is about counts. Each named object must be present at least `count`
    times, by shape alone, plus its colour in 'colors' and 'color_attr'; 'counting' also caps the
    count (exact); 'position' needs the relation. Texture, size, background colour and other
    objects in the picture are not checked (GenEval's COCO prompts name none of them). Where
    GenEval checks the colour of the most confident detections, any objects of the shape count
    here (the detector has no confidences)."""
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
    exactly as the edit spec says (tokenizer.make_edit), and in nothing else?"""
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


# ----------------------------------------------------------------------------------------------
# Sub-commands. Each prints progress and, as its last line, one JSON object (also written to
# --json when given), so scripts and the README can quote the numbers.


def add_noise(img, std, seed):
    """Gaussian pixel noise of `std` on the [0, 1] intensity scale (std 0.05 = 12.75 grey
    levels, i.e. 0.1 in the models' [-1, 1] units), re-quantised to uint8."""
    noise = np.random.default_rng(seed).normal(0.0, std * 255.0, img.shape)
    return np.clip(img + noise + 0.5, 0, 255).astype(np.uint8)


def cmd_detector(args):
    """Detector accuracy on held-out scenes, clean and noisy; captions and edits agreement."""
    if args.n < 1 or not 32 <= args.size <= 256:
        raise ValueError(f"--n {args.n} --size {args.size} is not a test; use --n >= 1 and "
                         "--size between 32 and 256")
    bar = lambda it: tqdm(it, total=args.n, disable=not sys.stderr.isatty())  # noqa: E731
    count = dict.fromkeys(["exact", "exact_noisy", "tp", "tp_noisy", "pred", "pred_noisy",
                           "true", "captions", "edits", "seconds"], 0)
    wrong = dict.fromkeys(["bg_colour", "tone", "style"], 0)
    for i in bar(range(args.n)):
        scene = tokenizer.sample_scene(tokenizer.scene_seed(args.split, i))
        img, true = tokenizer.render(scene, args.size), tokenizer.describe(scene)
        t0 = time.perf_counter()
        clean = detect(img)
        count["seconds"] += time.perf_counter() - t0
        noisy = detect(add_noise(img, args.noise, seed=i))
        for name, pred in (("", clean), ("_noisy", noisy)):
            count["exact" + name] += same_scene(pred, true)
            tp, n_pred, n_true = object_counts(pred, true)
            count["tp" + name] += tp
            count["pred" + name] += n_pred
        count["true"] += n_true
        for k in wrong:
            wrong[k] += clean[k] != true[k]
    # captions: does every render satisfy its own caption? edits: does every pair pass?
    captions = tokenizer.WorldCaptions(args.split, args.n, args.size)
    for scene, _, spec in map(captions.item, bar(range(args.n))):
        count["captions"] += check_caption(detect(tokenizer.render(scene, args.size)), spec)
    edits = tokenizer.WorldEdits(args.split, args.n, args.size)
    for e in map(edits.item, bar(range(args.n))):
        count["edits"] += check_edit(detect(tokenizer.render(e.source, args.size)),
                                     detect(tokenizer.render(e.target, args.size)), e.spec)
    n = args.n

    def f1(name):  # micro F1 over all objects = 2 TP / (n predicted + n true)
        return 2 * count["tp" + name] / max(1, count["pred" + name] + count["true"])

    return {
        "n": n, "size": args.size, "split": args.split, "noise_std": args.noise,
        "exact_match": count["exact"] / n, "object_f1": f1(""),
        "exact_match_noisy": count["exact_noisy"] / n, "object_f1_noisy": f1("_noisy"),
        "scene_errors": wrong, "caption_agreement": count["captions"] / n,
        "edit_agreement": count["edits"] / n,
        "detect_ms_per_image": 1000 * count["seconds"] / n,  # clean images, this CPU
    }


def cmd_world_bench(args):
    """Renderer speed in one process: scenes sampled and rendered, and dataset items."""
    out = {"size": args.size, "n": args.n, "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    for i in range(args.n):
        tokenizer.render(tokenizer.sample_scene(i), args.size)
    out["render_images_per_s"] = args.n / (time.perf_counter() - t0)
    data = tokenizer.WorldImages("train", args.n, args.size)
    t0 = time.perf_counter()
    for i in range(args.n):
        data[i]
    out["dataset_images_per_s"] = args.n / (time.perf_counter() - t0)
    data = tokenizer.WorldImages("train", args.n, args.size, grid=args.size // 8)
    t0 = time.perf_counter()
    for i in range(args.n):
        data[i]
    out["dataset_with_targets_images_per_s"] = args.n / (time.perf_counter() - t0)
    return out


def cmd_world_sheet(args):
    """Contact sheets: world.png (scenes and captions, per GenEval category) and edits.png
    (source -> target with the instruction, per GEdit category)."""
    import textwrap
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(args.out, exist_ok=True)
    cats, cols = tokenizer.CAPTION_CATEGORIES, args.per_category
    fig, axes = plt.subplots(cols, len(cats), figsize=(2.3 * len(cats), 2.9 * cols),
                             squeeze=False)
    for c, cat in enumerate(cats):
        for r in range(cols):
            scene, text, _ = tokenizer.caption_scene(tokenizer.scene_seed("val", r), cat)
            ax = axes[r, c]
            ax.imshow(tokenizer.render(scene, args.size), interpolation="nearest")
            ax.set_title("\n".join(textwrap.wrap(text, 26)), fontsize=7)
            ax.set_xticks([]), ax.set_yticks([])
        axes[0, c].set_title(f"[{cat}]\n" + axes[0, c].get_title(), fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "world.png"), dpi=90)
    plt.close(fig)
    cats = tokenizer.EDIT_CATEGORIES
    fig, axes = plt.subplots(len(cats), 2 * cols, figsize=(2.0 * 2 * cols, 2.4 * len(cats)),
                             squeeze=False)
    for r, cat in enumerate(cats):
        for k in range(cols):
            e = tokenizer.make_edit(tokenizer.scene_seed("val", k), cat)
            for j, (scene, title) in enumerate(((e.source, f"[{cat}] source"),
                                                (e.target, e.instruction))):
                ax = axes[r, 2 * k + j]
                ax.imshow(tokenizer.render(scene, args.size), interpolation="nearest")
                ax.set_title("\n".join(textwrap.wrap(title, 24)), fontsize=7)
                ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "edits.png"), dpi=90)
    plt.close(fig)
    return {"world": os.path.join(args.out, "world.png"),
            "edits": os.path.join(args.out, "edits.png")}


def cmd_data(args):
    """Open a real-data folder or file as training would and read a few items: a quick check
    that --data is right before a long run."""
    if sum(x is not None for x in (args.images, args.captions, args.edits)) != 1:
        raise ValueError("give exactly one of --images, --captions, --edits")
    if args.images is not None:
        data = tokenizer.ImageFolderDataset(args.images, args.size)
        out = {"kind": "images", "items": len(data), "classes": len(data.classes)}
    elif args.captions is not None:
        data = tokenizer.CaptionFolderDataset(args.captions, args.size)
        out = {"kind": "captions", "items": len(data)}
    else:
        data = tokenizer.EditJsonlDataset(args.edits, args.size)
        out = {"kind": "edits", "items": len(data)}
    for i in range(min(args.read, len(data))):
        data[i]
    out["read"] = min(args.read, len(data))
    return out


# ----------------------------------------------------------------------------------------------
# Reconstruction and semantics of a tokenizer (Table 4's reconstruction half: PSNR, SSIM, LPIPS,
# rFID, linear probe). rFID needs a feature network: Inception-v3 in the paper; here a small CNN
# that evaluate.py trains once on world scenes (seeded, cached), never the encoder under test.

def gaussian_window(size=11, sigma=1.5):
    """The SSIM paper's window (Wang et al. 2004): 11x11 circular Gaussian, sigma 1.5, sum 1."""
    g = torch.exp(-(torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]  # (size, size)


def ssim(x, y, k1=0.01, k2=0.03):
    """Mean SSIM per image of images in [-1, 1] (mapped to [0, 1], dynamic range L = 1):
    local means, variances and covariance under the Gaussian window over every window that fits
    inside the image, SSIM map averaged over positions and channels. (B, C, H, W) x 2 -> (B,)."""
    x, y = (t.double().clamp(-1, 1).add(1).div(2) for t in (x, y))
    C = x.shape[1]
    w = gaussian_window().to(x.device).expand(C, 1, 11, 11)
    f = lambda t: torch.nn.functional.conv2d(t, w, groups=C)  # noqa: E731  (B, C, H-10, W-10)
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    c1, c2 = k1 ** 2, k2 ** 2
    s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.mean((1, 2, 3)).float()


def frechet_distance(mu1, cov1, mu2, cov2):
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians (the FID formula)."""
    import scipy.linalg
    covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():  # singular product: nudge the diagonals (as pytorch-fid does)
        off = np.eye(len(cov1)) * 1e-6
        covmean = scipy.linalg.sqrtm((cov1 + off) @ (cov2 + off))
    covmean = np.real(covmean)  # tiny imaginary parts are numerical error
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


class WorldEvaluator(torch.nn.Module):
    """rFID's feature network for the world: 4 convolutions (64 px -> 8x8 map), trained on world
    scenes to predict the semantic targets (per-cell shape/colour/texture, count, background).
    Features: channel means and standard deviations of the last map, (B, 8 * width); width 16
    keeps its one-off training at 400 steps near a minute on one CPU core."""

    def __init__(self, width=16):
        super().__init__()
        nn, c = torch.nn, width
        self.body = nn.Sequential(nn.Conv2d(3, c, 3, 1, 1), nn.SiLU(), nn.Conv2d(c, 2 * c, 4, 2, 1), nn.SiLU(),
                                  nn.Conv2d(2 * c, 4 * c, 4, 2, 1), nn.SiLU(), nn.Conv2d(4 * c, 4 * c, 4, 2, 1), nn.SiLU())
        self.heads = nn.ModuleDict({k: nn.Linear(4 * c, n) if k in ("count", "bg_colour") else nn.Conv2d(4 * c, n, 1)
                                    for k, n in sorted(tokenizer.TARGET_CLASSES.items())})

    def forward(self, x):
        if x.shape[-1] != 64:
            x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", antialias=True)
        return self.body(x)  # (B, 4c, 8, 8)

    def features(self, x):
        h = self(x)
        return torch.cat([h.mean((2, 3)), h.std((2, 3))], 1)

    def logits(self, x):
        h = self(x)
        return {k: head(h.mean((2, 3))) if isinstance(head, torch.nn.Linear) else head(h)
                for k, head in self.heads.items()}


def world_evaluator(steps=400, seed=0, cache="runs/evaluator", verbose=True, width=16):
    """The rFID feature network, trained once (seeded) and cached as
    <cache>/world_w<width>_s<steps>_seed<seed>.pt."""
    path = os.path.join(cache, f"world_w{width}_s{steps}_seed{seed}.pt")
    net = WorldEvaluator(width)
    if os.path.isfile(path):
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
        return net.eval().requires_grad_(False)
    torch.manual_seed(seed)
    net = WorldEvaluator(width)
    data = torch.utils.data.DataLoader(tokenizer.WorldImages("train", steps * 64, 64, grid=8), batch_size=64)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for i, (x, t) in enumerate(data):
        loss = sum(torch.nn.functional.cross_entropy(lg, t[k]) for k, lg in net.logits(x).items())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if verbose and (i + 1) % 100 == 0:
            print(f"evaluator step {i + 1}/{steps} loss {loss.item():.3f}", flush=True)
    os.makedirs(cache, exist_ok=True)
    torch.save({"script": "evaluate.py", "steps": steps, "seed": seed, "model": net.state_dict()}, path + ".tmp")
    os.replace(path + ".tmp", path)
    return net.eval().requires_grad_(False)


def fid_of_features(a, b):
    """Fréchet distance between two feature sets (N, d), each summarised by mean and covariance."""
    a, b = a.double().numpy(), b.double().numpy()
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def eval_device(args):
    """The device a measurement runs the tokenizer on: --device, else cuda when there is one."""
    return torch.device(getattr(args, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu"))


def tokenizer_run(path, device="cpu"):
    """(checkpoint path, loaded tokenizer): a run folder gives its last stage (3, 2, then 1)."""
    if os.path.isdir(path):
        found = [os.path.join(path, f"stage{s}.pt") for s in (3, 2, 1)
                 if os.path.isfile(os.path.join(path, f"stage{s}.pt"))]
        if not found:
            raise ValueError(f"{path} holds no stage1/2/3.pt; train a tokenizer into it (tokenizer.py --out {path})")
        path = found[0]
    try:
        return path, tokenizer.load_tokenizer(path, device)
    except tokenizer.TokenizerError as e:
        raise ValueError(str(e))


def read_back(images, scenes):
    """What the detector reads back from images of known scenes (reconstructions, say): the share
    of images with the right number of objects ('read_count') and, over the objects matched by
    position ('read_matched': their share of all true objects), the share with the right shape,
    colour, texture and size. All 1.0 on clean renders; a semantic view of reconstruction."""
    n_ok = n_true = n_match = 0
    right = dict.fromkeys(ATTRS, 0)
    for img, scene in zip(images, scenes):
        pred, true = detect(img)["objects"], tokenizer.describe(scene)["objects"]
        n_ok += len(pred) == len(true)
        n_true += len(true)
        for i, j in match_objects(pred, true):
            n_match += 1
            for k in ATTRS:
                right[k] += pred[i][k] == true[j][k]
    return {"read_count": n_ok / max(1, len(scenes)), "read_matched": n_match / max(1, n_true),
            **{f"read_{k}": right[k] / max(1, n_match) for k in ATTRS}}


def cmd_recon(args):
    """PSNR, SSIM, LPIPS and rFID of a tokenizer's reconstructions of held-out images; on world
    scenes also what the detector reads back from them (read_back)."""
    t0 = time.time()
    dev = eval_device(args)
    path, tok = tokenizer_run(args.ckpt, dev)
    cfg = torch.load(path, map_location="cpu", weights_only=True)["config"]
    size = cfg["image_size"]
    data = tokenizer.ImageFolderDataset(args.data, size) if args.data else tokenizer.WorldImages(args.split, args.n, size)
    n = min(args.n, len(data))
    lp = tokenizer.make_lpips("cpu") if size >= 64 else None
    ev = world_evaluator(args.evaluator_steps, cache=args.evaluator_cache)
    ps, ss, lps, fa, fb, outs = [], [], [], [], [], []
    with torch.no_grad():
        for i in range(0, n, args.batch):
            items = [data[j] for j in range(i, min(n, i + args.batch))]
            x = torch.stack([it[0] if isinstance(it, (tuple, list)) else it for it in items])  # (b, 3, S, S)
            y = tokenizer.decode(tok, tokenizer.encode(tok, x.to(dev))).float().cpu()  # metrics on the CPU
            if not args.data:
                outs.append(y)
            if x.shape[-1] != y.shape[-1]:  # e.g. 224 px in, 256 px out: compare at the output size
                x = torch.nn.functional.interpolate(x, size=y.shape[-2:], mode="bilinear", antialias=True)
            ps.append(tokenizer.psnr(y, x))
            ss.append(ssim(y, x))
            if lp is not None:
                lps.append(lp(y, x).flatten())
            fa.append(ev.features(x))
            fb.append(ev.features(y))
    out = {"ckpt": path, "recipe": cfg.get("recipe", "psvae"), "n": n, "data": args.data or f"world/{args.split}",
           "psnr": torch.cat(ps).mean().item(), "ssim": torch.cat(ss).mean().item(),
           "lpips": torch.cat(lps).mean().item() if lps else None,
           "rfid": fid_of_features(torch.cat(fa), torch.cat(fb)),
           "rfid_features": f"WorldEvaluator trained {args.evaluator_steps} steps on world scenes"}
    if lp is None:
        out["lpips_reason"] = ("images under 64 px (AlexNet)" if size < 64 else
                               "the lpips package's AlexNet weights could not be loaded (offline)")
    if not args.data:
        out.update(read_back(torch.cat(outs), [data.scene(i) for i in range(n)]))
    out["seconds"] = round(time.time() - t0, 1)
    return out


def balanced_accuracy(pred, y):
    """Mean over the classes present in y of the share of that class predicted right (recall):
    a constant guess of the majority class scores 1 / (number of classes), not its share."""
    return torch.stack([(pred[y == c] == c).float().mean() for c in y.unique()]).mean().item()


def probe_predictions(ftr, ytr, fte, yte, steps=100):
    """Predicted classes for fte of a softmax-regression probe fit on standardised (ftr, ytr)
    with L-BFGS from zero weights (deterministic). f: (N, d) float, y: (N,) long."""
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    ftr, fte = (ftr - mu) / sd, (fte - mu) / sd
    lin = torch.nn.Linear(ftr.shape[1], int(max(ytr.max(), yte.max())) + 1)
    torch.nn.init.zeros_(lin.weight), torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(ftr), ytr) + 1e-4 * lin.weight.pow(2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    with torch.no_grad():
        return lin(fte).argmax(1)


def linear_probe(ftr, ytr, fte, yte, steps=100, balanced=False):
    """Accuracy (or balanced_accuracy) of the probe on (fte, yte)."""
    pred = probe_predictions(ftr, ytr, fte, yte, steps)
    return balanced_accuracy(pred, yte) if balanced else (pred == yte).float().mean().item()


def per_token(z):
    """(N, C, h, w) latents -> (N*h*w, C): one row per token, the rows of the probes and readout."""
    return z.flatten(2).transpose(1, 2).reshape(-1, z.shape[1])


def pixel_readout(ztr, xtr, zte, xte, ridge=1e-4):
    """How much of the pixels a latent holds *linearly*: ridge regression from each latent token
    (C values, standardised, plus a bias) to the pixels of its own patch (3 * p * p values, p =
    image side / latent side), fit on (ztr, xtr), applied to zte; -> mean PSNR (dB) of the
    reassembled test images. The pixel counterpart of the semantic probe: a token that names a
    red striped square but not its stripes' phase reads out as a blurred square. z: (N, C, h, w),
    x: (N, 3, H, W) in [-1, 1]."""
    h = ztr.shape[-1]
    p = xtr.shape[-1] // h
    ftr, fte = per_token(ztr.double()), per_token(zte.double())
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    ftr = torch.cat([(ftr - mu) / sd, torch.ones(len(ftr), 1, dtype=ftr.dtype)], 1)
    fte = torch.cat([(fte - mu) / sd, torch.ones(len(fte), 1, dtype=fte.dtype)], 1)
    reg = ridge * len(ftr) * torch.eye(ftr.shape[1], dtype=ftr.dtype)
    reg[-1, -1] = 0  # the bias is not shrunk
    W = torch.linalg.solve(ftr.T @ ftr + reg, ftr.T @ per_token(F.pixel_unshuffle(xtr.double(), p)))  # (C + 1, 3 p p)
    pred = (fte @ W).reshape(len(zte), h * h, 3 * p * p).transpose(1, 2).reshape(len(zte), 3 * p * p, h, h)
    return tokenizer.psnr(F.pixel_shuffle(pred, p).float(), xte.float()).mean().item()


def cmd_probe(args):
    """Linear-probe accuracy of the latent on the world's semantics: per token (shape, colour,
    texture of the cell) and mean-pooled (object count, background colour); and, for contrast,
    the PSNR of a linear pixel readout of the same tokens (pixel_readout)."""
    t0 = time.time()
    dev = eval_device(args)
    path, tok = tokenizer_run(args.ckpt, dev)
    cfg = torch.load(path, map_location="cpu", weights_only=True)["config"]
    feats = {}
    for split, n in (("train", args.n_train), ("val", args.n_test)):
        data = tokenizer.WorldImages(split, n, cfg["image_size"], grid=tok.grid[0])
        z, t, xs = [], [], []
        with torch.no_grad():
            for i in range(0, n, args.batch):
                items = [data[j] for j in range(i, min(n, i + args.batch))]
                x = torch.stack([x for x, _ in items])
                xs.append(x)
                z.append(tokenizer.encode(tok, x.to(dev)).float().cpu())  # (b, C, h, w)
                t.append({k: torch.stack([y[k] for _, y in items]) for k in items[0][1]})
        feats[split] = (torch.cat(z), {k: torch.cat([d[k] for d in t]) for k in t[0]}, torch.cat(xs))
    (ztr, ttr, xtr), (zte, tte, xte) = feats["train"], feats["val"]
    mean_colour = lambda x: F.adaptive_avg_pool2d(x, ztr.shape[-2:])  # noqa: E731  (N, 3, h, w)
    tasks = {f"token_{k}": (per_token(ztr), ttr[k].flatten(), per_token(zte), tte[k].flatten())
             for k in ("shape", "colour", "texture")}
    tasks.update({f"pooled_{k}": (ztr.mean((2, 3)), ttr[k], zte.mean((2, 3)), tte[k]) for k in ("count", "bg_colour")})
    acc, bal = {}, {}
    for name, (ftr, ytr, fte, yte) in tasks.items():
        pred = probe_predictions(ftr, ytr, fte, yte)
        acc[name], bal[f"balanced_{name}"] = (pred == yte).float().mean().item(), balanced_accuracy(pred, yte)
    tokens = [v for k, v in acc.items() if k.startswith("token_")]
    pooled = [v for k, v in acc.items() if k.startswith("pooled_")]
    # balanced: per-class recall averaged over classes, so the 87% of background cells (class 0)
    # set no floor; the closer analogue of the paper's balanced 1000-class ImageNet probe
    return {"ckpt": path, "recipe": cfg.get("recipe", "psvae"), "latent": list(ztr.shape[1:]),
            "n_train": args.n_train, "n_test": args.n_test, **acc, "probe_token": sum(tokens) / len(tokens),
            "probe_pooled": sum(pooled) / len(pooled), "probe": sum(tokens + pooled) / len(tokens + pooled),
            **bal, "probe_balanced": sum(bal.values()) / len(bal),
            "readout_psnr": pixel_readout(ztr, xtr, zte, xte),
            # a yardstick on the same scenes: what each patch's mean colour alone reads out to
            "readout_psnr_mean_colour": pixel_readout(mean_colour(xtr), xtr, mean_colour(xte), xte),
            "seconds": round(time.time() - t0, 1)}


# Table 4 in miniature: every latent space trained by tokenizer.py on the same world data and
# stage-0 encoder, with the same total number of training steps B (a two-stage recipe splits it
# 60/40, RPiAE's three stages 40/30/30), then measured by recon and probe on the same held-out
# scenes. Equal budgets matter: with stage budgets instead, PS-VAE would beat S-VAE partly
# because it trained longer. Fig. 11 left: PS-VAE against C at the same budget.
TABLE4_ROWS = [("PS-VAE", "psvae", 2), ("S-VAE", "svae", 1), ("RAE", "rae", 1), ("P-VAE", "pvae", 1),
               ("VAE (MAR-VAE role)", "vae", 1), ("RPiAE", "rpiae", 3)]
TABLE4_SPLITS = {1: (1.0,), 2: (0.6, 0.4), 3: (0.4, 0.3, 0.3)}  # share of the budget per stage
TABLE4_SIZES = {  # budget B, recon images, probe train/test scenes, evaluator steps, channels (Fig. 11)
    "tiny": dict(budget=12, n=16, n_train=32, n_test=16, evaluator_steps=20, channels=(2, 8)),
    "cpu": dict(budget=600, n=256, n_train=512, n_test=256, evaluator_steps=400, channels=(8, 48)),
    "world": dict(budget=60000, n=1000, n_train=2000, n_test=1000, evaluator_steps=3000, channels=(8, 48, 96)),
}


def table4_steps(budget, stages):
    """Steps of each stage: the budget split by TABLE4_SPLITS, summing exactly to the budget."""
    if budget < stages:
        raise ValueError(f"--budget {budget} is too small for a {stages}-stage recipe; give at least {stages}")
    steps = [max(1, round(budget * f)) for f in TABLE4_SPLITS[stages]]
    steps[0] += budget - sum(steps)
    return steps


def check_table4_encoder(out, job):
    """A latent's runs are reused only on the stage-0 encoder they were trained on: <out>/encoder.sha1
    records the sha1 of that file when stage 1 is first trained. Runs from before the record count as
    trained on the file their stage-1 checkpoint names, if it is still there."""
    import generator
    extra = job["extra"]
    s0 = extra[extra.index("--encoder-ckpt") + 1]
    mark, sha = os.path.join(out, "encoder.sha1"), generator.file_hash(s0)
    first = os.path.join(out, f"stage{job['stages'][0][0]}.pt")
    if os.path.isfile(mark):
        with open(mark) as f:
            recorded = f.read().strip()
    elif os.path.isfile(first):
        named = torch.load(first, map_location="cpu", weights_only=True)["config"].get("encoder_ckpt") or ""
        recorded = generator.file_hash(named) if os.path.isfile(named) else f"unknown ({named or 'none'} is gone)"
    else:
        recorded = sha  # nothing trained yet
    if recorded != sha:
        raise ValueError(f"{out} was trained on another stage-0 encoder (sha1 {recorded[:12]}, --stage0 {s0} has "
                         f"{sha[:12]}); give this encoder its own --runs folder")
    os.makedirs(out, exist_ok=True)
    with open(mark, "w") as f:
        f.write(sha + "\n")


def _table4_job(job):
    """One pool job, in its own process: the evaluator ("evaluator"), stage 0 ("train": train
    only), or one latent space ("latent": train what is missing, then recon + probe). Its log
    goes to <out>/table4.log."""
    import contextlib
    kind, out, threads = job["kind"], job["out"], job["threads"]
    torch.set_num_threads(threads)
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    with open(os.path.join(out, "table4.log"), "a") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        if kind == "evaluator":
            cached = os.path.isfile(os.path.join(out, f"world_w16_s{job['steps']}_seed0.pt"))
            world_evaluator(job["steps"], cache=out)
            return {"seconds": round(time.time() - t0, 1), "trained": int(not cached), "stages": 1}
        if job["stages"][0][0] >= 1:
            check_table4_encoder(out, job)
        trained = 0
        for stage, steps in job["stages"]:  # a stage is reused only if it reached its planned steps
            path = os.path.join(out, f"stage{stage}.pt")
            done = torch.load(path, map_location="cpu", weights_only=True)["step"] if os.path.isfile(path) else None
            if trained:  # the stage below was just (re)trained: this one starts afresh on top of it
                tokenizer.truncate_metrics(out, stage, 0)
                done = None
            if done != steps:  # missing, interrupted (resume it) or of another budget (train it on)
                resume = ["--resume"] if done is not None and done < steps else []
                if done is not None and done > steps:
                    raise ValueError(f"{path} has {done} steps, more than the planned {steps}; "
                                     f"use another --runs folder for --budget {job['budget']}")
                tokenizer.main([*job["base"], "--stage", str(stage), "--steps", str(steps), "--out", out,
                                *resume, *job["extra"]])
                trained += 1
        if kind == "train":  # stage 0: trained, not measured
            return {"seconds": round(time.time() - t0, 1), "trained": trained, "stages": len(job["stages"])}
        a = argparse.Namespace(ckpt=out, **job["ev"])
        return {"recon": cmd_recon(a), "probe": cmd_probe(a), "seconds": round(time.time() - t0, 1),
                "trained": trained, "stages": len(job["stages"])}


def run_jobs(jobs, n_proc):
    """Run pool jobs n_proc at a time (in this process when n_proc is 1); results in job order."""
    if n_proc <= 1:
        return [_table4_job(j) for j in jobs]
    import concurrent.futures
    import multiprocessing
    with concurrent.futures.ProcessPoolExecutor(n_proc, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_table4_job, j): j for j in jobs}
        for f in concurrent.futures.as_completed(futures):
            if f.exception() is not None:  # stop at the first failure instead of finishing the queue
                pool.shutdown(wait=False, cancel_futures=True)
                raise f.exception()
            print(f"table4: {futures[f]['name']} done in {f.result()['seconds']:.0f} s", flush=True)
        return [f.result() for f in futures]  # dicts keep insertion order: job order


def device_name(device=None):
    """The training device in words: the GPU's name, or cpu."""
    use_cuda = device != "cpu" and torch.cuda.is_available() and device in (None, "cuda")
    return torch.cuda.get_device_name() if use_cuda else (device or "cpu")


def cmd_table4(args):
    """Train (or reuse) every latent space at one budget, measure recon + probe, write the table
    and the channels figure. Jobs run --jobs at a time, each with cpu_count / jobs threads."""
    t0 = time.time()
    sz, runs = TABLE4_SIZES[args.preset], args.runs or os.path.join("runs", f"table4-{args.preset}")
    B = args.budget or sz["budget"]
    n_proc = args.jobs or (1 if (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) != "cpu" else 2)
    threads = args.threads or max(1, (os.cpu_count() or 1) // n_proc)
    known = [r for _, r, _ in TABLE4_ROWS]
    wanted = args.recipes.split(",") if args.recipes else known
    if not wanted or any(r not in known for r in wanted):
        raise ValueError(f"--recipes {args.recipes!r}: give a comma-separated subset of {','.join(known)}")
    table_rows = [row for row in TABLE4_ROWS if row[1] in wanted]
    base = ["--preset", args.preset] + (["--device", args.device] if args.device else []) + \
        (["--workers", str(args.workers)] if args.workers else [])
    s0 = args.stage0 or os.path.join(runs, "stage0", "stage0.pt")
    if args.stage0 and not os.path.isfile(args.stage0):
        raise ValueError(f"--stage0 {args.stage0} does not exist; give a tokenizer.py --stage 0 checkpoint")
    ev_cache = os.path.join(runs, "evaluator")
    ev = dict(split="val", n=sz["n"], batch=32, data=None, evaluator_steps=sz["evaluator_steps"], device=args.device,
              evaluator_cache=ev_cache, n_train=sz["n_train"], n_test=sz["n_test"])
    print(f"table4 preset {args.preset}: budget {B} steps per latent, {n_proc} jobs at a time, "
          f"{threads} thread(s) each, runs in {runs}", flush=True)
    table4_steps(B, max(TABLE4_SPLITS))  # a budget too small for RPiAE stops here, before any training
    s0_steps = tokenizer.PRESETS[args.preset]["steps"][0]
    s0_job = [] if args.stage0 else [dict(kind="train", name="stage 0", out=os.path.dirname(s0), threads=threads,
                                          base=base, stages=[(0, s0_steps)], extra=[], budget=s0_steps)]
    first = run_jobs(s0_job + [dict(kind="evaluator", name="rFID evaluator", out=ev_cache, threads=threads,
                                    steps=sz["evaluator_steps"])], n_proc)
    C0 = tokenizer.PRESETS[args.preset]["latent_channels"]
    # Fig. 11's channel sweep belongs to the whole table; a --recipes subset leaves it out
    Cs = sorted(set(sz["channels"]) | {C0}) if not args.recipes else []
    jobs = []
    for name, recipe, last in table_rows:
        jobs.append(dict(kind="latent", name=name, out=os.path.join(runs, recipe), recipe=recipe, last=last))
    for C in Cs:
        if C != C0:
            jobs.append(dict(kind="latent", name=f"PS-VAE C={C}", out=os.path.join(runs, f"psvae-c{C}"),
                             recipe="psvae", last=2, channels=C))
    for j in jobs:
        extra = ["--latent-channels", str(j["channels"])] if "channels" in j else []
        j.update(threads=threads, base=base + ["--recipe", j["recipe"]], ev=ev, budget=B,
                 extra=extra + ["--encoder-ckpt", s0],
                 stages=list(zip(range(1, j["last"] + 1), table4_steps(B, j["last"]))))
    results = dict(zip([j["name"] for j in jobs], run_jobs(jobs, n_proc)))
    rows = []
    for name, recipe, last in table_rows:
        r = results[name]
        rows.append((name, r["recon"], r["probe"]))
        print(f"table4 {name}: {json.dumps({**r['recon'], **r['probe']})}", flush=True)
    chans = []
    for C in Cs:
        r = results["PS-VAE" if C == C0 else f"PS-VAE C={C}"]
        chans.append((C, r["recon"]["psnr"], r["probe"]["probe"]))
    fmt = lambda v, d: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    flags = (f" --budget {B}" if B != sz["budget"] else "") + (f" --recipes {args.recipes}" if args.recipes else "") \
        + (f" --stage0 {args.stage0}" if args.stage0 else "") + (f" --runs {args.runs}" if args.runs else "")
    lines = [f"# Table 4 (reconstruction half) in miniature: preset {args.preset}" +
             (f", budget {B}" if B != sz["budget"] else ""), "",
             f"`python evaluate.py table4 --preset {args.preset}{flags}`; runs in `{runs}`; every latent trained for "
             f"{B} steps in all (stages split {B}: " +
             ", ".join(f"{k} stage(s) {'+'.join(map(str, table4_steps(B, k)))}" for k in (2, 3)) +
             f"); {sz['n']} held-out world scenes; probe: {sz['n_train']} train / {sz['n_test']} held-out scenes; "
             f"rFID features: WorldEvaluator ({sz['evaluator_steps']} steps). World encoder (stage 0): "
             f"`{s0}`, {torch.load(s0, map_location='cpu', weights_only=True)['step']} steps. LPIPS: "
             f"{rows[0][1].get('lpips_reason', 'lpips package, AlexNet')}. Read back: what the scene detector reads "
             f"from the reconstructions (share of images with the right object count; of the objects found in "
             f"place, share with the right shape; with the right texture).", "",
             "| latent | recipe (stages) | latent shape | PSNR | SSIM | LPIPS | rFID | read back: count / shape / "
             "texture | probe per token | probe pooled | probe | probe, balanced |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (name, r, p), (_, recipe, last) in zip(rows, table_rows):
        C, h, w = p["latent"]  # written h x w x C, as the README's presets
        lines.append(f"| {name} | {recipe} ({'+'.join(map(str, table4_steps(B, last)))}) | {h}x{w}x{C} | "
                     f"{r['psnr']:.2f} | {r['ssim']:.3f} | {fmt(r['lpips'], 3)} | {r['rfid']:.3f} | "
                     f"{r['read_count']:.2f} / {r['read_shape']:.2f} / {r['read_texture']:.2f} | "
                     f"{p['probe_token']:.3f} | {p['probe_pooled']:.3f} | {p['probe']:.3f} | "
                     f"{p['probe_balanced']:.3f} |")
    if chans:
        lines += ["", "Figure 11 (left), PS-VAE against latent channels C:", "", "| C | PSNR | probe |",
                  "|---|---|---|"]
        lines += [f"| {C} | {ps:.2f} | {pr:.3f} |" for C, ps, pr in chans]
    done = first + list(results.values())
    lines += ["", f"Total time: {time.time() - t0:.0f} s ({n_proc} jobs at a time, {threads} thread(s) each, "
              f"{os.cpu_count()} CPU cores, device {device_name(args.device)}); trained here "
              f"{sum(r['trained'] for r in done)} of {sum(r['stages'] for r in done)} stages (incl. stage 0 and "
              f"the rFID evaluator), the others reused from `{runs}`."]
    os.makedirs(args.results, exist_ok=True)
    # the preset's own table keeps its name; another budget, another stage-0 encoder (named by its
    # folder) or a subset of rows (in table order) never overwrites it
    suffix = {"cpu": "", "world": "_world"}.get(args.preset, f"_{args.preset}")
    suffix += (f"_b{B}" if B != sz["budget"] else "") + \
        (f"_s0-{os.path.basename(os.path.dirname(os.path.abspath(args.stage0)))}" if args.stage0 else "") + \
        ("_" + "_".join(r for _, r, _ in table_rows) if args.recipes else "")
    md = os.path.join(args.results, f"table4_recon{suffix}.md")
    with open(md + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(md + ".tmp", md)
    out = {"table": md, "rows": {n: {**r, **p} for n, r, p in rows}, "channels": chans,
           "seconds": round(time.time() - t0, 1)}
    if not chans:
        return out
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(7, 2.8))
    Cs = [c for c, _, _ in chans]
    ax[0].plot(Cs, [p for _, p, _ in chans], "o-"), ax[0].set_ylabel("PSNR (dB)")
    ax[1].plot(Cs, [p for _, _, p in chans], "o-"), ax[1].set_ylabel("linear probe")
    for a in ax:
        a.set_xscale("log", base=2), a.set_xlabel("latent channels C"), a.set_xticks(Cs, [str(c) for c in Cs])
    fig.suptitle(f"PS-VAE against C (Fig. 11 left), preset {args.preset}", fontsize=9)
    fig.tight_layout()
    png = os.path.join(args.results, f"channels{suffix}.png")
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return {**out, "figure": png}


# ----------------------------------------------------------------------------------------------
# mini-GenEval (Sec. 4.1 reports GenEval): captions of the six GenEval categories, several images
# per caption from the generator, and the scene detector as the judge (check_caption). Accuracy
# per category = share of images that satisfy their caption; overall = the mean over categories
# (as GenEval's overall score).
#
# The prompt suite, version 1: prompt k of category c is tokenizer.caption_scene(
# tokenizer.scene_seed("test", k), c) for k < n: the held-out test split, which training never
# reads. It is a pure function of (k, c); its sha1 is printed so a changed world shows up.

# Two scores on the same images: the strict one (check_caption: every word of the caption,
# texture, size and background included, and exact totals) and GenEval's own rules
# (check_caption_geneval_rules: only the attribute each category is about, "at least" counts
# except in counting), the closer reading of the paper's GenEval numbers.
GENEVAL_VERSION = "mini-geneval-v1"
GENEVAL_SIZES = {  # prompts per category, images per prompt
    "tiny": (2, 2),  # tests: a few
    "cpu": (50, 2),  # the laptop demo
    "world": (100, 4),  # GenEval's 4 images per prompt
}


def geneval_suite(per_category):
    """[(category, caption, spec)] of suite v1, category by category."""
    return [(c, *tokenizer.caption_scene(tokenizer.scene_seed("test", k), c)[1:])
            for c in tokenizer.CAPTION_CATEGORIES for k in range(per_category)]


def cmd_geneval(args):
    """mini-GenEval of a generator run: per-category and overall accuracy."""
    import hashlib
    import generator
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        model, cfg, tok_path = generator.load_generator(args.ckpt, device)
        tok, _, size = generator.open_tokenizer(args.tokenizer or tok_path, device, cfg["tokenizer_sha1"])
    except tokenizer.TokenizerError as e:
        raise ValueError(str(e)) from None
    preset = args.preset or (cfg["preset"] if cfg["preset"] in GENEVAL_SIZES else "world")
    per_cat, per_prompt = GENEVAL_SIZES[preset]
    per_cat, per_prompt = args.prompts or per_cat, args.images or per_prompt
    suite = geneval_suite(per_cat)
    sha = hashlib.sha1(json.dumps([p[1] for p in suite]).encode()).hexdigest()[:12]
    kw = dict(steps=args.steps or cfg["sample_steps"], shift=args.sample_shift or cfg["sample_shift"],
              cfg=args.cfg if args.cfg is not None else cfg["cfg"])
    print(f"{GENEVAL_VERSION} ({sha}): {per_cat} prompts x {len(tokenizer.CAPTION_CATEGORIES)} categories x "
          f"{per_prompt} images, {kw['steps']} Euler steps, shift {kw['shift']}, CFG {kw['cfg']}", flush=True)
    jobs = [(c, text, spec, r, k % per_cat) for k, (c, text, spec) in enumerate(suite) for r in range(per_prompt)]
    hits = dict.fromkeys(tokenizer.CAPTION_CATEGORIES, 0)
    loose = dict.fromkeys(tokenizer.CAPTION_CATEGORIES, 0)
    total = dict.fromkeys(tokenizer.CAPTION_CATEGORIES, 0)
    t0 = time.time()
    for b in tqdm(range(0, len(jobs), args.batch), disable=not sys.stderr.isatty()):
        part = jobs[b:b + args.batch]
        # image r of prompt k draws its noise from (seed, position in the job list): reproducible
        if args.baseline:  # no generator: the suite's own scenes (each satisfies its caption)
            # through the run's tokenizer, the best any generator on this latent can be scored
            x = torch.stack([tokenizer.to_tensor(tokenizer.render(tokenizer.caption_scene(
                tokenizer.scene_seed("test", j[4]), j[0])[0], size)) for j in part])
            with torch.no_grad():
                imgs = tokenizer.decode(tok, tokenizer.encode(tok, x.to(device))).cpu()
        else:
            imgs = generator.generate(model, tok, [j[1] for j in part], seed=args.seed, first=b, batch=args.batch,
                                      **kw)
        for (c, _, spec, _, _), img in zip(part, imgs):
            desc = detect(img)
            hits[c] += check_caption(desc, spec)
            loose[c] += check_caption_geneval_rules(desc, spec)
            total[c] += 1
    per_category = {c: hits[c] / total[c] for c in hits}
    per_category_rules = {c: loose[c] / total[c] for c in hits}
    return {"suite": GENEVAL_VERSION, "suite_sha1": sha, "ckpt": args.ckpt, "preset": preset,
            "prompts_per_category": per_cat, "images_per_prompt": per_prompt, "n_images": len(jobs),
            "per_category": per_category, "overall": sum(per_category.values()) / len(per_category),
            "per_category_geneval_rules": per_category_rules,
            "overall_geneval_rules": sum(per_category_rules.values()) / len(per_category_rules),
            **kw, "baseline": args.baseline, "seconds": round(time.time() - t0, 1)}


# ----------------------------------------------------------------------------------------------
# mini-GEdit (Sec. 4.1 reports GEdit-Bench): edits of the eight GEdit categories, scored two ways.
#   adherence: the detector reads the edited image and check_edit asks whether it equals the
#     source changed exactly as the instruction says, and in nothing else (GEdit's semantic
#     consistency, judged without a VLM);
#   consistency: PSNR between the output and the world's exact target render, over the pixels
#     outside the edited objects' boxes (GEdit's perceptual consistency: what should not change
#     did not). Background, style and tone edits touch every pixel, so there it is the whole
#     image. The tokenizer's own reconstruction PSNR is the ceiling of this number.
# Per category the mean over its edits; overall the mean over categories.
#
# The suite, version 1: edit k of category c is tokenizer.make_edit(tokenizer.scene_seed("test",
# k), c) for k < n: held-out test scenes. Its sha1 is printed so a changed world shows up.

GEDIT_VERSION = "mini-gedit-v1"
GEDIT_SIZES = {"tiny": 2, "cpu": 30, "world": 50}  # edits per category


def gedit_suite(per_category):
    return [tokenizer.make_edit(tokenizer.scene_seed("test", k), c)
            for c in tokenizer.EDIT_CATEGORIES for k in range(per_category)]


def consistency_region(pair, size, margin=None):
    """(size, size) bool: where the consistency PSNR is measured: outside the boxes of the
    objects the edit changes, padded by `margin` of the side (default 0.04 + 1.5 px: outlines,
    mitred corners and anti-aliasing). Object edits change the objects present in only one of
    source and target; a style edit (outlines on or off) changes every object's rim; background
    and tone edits change every pixel, so there the region is the whole image (compared with the
    exact target)."""
    margin = 0.04 + 1.5 / size if margin is None else margin
    region = np.ones((size, size), bool)
    if pair.category in ("background_change", "tone_transfer"):
        return region
    changed = pair.source.objects if pair.category == "style_change" else \
        set(pair.source.objects) ^ set(pair.target.objects)
    c = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(c, c, indexing="ij")
    for o in changed:
        region &= ~((np.abs(xx - o.x) <= o.h + margin) & (np.abs(yy - o.y) <= o.h + margin))
    return region


def masked_psnr(a, b, mask):
    """PSNR of images a, b (3, S, S) in [-1, 1] over the pixels where mask (S, S) is True, on the
    [0, 1] scale after clamping (as tokenizer.psnr); capped at 100 dB for identical pixels."""
    m = torch.as_tensor(mask)
    if not m.any():
        raise ValueError("masked_psnr got an empty mask: no pixel to compare")
    d = (a.float().clamp(-1, 1) - b.float().clamp(-1, 1)) / 2
    mse = d.pow(2)[:, m].mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-10))


def check_instruction(src, out, spec, tol=POS_TOL):
    """The looser question: did the instructed change happen, whatever else changed? Background,
    tone, style: the output has the new value. Colour / material / replace: an object where the
    named one was has the new colour / texture / shape. Remove: no object is left there. Add: an
    object of the new shape and colour stands where the source had none. check_edit is this plus
    "and nothing else changed", which a blurry or half-trained model rarely achieves."""
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
    """(adherence 0/1, consistency PSNR, instruction hit 0/1) of one edited image (3, S, S) in
    [-1, 1] for a world EditPair: the detector's reading of the output against the instruction's
    spec (check_edit; check_instruction for the hit), and the PSNR to the exact target render
    over consistency_region."""
    src, out = tokenizer.describe(pair.source), detect(output)
    tgt = tokenizer.to_tensor(tokenizer.render(pair.target, size))
    return (float(check_edit(src, out, pair.spec)), masked_psnr(output, tgt, consistency_region(pair, size)),
            float(check_instruction(src, out, pair.spec)))


def cmd_gedit(args):
    """mini-GEdit of an edit run: per-category adherence and consistency, and overall."""
    import hashlib
    import edit
    import generator
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        model, cfg, tok_path = edit.load_edit_model(args.ckpt, device)
        tok, _, size = generator.open_tokenizer(args.tokenizer or tok_path, device, cfg["tokenizer_sha1"])
    except tokenizer.TokenizerError as e:
        raise ValueError(str(e)) from None
    preset = args.preset or (cfg["preset"] if cfg["preset"] in GEDIT_SIZES else "world")
    per_cat = args.edits or GEDIT_SIZES[preset]
    suite = gedit_suite(per_cat)
    sha = hashlib.sha1(json.dumps([e.instruction for e in suite]).encode()).hexdigest()[:12]
    kw = dict(steps=args.steps or cfg["sample_steps"], shift=args.sample_shift or cfg["sample_shift"],
              cfg_text=args.cfg_text if args.cfg_text is not None else cfg["cfg_text"],
              cfg_image=args.cfg_image if args.cfg_image is not None else cfg["cfg_image"])
    print(f"{GEDIT_VERSION} ({sha}): {per_cat} edits x {len(tokenizer.EDIT_CATEGORIES)} categories, "
          f"{kw['steps']} Euler steps, shift {kw['shift']}, text CFG {kw['cfg_text']}, image CFG {kw['cfg_image']}",
          flush=True)
    adh, con, hit = ({c: [] for c in tokenizer.EDIT_CATEGORIES} for _ in range(3))
    t0, shown = time.time(), []
    for b in tqdm(range(0, len(suite), args.batch), disable=not sys.stderr.isatty()):
        part = suite[b:b + args.batch]
        src = torch.stack([tokenizer.to_tensor(tokenizer.render(e.source, size)) for e in part])
        # edit i of the suite draws its noise from (seed, i), whatever --batch is
        if args.baseline:  # no edit model: the source ("ignore the instruction") or the exact target
            # ("a perfect editor"), each through the run's tokenizer, whose blur limits every score
            x = src if args.baseline == "source" else \
                torch.stack([tokenizer.to_tensor(tokenizer.render(e.target, size)) for e in part])
            with torch.no_grad():
                out = tokenizer.decode(tok, tokenizer.encode(tok, x.to(device))).cpu()
        else:
            out = edit.edit_images(model, tok, src, [e.instruction for e in part], seed=args.seed, first=b,
                                   batch=args.batch, **kw)
        for e, x, y in zip(part, src, out):
            a, c, h = score_edit(e, y, size)
            adh[e.category].append(a), con[e.category].append(c), hit[e.category].append(h)
            if args.grid and len([s for s in shown if s[3] == e.category]) < 2:
                shown.append((x, y, e.instruction, e.category, tokenizer.to_tensor(tokenizer.render(e.target, size))))
    if args.grid:
        shown.sort(key=lambda s: tokenizer.EDIT_CATEGORIES.index(s[3]))
        edit.save_pairs(args.grid, [s[0] for s in shown], [s[1] for s in shown], [s[2] for s in shown],
                        f"{GEDIT_VERSION}: {args.ckpt}", targets=[s[4] for s in shown], per_row=2)
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    per_category = {c: {"adherence": mean(adh[c]), "consistency_psnr": mean(con[c]),
                        "instruction_hit": mean(hit[c])} for c in adh}
    return {"suite": GEDIT_VERSION, "suite_sha1": sha, "ckpt": args.ckpt, "preset": preset,
            "edits_per_category": per_cat, "n_edits": len(suite), "per_category": per_category,
            "adherence": sum(v["adherence"] for v in per_category.values()) / len(per_category),
            "consistency_psnr": sum(v["consistency_psnr"] for v in per_category.values()) / len(per_category),
            "instruction_hit": sum(v["instruction_hit"] for v in per_category.values()) / len(per_category),
            **kw, "baseline": args.baseline, "grid": args.grid, "seconds": round(time.time() - t0, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description="PS-VAE, minimal: evaluation and benchmarks")
    # one parser block per sub-command; later benchmarks (recon, probe, geneval, gedit) add a
    # cmd_<name>(args) -> dict and a block here, and get --json and clean errors for free
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("detector", help="scene-detector accuracy on held-out world scenes")
    p.add_argument("--n", type=int, default=1000, help="number of held-out scenes")
    p.add_argument("--size", type=int, default=64, help="render size in px (32..256)")
    p.add_argument("--noise", type=float, default=0.05,
                   help="std of the Gaussian pixel noise, on the [0, 1] scale")
    p.add_argument("--split", default="val", help="world split the scenes come from")
    p.set_defaults(func=cmd_detector)
    p = sub.add_parser("world-bench", help="renderer speed (images/s, one process)")
    p.add_argument("--n", type=int, default=3000, help="images to render")
    p.add_argument("--size", type=int, default=64, help="render size in px")
    p.set_defaults(func=cmd_world_bench)
    p = sub.add_parser("world-sheet", help="contact sheets world.png and edits.png")
    p.add_argument("--out", default="results", help="folder for the PNGs")
    p.add_argument("--size", type=int, default=96, help="render size in px")
    p.add_argument("--per-category", type=int, default=3, help="examples per category")
    p.set_defaults(func=cmd_world_sheet)
    p = sub.add_parser("data", help="check a real-data folder / file by reading a few items")
    p.add_argument("--images", default=None, help="image folder in ImageNet layout")
    p.add_argument("--captions", default=None, help="folder of images with same-named .txt")
    p.add_argument("--edits", default=None, help="JSONL of input/instruction/output triplets")
    p.add_argument("--size", type=int, default=64, help="resize + centre-crop size in px")
    p.add_argument("--read", type=int, default=8, help="how many items to read")
    p.set_defaults(func=cmd_data)
    for name, func, what in (("recon", cmd_recon, "PSNR, SSIM, LPIPS, rFID of a tokenizer's reconstructions"),
                             ("probe", cmd_probe, "linear-probe accuracy of a tokenizer's latent on world semantics")):
        p = sub.add_parser(name, help=what)
        p.add_argument("--ckpt", required=True, help="tokenizer run folder (its last stage) or a stage<N>.pt")
        p.add_argument("--data", default=None, help="recon: image folder instead of held-out world scenes")
        p.add_argument("--split", default="val", help="recon: world split of the held-out scenes")
        p.add_argument("--n", type=int, default=256, help="recon: number of images")
        p.add_argument("--n-train", type=int, default=512, help="probe: world scenes the probe is fit on")
        p.add_argument("--n-test", type=int, default=256, help="probe: held-out (val) scenes it is scored on")
        p.add_argument("--batch", type=int, default=32, help="images per forward pass")
        p.add_argument("--evaluator-steps", type=int, default=400, help="rFID network: training steps")
        p.add_argument("--evaluator-cache", default="runs/evaluator", help="rFID network: cache folder")
        p.add_argument("--device", default=None, choices=("cpu", "cuda", "mps"), help="where the tokenizer runs "
                       "(default: cuda if available); the metrics are computed on the CPU")
        p.set_defaults(func=func)
    p = sub.add_parser("table4", help="Table 4's reconstruction half: train every recipe, recon + probe")
    p.add_argument("--preset", choices=list(TABLE4_SIZES), default="cpu", help="tokenizer preset and table size")
    p.add_argument("--runs", default=None, help="run folder (default runs/table4-<preset>); finished stages are reused")
    p.add_argument("--results", default="results", help="folder for table4_recon*.md and channels*.png")
    p.add_argument("--device", default=None, choices=("cpu", "cuda", "mps"), help="training device")
    p.add_argument("--budget", type=int, default=None, help="training steps per latent (default: the preset's)")
    p.add_argument("--jobs", type=int, default=None, help="trainings at a time (default 2 on CPU, 1 on GPU)")
    p.add_argument("--threads", type=int, default=None, help="threads per training (default cpu_count / jobs)")
    p.add_argument("--stage0", default=None, help="a world encoder (tokenizer.py --stage 0 checkpoint) to use "
                   "instead of training the preset's stage 0 here")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers per training (GPU runs)")
    p.add_argument("--recipes", default=None,
                   help="comma-separated subset of rows, e.g. psvae,rae,pvae (no channel sweep; own file)")
    p.set_defaults(func=cmd_table4)
    p = sub.add_parser("geneval", help="mini-GenEval of a generator run (the detector judges)")
    p.add_argument("--ckpt", required=True, help="generator run folder or its generator.pt")
    p.add_argument("--preset", choices=list(GENEVAL_SIZES), default=None,
                   help="suite size: tiny (tests), cpu, world (default: the run's preset)")
    p.add_argument("--prompts", type=int, default=None, help="prompts per category (overrides the preset)")
    p.add_argument("--images", type=int, default=None, help="images per prompt (overrides the preset)")
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: the run's)")
    p.add_argument("--sample-shift", type=float, default=None, help="inference shift (default: the run's)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the run's)")
    p.add_argument("--batch", type=int, default=100, help="images generated at once")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--tokenizer", default=None, help="tokenizer checkpoint (default: the run's)")
    p.add_argument("--device", default=None, choices=("cpu", "cuda", "mps"), help="default: cuda if available")
    p.add_argument("--baseline", choices=("real",), default=None, help="score, instead of generated images, "
                   "the suite's own scenes reconstructed by the run's tokenizer (the ceiling on this latent)")
    p.set_defaults(func=cmd_geneval)
    p = sub.add_parser("gedit", help="mini-GEdit of an edit run (adherence by the detector, consistency PSNR)")
    p.add_argument("--ckpt", required=True, help="edit run folder or its edit.pt")
    p.add_argument("--preset", choices=list(GEDIT_SIZES), default=None,
                   help="suite size: tiny (tests), cpu, world (default: the run's preset)")
    p.add_argument("--edits", type=int, default=None, help="edits per category (overrides the preset)")
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: the run's)")
    p.add_argument("--sample-shift", type=float, default=None, help="inference shift (default: the run's)")
    p.add_argument("--cfg-text", type=float, default=None, help="instruction guidance (default: the run's)")
    p.add_argument("--cfg-image", type=float, default=None, help="source-image guidance (default: the run's)")
    p.add_argument("--batch", type=int, default=64, help="edits at once")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--grid", default=None, help="also write a PNG of two edits per category")
    p.add_argument("--baseline", choices=("source", "target"), default=None, help="score, instead of the "
                   "edits, the source (ignoring the instruction) or the exact target (a perfect editor), each "
                   "reconstructed by the run's tokenizer")
    p.add_argument("--tokenizer", default=None, help="tokenizer checkpoint (default: the run's)")
    p.add_argument("--device", default=None, choices=("cpu", "cuda", "mps"), help="default: cuda if available")
    p.set_defaults(func=cmd_gedit)
    for p in sub.choices.values():
        p.add_argument("--json", default=None, help="also write the result JSON to this file")
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError) as e:  # bad paths / inputs: one sentence, no traceback
        sys.exit(f"error: {e}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, args.json)  # atomic: a reader never sees half a file
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
