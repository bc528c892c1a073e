"""experiments/table3_encoders.py -- Table 3 of the paper (Sec. 4.4) in miniature: the method transfers to a second
representation encoder (results/table4/table3_encoders.md, and the .json every number of it is read from).

The paper trains PS-VAE on DINOv2-B and on SigLIP2-so400m (L_s : L_p 0.1 : 1 and 0.05 : 1) and finds that it
transfers: reconstruction improves, and SigLIP2's understanding drops a little (MME-P 1685 -> 1652). This world's two
encoders have one architecture, stage-0 budget and seed and differ only in the pre-training objective
(tokenizer.py sections 5 and 5b): twins (DINOv2's role: the scene labels and the twin invariance) and siglip (SigLIP2's
role: (image, caption) pairs and the sigmoid loss). On each, PS-VAE's stages 1 and 2 are trained as `evaluate.py
table4` trains its PS-VAE row (its budget, stage split and batch), with the loss weights tokenizer.py picks for the
objective, and measured:

  reconstruction   rFID, PSNR, SSIM, LPIPS (evaluate.py recon); the latent's balanced linear probe (evaluate.py probe)
  understanding    before (the stage-0 encoder) and after (the PS-VAE's encoder after stage 2): the balanced linear
                   probe of the encoder's patch tokens, and for siglip zero-shot caption matching with its own heads
                   (tokenizer.zero_shot_matching; the paper's MME-P needs a multimodal LLM); the stage-0 encoder's pixel
                   readout and twin gap (evaluate.py encoder)

GenEval and editing are not measured: they need the generator recipe still under study. Each encoder's chain (stage
0, stage 1, stage 2, measurement) runs in its own process, --jobs of them at a time; a finished stage is reused (one
short of its steps resumed) and a measurement is reused while the checkpoints it read are unchanged.

    python experiments/table3_encoders.py --preset cpu --jobs 2
    python experiments/table3_encoders.py --preset tiny --runs /tmp/t3 --results /tmp/t3   # seconds (the tests)
"""
import argparse
import contextlib
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common as C  # noqa: E402
import evaluate as E  # noqa: E402
import generator as G  # noqa: E402
import tokenizer as T  # noqa: E402
import world as W  # noqa: E402

# objective -> (the paper's encoder it stands for, what the paper says of PS-VAE on it)
ENCODERS = {
    "twins": ("DINOv2-B", "PS-VAE on DINOv2-B: Table 3's numbers are not in this repository"),
    "siglip": ("SigLIP2-so400m", "the method transfers: reconstruction improves, understanding drops a little"),
}
NOT_MEASURED = ("they need a generator and an editor per encoder, trained on the generator recipe still under study "
                "(experiments/recipe.py; at the cpu budgets the generators are nearly unconditional, "
                "results/generation/recipe.md)")


# ----------------------------------------------------------------------------------------------
# Training: stage 0, then PS-VAE's stages 1 and 2 (evaluate.train_latent), each reused when done

def train_stage0(job):
    """The encoder's stage 0 at its planned steps: reused, resumed when short of them, else trained; -> 1 if trained."""
    path, steps = job["stage0"], job["stage0_steps"]
    ck = torch.load(path, map_location="cpu", weights_only=True) if os.path.isfile(path) else None
    if ck is not None:
        had = {k: ck["config"].get(k) for k in ("stage0_objective", "seed", "batch_size")}
        want = {"stage0_objective": job["objective"], "seed": job["seed"], "batch_size": job["stage0_batch"]}
        if had != want or ck["step"] > steps:
            raise ValueError(f"{path} was trained with {had} to step {ck['step']}, not {want} to step {steps}; give "
                             f"this table its own --runs")
        if ck["step"] == steps:
            return 0
    T.main([*job["args"], "--batch-size", str(job["stage0_batch"]), "--stage", "0", "--steps", str(steps), "--out",
            os.path.dirname(path), *(["--resume"] if ck is not None else [])])
    return 1


# ----------------------------------------------------------------------------------------------
# Measurement: evaluate.py's recon, probe and encoder, and the understanding before and after

def stage0_model(path, device):
    """The stage-0 model of a checkpoint (SigLIPStageZero with its heads and text tower, or StageZero), eval mode."""
    ck = T.load_checkpoint(path, "stage-0 checkpoint")
    enc = T.build_encoder(ck["config"]["encoder"])
    siglip = ck["config"].get("stage0_objective") == "siglip"
    model = T.SigLIPStageZero(enc) if siglip else T.StageZero(enc, W.TARGET_CLASSES)
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), ck["config"]["encoder_size"]


def encoder_probe(encoder, size, n_train, n_test, device, batch=64):
    """evaluate.probes (the balanced linear probe, per token and pooled) of an encoder's own patch tokens on the scenes
    the latent probe uses (world train / val scenes), rendered at its input size."""
    heads = T.StageZero(encoder, {}).eval()  # no label heads: evaluate.encoder_tokens returns the tokens alone
    z, t = {}, {}
    for split, n in (("train", n_train), ("val", n_test)):
        scenes = [W.sample_scene(W.scene_seed(split, i)) for i in range(n)]
        z[split] = E.encoder_tokens(heads, scenes, size, batch, device)[0]  # (n, D, g, g)
        targets = [W.semantic_targets(sc, z[split].shape[-1]) for sc in scenes]
        t[split] = {k: torch.stack([d[k] for d in targets]) for k in targets[0]}
    return E.probes(z["train"], t["train"], z["val"], t["val"])


def zero_shot(model, n, size, device, encoder=None):
    """(tokenizer.zero_shot_matching of n held-out world (image, caption) pairs by a SigLIP-role stage 0's heads, on
    its own encoder's tokens or on `encoder`'s; chance: each image picking a caption at random, its own or one saying
    the same words). The same pairs as `evaluate.py encoder`'s."""
    images, caps = zip(*[W.WorldCaptions("val", n, size)[i] for i in range(n)])
    acc = T.zero_shot_matching(model, torch.stack(images).to(device), list(caps), encoder, size)
    return acc, sum(map(caps.count, caps)) / n ** 2


def measure(job):
    """recon, probe and encoder of evaluate.py, and the understanding before (stage 0) and after (stage 2)."""
    ev, dev = job["ev"], E.eval_device(argparse.Namespace(device=job["device"]))
    a = argparse.Namespace(ckpt=job["psvae"], **ev)
    out = {"recon": E.cmd_recon(a), "probe": E.cmd_probe(a),
           "encoder": E.cmd_encoder(argparse.Namespace(stage0=job["stage0"], n_train=ev["n_train"],
                                                       n_test=ev["n_test"], batch=64, device=job["device"]))}
    model, size = stage0_model(job["stage0"], dev)
    tok = T.load_tokenizer(T.last_stage(job["psvae"]), dev)
    after = (tok.encoder, tok.encoder_size)
    out["encoder_probe"] = {"before": encoder_probe(model.encoder, size, ev["n_train"], ev["n_test"], dev),
                            "after": encoder_probe(*after, ev["n_train"], ev["n_test"], dev)}
    if job["objective"] == "siglip":
        (before, chance), (acc, _) = (zero_shot(model, ev["n_test"], s, dev, e) for e, s in ((None, size), after))
        out["zero_shot"] = {"before": before, "after": acc, "chance": chance, "n": ev["n_test"]}
    return out


def chain_job(job):
    """One encoder, in its own process: stage 0, PS-VAE's stages 1 and 2, the measurement. Log: <out>/table3.log."""
    t0 = time.time()
    os.makedirs(job["out"], exist_ok=True)
    with open(os.path.join(job["out"], "table3.log"), "a") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log), E.num_threads(job["threads"]):
        trained = train_stage0(job)
        trained += E.train_latent(job["psvae"], [*job["args"], "--batch-size", str(job["batch"]), "--recipe", "psvae"],
                                  job["plan"], job["stage0"])
        key = {"stage0_sha1": G.file_hash(job["stage0"]), "psvae_sha1": G.file_hash(T.last_stage(job["psvae"])),
               "ev": job["ev"]}  # a measurement is reused only while these are the same
        measured = E.reuse_or_run(os.path.join(job["out"], "measured.json"), key, lambda: measure(job))
    return {**measured, "trained": trained, "seconds": round(time.time() - t0, 1)}


# ----------------------------------------------------------------------------------------------
# The table: every number from the JSON

def write_table(path, res):
    """The markdown table, from the results JSON `res` alone."""
    f = lambda v, d: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    m, b, sz, enc = res["machine"], res["budget"], res["sizes"], res["encoders"]
    ratio = lambda w: f"{w[0]:g} : {w[1]:g}"  # noqa: E731
    lines = ["# Table 3 in miniature: PS-VAE on a second representation encoder", "",
             f"`{res['command']}`. Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}, torch "
             f"{m['torch']}. Precision: {res['precision']}. Both encoders: the world encoder `{b['encoder']}`, "
             f"stage 0 for {b['stage0_steps']} steps of batch {b.get('stage0_batch', b['batch'])}, seed {res['seed']}; "
             "then PS-VAE, stage 1 "
             f"+ stage 2 = {b['psvae_steps'][0]} + {b['psvae_steps'][1]} steps of batch {b['batch']} (Table 4's "
             f"PS-VAE row), with the L_s : L_p weights tokenizer.py picks for the objective. Reconstruction on "
             f"{sz['n']} held-out scenes (rFID features: WorldEvaluator, {sz['evaluator_steps']} steps); probes fit "
             f"on {sz['n_train']} scenes, scored on {sz['n_test']} held-out ones; zero-shot matching among "
             f"{sz['n_test']} held-out (image, caption) pairs. LPIPS: {res['lpips']}. {res['seconds']:.0f} s here; "
             f"{res['trained']} stage(s) trained, the others reused from `{res['runs']}`.", "",
             "| encoder (the paper's) | L_s : L_p | rFID | PSNR | SSIM | LPIPS | latent probe, balanced | GenEval | "
             "editing | the paper (Table 3) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for obj, e in enc.items():
        r, p = e["recon"], e["probe"]
        lines.append(f"| {obj} ({e['role']}) | {ratio(e['loss_weights'])} | {r['rfid']:.1f} | {r['psnr']:.2f} | "
                     f"{r['ssim']:.3f} | {f(r['lpips'], 3)} | {p['probe_balanced']:.3f} | not measured | "
                     f"not measured | {res['paper'][obj]} |")
    lines += ["", "Understanding before PS-VAE training (the stage-0 encoder) and after it (the PS-VAE's encoder after "
              "stage 2; zero-shot: stage 0's attention-pooling head and text tower, unchanged, read its tokens); the "
              "stage-0 encoder's linear pixel readout and twin gap (`evaluate.py encoder`):", "",
              "| encoder | encoder tokens' probe, balanced: before -> after | zero-shot caption matching: before -> "
              "after (chance) | pixel readout dB / twin gap dB | the paper (Table 3) |", "|---|---|---|---|---|"]
    mme = res["paper"].get("mme_p")
    for obj, e in enc.items():
        pb, pa, z = e["encoder_probe"]["before"], e["encoder_probe"]["after"], e.get("zero_shot")
        shot = (f"{z['before']:.3f} -> {z['after']:.3f} ({z['chance']:.3f})" if z else
                "not defined: no text tower (trained on labels)")
        paper = (f"MME-P {mme[0]} -> {mme[1]}" if obj == "siglip" and mme else "not given")
        lines.append(f"| {obj} ({e['role']}) | {pb['probe_balanced']:.3f} -> {pa['probe_balanced']:.3f} | {shot} | "
                     f"{e['encoder']['readout_psnr']:.2f} / {e['encoder']['twin_gap_db']:.2f} | {paper} |")
    lines += ["", f"GenEval and editing: not measured; {res['not_measured']}."]
    return E.write_text(path, "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------
# Command line

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu", choices=list(E.TABLE4_SIZES), help="tokenizer preset and table size")
    p.add_argument("--seed", type=int, default=0, help="seed of both encoders' stage 0 and of their PS-VAEs")
    p.add_argument("--runs", default=None, help="run folder, one folder per encoder below it (default runs/table3-"
                   "<preset>); finished stages are reused")
    p.add_argument("--results", default=os.path.join("results", "table4"), help="folder for the table and its JSON")
    p.add_argument("--jobs", type=int, default=None, help="encoders trained at a time (default 2 on CPU, 1 on GPU)")
    p.add_argument("--threads", type=int, default=None, help="threads per job (default cpu_count / jobs)")
    p.add_argument("--device", default=None, choices=("cpu", "cuda", "mps"), help="default: cuda if available")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"))
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--stage0-steps", type=int, default=None, help="both encoders' stage-0 steps (default: the preset's)")
    p.add_argument("--stage0-batch", type=int, default=None, help="both encoders' stage-0 batch (default: the table's; "
                   "a contrastive loss tells each image from batch - 1 captions)")
    a = p.parse_args(argv)
    t0, sz = time.time(), E.TABLE4_SIZES[a.preset]
    command = "python experiments/table3_encoders.py " + " ".join(sys.argv[1:] if argv is None else argv)
    runs = a.runs or os.path.join("runs", f"table3-{a.preset}")
    speed, precision = E.table_speed(argparse.Namespace(amp=a.amp, compile=a.compile, device=a.device), sz["budget"])
    dev = E.eval_device(a)
    n_proc = a.jobs or (2 if dev.type == "cpu" else 1)
    threads = a.threads or max(1, (os.cpu_count() or 1) // n_proc)
    batch, plan = sz.get("batch", T.PRESETS[a.preset]["batch_size"]), list(zip((1, 2), E.table4_steps(sz["budget"], 2)))
    s0_steps, s0_batch = a.stage0_steps or T.PRESETS[a.preset]["steps"][0], a.stage0_batch or batch
    ev_cache = os.path.join(runs, "evaluator")
    ev = dict(split="val", n=sz["n"], batch=32, data=None, evaluator_steps=sz["evaluator_steps"], device=a.device,
              evaluator_cache=ev_cache, n_train=sz["n_train"], n_test=sz["n_test"])
    with E.num_threads(threads):  # the rFID network, once, before the jobs that read it
        E.world_evaluator(sz["evaluator_steps"], cache=ev_cache, verbose=False)
    jobs = []
    for obj in ENCODERS:
        out = os.path.join(runs, obj + (f"-seed{a.seed}" if a.seed else ""))
        args = ["--preset", a.preset, *speed, "--stage0-objective", obj, "--seed", str(a.seed)] + \
            (["--device", a.device] if a.device else [])
        jobs.append(dict(objective=obj, out=out, stage0=os.path.join(out, "stage0", "stage0.pt"),
                         psvae=os.path.join(out, "psvae"), stage0_steps=s0_steps, stage0_batch=s0_batch, seed=a.seed,
                         batch=batch, plan=plan, args=args, ev=ev, threads=threads, device=a.device))
    print(f"table3 preset {a.preset}: stage 0, then PS-VAE {'+'.join(str(s) for _, s in plan)} steps on each of "
          f"{', '.join(ENCODERS)}; {n_proc} job(s) at a time, {threads} thread(s) each, runs in {runs}", flush=True)
    try:
        results = dict(zip(ENCODERS, E.run_jobs(jobs, n_proc, chain_job)))
    except ValueError as e:  # a folder of other settings, a missing file: one sentence
        raise SystemExit(f"table3_encoders.py: error: {e}")
    weights = {obj: list(T.LOSS_WEIGHTS.get(obj, T.DEFAULT_LOSS_WEIGHTS)) for obj in ENCODERS}
    mme = getattr(E.report, "PAPER_TABLE3_MME", None)
    res = {"command": command, "preset": a.preset, "seed": a.seed, "runs": runs, "machine": C.machine(),
           "precision": precision, "threads": threads, "jobs": n_proc,
           "budget": {"encoder": T.PRESETS[a.preset]["encoder"], "stage0_steps": s0_steps, "stage0_batch": s0_batch,
                      "batch": batch, "psvae_steps": [s for _, s in plan]},
           "sizes": {k: sz[k] for k in ("n", "n_train", "n_test", "evaluator_steps")},
           "lpips": next(iter(results.values()))["recon"].get("lpips_reason", "lpips package, AlexNet"),
           "encoders": {obj: {"role": ENCODERS[obj][0], "loss_weights": weights[obj], "stage0": j["stage0"],
                              "psvae": T.last_stage(j["psvae"]), **results[obj]} for obj, j in zip(ENCODERS, jobs)},
           "paper": {**{obj: ENCODERS[obj][1] for obj in ENCODERS}, "mme_p": list(mme) if mme else None,
                     "loss_weights": {"DINOv2-B": [0.1, 1.0], "SigLIP2-so400m": [0.05, 1.0]}},
           "not_measured": NOT_MEASURED, "trained": sum(r["trained"] for r in results.values()),
           "seconds": round(time.time() - t0, 1)}
    name = "table3_encoders" + (f"_{a.preset}" if a.preset != "cpu" else "") + (f"_seed{a.seed}" if a.seed else "") + \
        (f"_s0b{s0_batch}x{s0_steps}" if a.stage0_steps or a.stage0_batch else "")  # a stage 0 other than the preset's
    E.write_text(os.path.join(a.results, name + ".json"), json.dumps(res, indent=1))
    print(write_table(os.path.join(a.results, name + ".md"), res), flush=True)
    return res


if __name__ == "__main__":
    main()
