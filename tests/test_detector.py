"""The scene detector and its comparison helpers (world.py): accuracy on held-out renders,
captions satisfied by their own renders, edit pairs passing the edit check, and the checks
rejecting what is wrong.

Run: python -m pytest tests/test_detector.py -q      (about 45 s on 2 busy CPU cores)
"""
import dataclasses
import json
import math

import numpy as np
import pytest

import evaluate
import world
from world import Scene, WorldObject


def accuracy(n, size, noise=0.0, split="val"):
    exact = 0
    for i in range(n):
        s = world.sample_scene(world.scene_seed(split, i))
        img = world.render(s, size)
        if noise:
            img = world.add_noise(img, noise, seed=i)
        exact += world.same_scene(world.detect(img), world.describe(s))
    return exact / n


# the detector's targets (the full 1000-scene numbers come from `python evaluate.py detector`)
def test_detector_exact_on_clean_64px():
    assert accuracy(200, 64) >= 0.99


def test_detector_on_32px():
    assert accuracy(200, 32) >= 0.95


def test_detector_under_noise():
    assert accuracy(200, 64, noise=0.05) >= 0.95


def test_detector_on_other_sizes():
    assert accuracy(40, 48) >= 0.95 and accuracy(30, 128) >= 0.95


def test_detector_reads_a_hand_made_scene_and_its_boxes():
    objs = (WorldObject("triangle", "purple", "striped", "large", 0.3, 0.35, 0.19, 0.4, 0.12, 1.0),
            WorldObject("circle", "cyan", "dotted", "small", 0.72, 0.7, 0.12, 1.2, 0.11, 2.0))
    s = Scene(objs, "white", 0.7, 15.0, 5, tone="cool", style="outlined")
    d = world.detect(world.render(s, 96))
    assert (d["bg_colour"], d["tone"], d["style"]) == ("white", "cool", "outlined")
    found = sorted((o["shape"], o["colour"], o["texture"], o["size"]) for o in d["objects"])
    assert found == [("circle", "cyan", "dotted", "small"), ("triangle", "purple", "striped",
                                                              "large")]
    tri = next(o for o in d["objects"] if o["shape"] == "triangle")
    assert np.allclose(tri["box"], (0.11, 0.16, 0.49, 0.54), atol=1.0 / 96)  # within a pixel
    # the same image as a float tensor in [-1, 1] gives the same answer
    assert world.detect(world.to_tensor(world.render(s, 96))) == d


def test_detector_sees_nothing_in_an_empty_scene():
    s = Scene((), "grey", 1.0, 12.0, 3)
    d = world.detect(world.render(s, 64))
    assert d["objects"] == [] and d["bg_colour"] == "grey" and d["style"] == "flat"


@pytest.mark.parametrize("bg", list(world.BG_COLOURS))
def test_the_strongest_background_lines_are_no_objects_and_no_outlines(bg):
    """Empty scenes with the finest, strongest lines and the strongest gradient, clean and noisy,
    at 32 and 64 px: no object, the right background, tone and style."""
    strongest = max(world.LINE_DETAIL["bg_tex_contrast"])
    for k, angle in enumerate((0.0, 0.5, 1.2, math.pi / 2)):
        s = Scene((), bg, angle, 18.0, k, tone="warm", bg_tex_angle=angle, bg_tex_period=0.08,
                  bg_tex_phase=k, bg_tex_contrast=strongest)
        for size in (32, 64):
            for img in (world.render(s, size), world.add_noise(world.render(s, size), 0.05, k)):
                d = world.detect(img)
                assert (d["objects"], d["bg_colour"], d["tone"], d["style"]) == ([], bg, "warm", "flat")


def test_a_resampled_twin_reads_the_same_and_differs_in_its_pixels():
    """1000 held-out scenes at 64 px: the detector reads the same description from a scene and
    from its twin with new detail (resample_detail). Their pixels differ by at least 8 grey levels
    on average: the lines alone (contrast >= 65, independent phases, E|p1 - p2| = 0.41 of it for
    the profile ((1 + cos) / 2)^2) give about 0.41 * 65 = 27 on the background, which covers at
    least 57% of a 64 px scene, so 15 in the most crowded one; 8 leaves room for chance."""
    least = 255.0
    for i in range(1000):
        s = world.sample_scene(world.scene_seed("val", i))
        twin = world.resample_detail(s, np.random.default_rng([i, 1]))
        a, b = world.render(s, 64), world.render(twin, 64)
        assert world.same_scene(world.detect(b), world.detect(a)), i
        least = min(least, np.abs(a.astype(float) - b).mean())
    assert least >= 8


def test_detector_rejects_an_image_that_is_not_square_rgb():
    with pytest.raises(ValueError, match="square RGB image"):
        world.detect(np.zeros((32, 40, 3), np.uint8))


def test_same_scene_and_object_counts_reject_differences():
    s = world.sample_scene(11)
    while len(s.objects) < 2:
        s = world.sample_scene(s.noise_seed)
    true = world.describe(s)
    assert world.same_scene(true, true) and world.object_counts(true, true) == (
        len(s.objects), len(s.objects), len(s.objects))
    moved = world.describe(dataclasses.replace(s, objects=(dataclasses.replace(
        s.objects[0], x=s.objects[0].x + 0.1),) + s.objects[1:]))
    assert not world.same_scene(moved, true)
    assert world.object_counts(moved, true)[0] == len(s.objects) - 1
    other = "red" if s.objects[0].colour != "red" else "blue"
    recoloured = world.describe(dataclasses.replace(s, objects=(dataclasses.replace(
        s.objects[0], colour=other),) + s.objects[1:]))
    assert not world.same_scene(recoloured, true)
    assert not world.same_scene(dict(true, objects=true["objects"][1:]), true)
    assert not world.same_scene(dict(true, tone="warm" if s.tone != "warm" else "cool"), true)


def test_every_render_satisfies_its_own_caption_1000_pairs():
    # 1000 random (scene, caption) pairs, all six GenEval categories
    rng = np.random.default_rng(0)
    failed = []
    for seed in rng.integers(0, 10**9, size=1000):
        s, text, spec = world.caption_scene(int(seed))
        if not world.check_caption(world.detect(world.render(s, 64)), spec):
            failed.append(text)
    assert not failed, failed[:5]


def test_caption_check_rejects_wrong_captions():
    wrong = 0
    for i in range(120):
        s, _, spec = world.caption_scene(i)
        d = world.describe(s)
        assert world.check_caption(d, spec)
        req = dict(spec["objects"][0])
        key = "colour" if "colour" in req else "shape"
        values = list(world.COLOURS) if key == "colour" else world.SHAPES
        req[key] = values[(values.index(req[key]) + 1) % len(values)]
        bad = dict(spec, objects=[req] + spec["objects"][1:])
        wrong += not world.check_caption(d, bad)
        if spec["category"] == "counting":  # one more or one fewer is wrong
            more = dict(spec, n_objects=spec["n_objects"] + 1,
                        objects=[dict(spec["objects"][0], count=spec["objects"][0]["count"] + 1)])
            assert not world.check_caption(d, more)
        if spec["relation"]:  # the opposite relation is wrong
            flip = {"left of": "right of", "right of": "left of", "above": "below",
                    "below": "above"}[spec["relation"][1]]
            assert not world.check_caption(d, dict(spec, relation=[0, flip, 1]))
    assert wrong == 120


def _obj(shape, colour="red", texture="solid", size="large", x=0.5, y=0.5):
    return {"shape": shape, "colour": colour, "texture": texture, "size": size, "x": x, "y": y}


def test_geneval_rules_check_only_what_the_category_is_about():
    scene = lambda *objs, bg="grey": {"bg_colour": bg, "tone": "neutral", "style": "flat", "objects": list(objs)}  # noqa: E731
    rules = world.check_caption_geneval_rules
    # colors: "a dotted green diamond on a grey background"; texture, size and background are not judged
    spec = {"category": "colors", "n_objects": 1, "bg_colour": "grey", "relation": None,
            "objects": [{"count": 1, "shape": "diamond", "colour": "green", "texture": "dotted"}]}
    plain = scene(_obj("diamond", "green", "solid", "small"), _obj("circle", "blue", x=0.1), bg="white")
    assert rules(plain, spec) and not world.check_caption(plain, spec)
    assert not rules(scene(_obj("diamond", "red")), spec)  # the colour is what 'colors' is about
    assert not rules(scene(_obj("square", "green")), spec)
    # colour is not judged outside colors / color_attr
    spec = {"category": "single_object", "n_objects": 1, "bg_colour": None, "relation": None,
            "objects": [{"count": 1, "shape": "triangle", "size": "large", "texture": "dotted"}]}
    assert rules(scene(_obj("triangle", "purple", size="small")), spec) and not rules(scene(_obj("circle")), spec)
    # counting is exact for the named shape; other shapes may be there too
    spec = {"category": "counting", "n_objects": 3, "bg_colour": None, "relation": None,
            "objects": [{"count": 3, "shape": "circle"}]}
    circles = [_obj("circle", x=0.1 + 0.2 * k) for k in range(4)]
    assert rules(scene(*circles[:3], _obj("square", y=0.9)), spec)
    assert not rules(scene(*circles[:2]), spec) and not rules(scene(*circles), spec)
    # two named objects of one shape need two of them
    spec = {"category": "two_object", "n_objects": 2, "bg_colour": None, "relation": None,
            "objects": [{"count": 1, "shape": "square", "texture": "striped"},
                        {"count": 1, "shape": "square", "texture": "dotted"}]}
    assert not rules(scene(_obj("square")), spec) and rules(scene(_obj("square", x=0.2), _obj("square", x=0.8)), spec)
    # position: the relation is judged, with the same margin as the strict check
    spec = {"category": "position", "n_objects": 2, "bg_colour": None, "relation": [0, "left of", 1],
            "objects": [{"count": 1, "shape": "diamond"}, {"count": 1, "shape": "circle", "texture": "striped"}]}
    assert rules(scene(_obj("diamond", x=0.2), _obj("circle", x=0.8)), spec)
    assert not rules(scene(_obj("diamond", x=0.8), _obj("circle", x=0.2)), spec)
    assert not rules(scene(_obj("diamond", x=0.5), _obj("circle", x=0.52, y=0.9)), spec)


def test_geneval_rules_are_weaker_than_the_strict_check():
    # the true scene of every caption passes both; a changed shape fails both
    for i in range(300):
        s, _, spec = world.caption_scene(i)
        d = world.describe(s)
        assert world.check_caption(d, spec) and world.check_caption_geneval_rules(d, spec)
        req = dict(spec["objects"][0])
        req["shape"] = world.SHAPES[(world.SHAPES.index(req["shape"]) + 1) % len(world.SHAPES)]
        others = [o for o in d["objects"] if o["shape"] != req["shape"]]
        bad = dict(spec, objects=[req] + spec["objects"][1:])
        if len(others) == len(d["objects"]):  # no object of the new shape in the picture
            assert not world.check_caption_geneval_rules(d, bad)


@pytest.mark.parametrize("cat", world.EDIT_CATEGORIES)
def test_edit_pairs_pass_the_edit_check_and_no_op_or_wrong_edits_fail(cat):
    for seed in range(30):
        e = world.make_edit(seed, cat)
        src = world.detect(world.render(e.source, 64))
        tgt = world.detect(world.render(e.target, 64))
        assert world.check_edit(src, tgt, e.spec), (seed, e.instruction)
        assert not world.check_edit(src, src, e.spec)  # doing nothing is not the edit
        # the edit plus one extra change elsewhere is not the edit either
        extra = dict(tgt, bg_colour=next(c for c in world.BG_COLOURS
                                         if c not in (tgt["bg_colour"], src["bg_colour"])))
        assert not world.check_edit(src, extra, e.spec)


def test_edit_check_rejects_editing_the_wrong_object():
    hits = 0
    for seed in range(60):
        e = world.make_edit(seed, "color_alter")
        if len(e.source.objects) < 2:
            continue
        k = next(i for i, (a, b) in enumerate(zip(e.source.objects, e.target.objects)) if a != b)
        j = (k + 1) % len(e.source.objects)  # recolour a different object instead
        new = e.spec["change"]["colour"]
        objs = list(e.source.objects)
        objs[j] = dataclasses.replace(objs[j], colour=new)
        wrong = dataclasses.replace(e.source, objects=tuple(objs))
        assert not world.check_edit(world.describe(e.source), world.describe(wrong),
                                       e.spec)
        hits += 1
    assert hits >= 20


def test_detector_cli_prints_json_last(capsys, tmp_path):
    out = tmp_path / "det.json"
    result = evaluate.main(["detector", "--n", "24", "--size", "64", "--json", str(out)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    printed = json.loads(last)
    for key in ("exact_match", "object_f1", "exact_match_noisy", "caption_agreement",
                "edit_agreement"):
        assert key in printed
    assert printed == json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert printed["exact_match"] == 1.0 and printed["object_f1"] == 1.0


def test_world_sheet_cli_writes_both_pngs(tmp_path):
    evaluate.main(["world-sheet", "--out", str(tmp_path), "--size", "40", "--per-category", "1"])
    from PIL import Image
    for name in ("world.png", "edits.png"):
        with Image.open(tmp_path / name) as im:
            assert im.width > 300 and im.height > 200
