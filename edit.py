"""edit.py -- instruction-based image editing: a generator.py checkpoint fine-tuned to edit.

Paper: Zhang et al. 2025, Sec. 4.1 "Instruction Editing": the text-to-image model is resumed and
trained on (input image, instruction, output image) triplets. Read top to bottom:

  1. presets (the model itself comes from the T2I checkpoint)
  2. EditModel: generator.Generator with a second image in the sequence, the clean source
  3. data: edit triplets, both images encoded ONCE by the frozen tokenizer and cached on disk
  4. the training loop (init from T2I, DDP, EMA, exact resume, atomic checkpoints)
  5. sampling with two guidance scales (image and text) and the `sample` sub-command; main()

  python edit.py --init runs/generator-cpu --preset cpu
  torchrun --nproc_per_node=2 edit.py --init runs/generator-cpu --preset cpu
  python edit.py sample --ckpt runs/edit-cpu --image in.png --instruction "make the red circle blue"
  python evaluate.py gedit --ckpt runs/edit-cpu            # mini-GEdit: adherence and consistency

The sequence is [clean source latent (N tokens) | instruction (T tokens) | noisy target latent
(N tokens)], as DESIGN.md item 10 and the paper describe it. What the paper states: the input
image's clean latent comes first, the instruction is causal, the image latents attend to each
other fully. Where it is silent we chose, and say so here:
  - text queries see only earlier text, never an image (exactly the T2I model's text path, so
    the instruction's hidden states are what the T2I model would compute for it);
  - both image blocks see the whole instruction and each other (source <-> target, full);
  - the source tokens reuse the T2I image embedder (they are latents of the same tokenizer)
    and the same 2D sin-cos positions as the target, so token k of the source and token k of
    the target are the same place; a learned "source" embedding, not a timestep, tells them
    apart;
  - dropping the source (for image guidance) hides its tokens from the target with the mask,
    rather than feeding a zero image: the model then is exactly a T2I model for that sample.
"""
import argparse
import hashlib
import json
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm

import generator as G
import tokenizer
from generator import GeneratorError
from tokenizer import print0, save_checkpoint

SCRIPT = "edit.py"  # written into every checkpoint, checked when one is loaded

# ------------------------------------------------------------------------------------------
# 1. Presets: a dict of argparse defaults; any flag overrides it. The network's size, patch and
#    text context come from the T2I checkpoint, never from here.
# ------------------------------------------------------------------------------------------

PRESETS = {
    # tests: seconds on CPU
    "tiny": dict(batch_size=8, lr=5e-4, warmup=0, steps=12, n_train=48, ema=0.9, log_every=1, ckpt_every=6,
                 sample_steps=6, n_samples=2, cfg_text=3.0, cfg_image=1.5),
    # the laptop demo on 2 CPU cores (one thread each is fastest on a busy machine)
    "cpu": dict(batch_size=32, lr=5e-4, warmup=100, steps=1500, n_train=12000, ema=0.995, log_every=25,
                ckpt_every=250, sample_steps=50, n_samples=8, cfg_text=3.0, cfg_image=1.5),
    # the miniature paper on one GPU
    "world": dict(batch_size=256, lr=1e-4, warmup=500, steps=20000, n_train=200000, ema=0.9999, log_every=100,
                  ckpt_every=2000, sample_steps=50, n_samples=8, cfg_text=3.0, cfg_image=1.5),
    # the paper: 50k iterations from the T2I checkpoint; triplets from --data
    "paper": dict(batch_size=256, lr=1e-4, warmup=500, steps=50000, n_train=0, ema=0.9999, log_every=100,
                  ckpt_every=5000, sample_steps=50, n_samples=8, cfg_text=3.0, cfg_image=1.5),
}
MODEL_KEYS = ("model", "patch", "text_len", "head")  # taken from the T2I checkpoint's config


# ------------------------------------------------------------------------------------------
# 2. The model: the T2I network plus a source slot
# ------------------------------------------------------------------------------------------

class EditModel(G.Generator):
    """generator.Generator over [source (N) | text (T) | noisy target (N)]. Every T2I weight keeps
    its name, so a T2I state dict loads into it; the one new tensor is `source_embed`. forward
    takes cond = (text ids (B, T), source latent (B, C, h, w), keep (B,) bool or None): keep[b]
    False hides the source from sample b (image-guidance dropout)."""

    def __init__(self, cfg, latent_shape, patch=1, text_len=16, head="ddt", vocab_size=None):
        super().__init__(cfg, latent_shape, patch, text_len, head, vocab_size)
        N, T, D = self.N, text_len, cfg.width
        self.source_embed = nn.Parameter(torch.randn(D) * 0.02)
        L = N + T + N
        mask = torch.zeros(L, L, dtype=torch.bool)  # True = may attend; rows are queries
        mask[N:N + T, N:N + T] = torch.ones(T, T).tril().bool()  # text: causal, text only
        mask[:N, :] = True  # source: the instruction and both images
        mask[N + T:, :] = True  # target: the same
        self.register_buffer("mask", mask, persistent=False)
        cos, sin = G.rope_tables([None] * N + list(range(T)) + [None] * N, D // cfg.heads, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def backbone(self, x_t, t, cond):
        """Hidden states of the target tokens after the last block and the final norm: (B, N, D)."""
        text, src, keep = cond
        B, N, T = x_t.shape[0], self.N, self.T
        h_src = self.img_in(G.patchify(src, self.P)) + self.pos + self.source_embed  # no timestep
        h_tgt = self.img_in(G.patchify(x_t, self.P)) + self.pos + self.t_embed(t)[:, None]
        dt = self.embed_tokens.weight.dtype
        h = torch.cat([h_src.to(dt), self.embed_tokens(text), h_tgt.to(dt)], 1)  # (B, N + T + N, D)
        mask = self.mask
        if keep is not None and not bool(keep.all()):
            mask = self.mask.expand(B, 1, -1, -1).clone()  # (B, 1, L, L), broadcast over heads
            mask[~keep, :, N + T:, :N] = False  # the target no longer sees the source
        rope = (self.rope_cos, self.rope_sin)
        for layer in self.layers:
            h = layer(h, mask, rope)
        return self.norm(h)[:, N + T:]

    def forward(self, x_t, t, cond):
        h_img = self.backbone(x_t, t, cond)
        out = self.head(G.patchify(x_t, self.P), h_img, t) if self.head_kind == "ddt" else self.head(h_img)
        return G.unpatchify(out, *self.latent_shape, self.P)


def build_model(cfg, latent_shape):
    return EditModel(G.MODELS[cfg["model"]], latent_shape, cfg["patch"], cfg["text_len"], cfg["head"],
                     len(G.TextTokenizer()))


def init_from_t2i(model, state):
    """Load a T2I state dict into an EditModel; every T2I tensor must land (one sentence if not).
    Returns the names that start fresh (only source_embed)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"source_embed"}:
        raise GeneratorError(f"the T2I checkpoint does not fit the edit model (missing {missing}, unexpected "
                             f"{unexpected}); pass a generator.py checkpoint")
    return missing


# ------------------------------------------------------------------------------------------
# 3. Data: (source, instruction, target) triplets, both images encoded once and cached
# ------------------------------------------------------------------------------------------

def edit_dataset(cfg, size):
    if cfg["data"]:
        try:
            return tokenizer.EditJsonlDataset(cfg["data"], size), {"data": os.path.abspath(cfg["data"])}
        except (ValueError, FileNotFoundError) as e:
            raise GeneratorError(str(e))
    if cfg["n_train"] < 1:
        raise GeneratorError(f"preset {cfg['preset']} trains on real edit triplets; pass --data FILE.jsonl or "
                             f"--n-train N for world edits")
    return tokenizer.WorldEdits("train", cfg["n_train"], size), {"world_edits": cfg["n_train"]}


def edit_cache(cfg, tok, tok_path, size, device, rank0=True):
    """{"source", "target": (N, C, h, w) float32, "instructions": [str]} from <cache>/edits-<key>.pt,
    made once by rank 0. The key hashes the tokenizer file and the dataset."""
    ds, spec = edit_dataset(cfg, size)
    key = hashlib.sha1(json.dumps({"tokenizer": G.file_hash(tok_path), "size": size, **spec},
                                  sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(cfg["cache"], f"edits-{key}.pt")
    if rank0 and not os.path.isfile(path):
        os.makedirs(cfg["cache"], exist_ok=True)
        src, tgt, ins, t0 = [], [], [], time.time()
        loader = DataLoader(ds, batch_size=cfg["cache_batch"], num_workers=cfg["workers"])
        with torch.no_grad():
            for x, text, y in tqdm(loader, desc="encoding edit pairs", disable=not sys.stderr.isatty()):
                z = tokenizer.encode(tok, torch.cat([x, y]).to(device)).float().cpu()
                src.append(z[:len(x)]), tgt.append(z[len(x):]), ins.extend(text)
        torch.save({"source": torch.cat(src), "target": torch.cat(tgt), "instructions": ins,
                    "tokenizer": tok_path}, path + ".tmp")
        os.replace(path + ".tmp", path)  # atomic
        print0(f"cached {len(ins)} edit pairs in {path} ({time.time() - t0:.0f} s)")
    if dist.is_initialized():
        dist.barrier()
    return torch.load(path, map_location="cpu", weights_only=True), path


def source_draws(idx, seed, step):
    """A uniform per sample for source dropout, from its own seeded stream (see generator.draws).
    The key holds ints only: Python salts the hash of a str per process, which would give every
    rank, and a resumed run, other draws."""
    g = torch.Generator()
    out = []
    for i in idx.tolist():
        g.manual_seed(hash((seed, step, int(i), 1)) % 2**63)
        out.append(torch.rand((), generator=g))
    return torch.stack(out)


# ------------------------------------------------------------------------------------------
# 4. Training
# ------------------------------------------------------------------------------------------

def load_edit_run(path, what="edit checkpoint"):
    return G.load_run(path, what, script=SCRIPT, name="edit.pt")


def train(cfg, ddp, rank, local_rank, world, device):
    out, rank0 = cfg["out"], rank == 0
    if cfg["batch_size"] % world:
        raise GeneratorError(f"--batch-size {cfg['batch_size']} (global) does not split over {world} processes")
    ck = None
    if cfg["resume"]:
        ck, _ = load_edit_run(os.path.join(out, "edit.pt"), "checkpoint to resume")
        cfg["init"] = ck["init"]  # the run keeps the T2I checkpoint it started from (absolute path)
        changed = {k: (ck["config"].get(k), v) for k, v in cfg.items()
                   if k not in ("resume", "steps", "init") + MODEL_KEYS and ck["config"].get(k) != v}
        if changed:
            print0("resuming with changed settings: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
    if not cfg["init"]:
        raise GeneratorError("no --init given; pass the text-to-image run to fine-tune, e.g. runs/generator-cpu")
    t2i, t2i_path = G.load_run(cfg["init"], "T2I checkpoint given to --init")
    for k in MODEL_KEYS:
        cfg[k] = t2i["config"][k]
    if rank0:
        os.makedirs(out, exist_ok=True)

    # ---- the T2I run's frozen tokenizer (the same latents it learnt) and the pair cache
    tok_path = cfg["tokenizer"] or t2i["tokenizer"]
    tok, latent_shape, size = G.open_tokenizer(tok_path, device, t2i.get("tokenizer_sha1"))
    if tuple(latent_shape) != tuple(t2i["latent_shape"]):
        raise GeneratorError(f"the tokenizer makes {latent_shape} latents, the T2I model {t2i['latent_shape']}")
    cache, cache_path = edit_cache(cfg, tok, tok_path, size, device, rank0)
    tok_sha1 = G.file_hash(tok_path)
    del tok
    text = G.TextTokenizer()
    try:
        ids = text(cache["instructions"], cfg["text_len"])
    except GeneratorError as e:
        raise GeneratorError(f"an instruction is too long for the T2I model's text context: {e}")
    null = text([""], cfg["text_len"])
    n = len(ids)
    if n < cfg["batch_size"]:
        raise GeneratorError(f"the training set has {n} pairs, fewer than one batch of {cfg['batch_size']}")

    # ---- model (T2I weights + a fresh source embedding), EMA, optimiser
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg, latent_shape)
    fresh = init_from_t2i(model, t2i["ema"])  # the T2I model one would sample from
    ema = build_model(cfg, latent_shape).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.95), weight_decay=cfg["weight_decay"])
    step, (epoch, pos) = 0, (0, 0)
    if ck is not None:
        model.load_state_dict(ck["model"]), ema.load_state_dict(ck["ema"]), opt.load_state_dict(ck["opt"])
        step, (epoch, pos) = ck["step"], ck["data"]
    else:
        print0(f"initialised from {t2i_path} (T2I step {t2i['step']}, EMA weights): "
               f"{len(t2i['ema'])} tensors loaded, new: {', '.join(fresh)}")
    model.to(device), ema.to(device).eval()
    s = cfg["shift"] if cfg["shift"] else t2i["shift"]
    print0(f"{world} process(es) on {device} | edit model {cfg['model']}: "
           f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters | {n} cached pairs | "
           f"training shift {s:.3f}")
    fwd = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None) if ddp else model
    fwd = torch.compile(fwd) if cfg["compile"] else fwd
    if rank0:
        if ck is not None:
            G.trim_metrics(out, step)
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump({**cfg, "latent_shape": latent_shape, "shift_used": s, "cache_file": cache_path}, f, indent=1)

    # ---- the loop: flow matching on the target only; the source is always clean
    amp, B = device.type == "cuda", cfg["batch_size"]
    mean, std = model.latent_mean.cpu(), model.latent_std.cpu()
    src_all, tgt_all = (cache["source"] - mean) / std, (cache["target"] - mean) / std
    log = G.StepLog(cfg, out, rank0, step, "edit")
    time_up = tokenizer.Deadline(cfg["time_limit"], device)
    while step < cfg["steps"]:
        if (pos + 1) * B > n:
            epoch, pos = epoch + 1, 0
        idx = G.batch_indices(n, B, rank, world, cfg["seed"], epoch, pos)
        pos += 1
        eps, nrm, u = G.draws(idx, latent_shape, cfg["seed"], step)
        keep = source_draws(idx, cfg["seed"], step) >= cfg["source_dropout"]
        t = G.shift_t(torch.sigmoid(nrm), s).to(device)
        text_ids = torch.where((u < cfg["instruction_dropout"])[:, None], null, ids[idx])
        cond = (text_ids.to(device), src_all[idx].to(device), keep.to(device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = G.flow_loss(fwd, tgt_all[idx].to(device), cond, t, eps.to(device))
        logged, lr, gnorm = G.optimiser_step(model, ema, opt, loss, cfg, step, out)
        step += 1
        stop = time_up()
        log(step, B, logged, lr, gnorm, device, force=stop)
        if stop:
            print0(f"--time-limit {cfg['time_limit']} min reached at step {step}/{cfg['steps']}; --resume continues")
        if step % cfg["ckpt_every"] == 0 or step == cfg["steps"] or stop:
            save_checkpoint(os.path.join(out, "edit.pt"), dict(
                script=SCRIPT, step=step, config=cfg, model=model.state_dict(), ema=ema.state_dict(),
                opt=opt.state_dict(), data=(epoch, pos), latent_shape=latent_shape, world_size=world,
                tokenizer=os.path.abspath(tok_path), tokenizer_sha1=tok_sha1, shift=s, init=os.path.abspath(t2i_path)))
            log.restart_clock()
        if stop:
            break
    log.close()
    if rank0 and cfg["n_samples"] and not cfg["data"]:  # a look at the result: held-out world edits
        tok, _, _ = G.open_tokenizer(tok_path, device)
        val = tokenizer.WorldEdits("val", cfg["n_samples"], size)
        items = [val[i] for i in range(len(val))]
        outs = edit_images(ema, tok, torch.stack([x for x, _, _ in items]), [e for _, e, _ in items],
                           steps=cfg["sample_steps"], shift=cfg["sample_shift"], cfg_text=cfg["cfg_text"],
                           cfg_image=cfg["cfg_image"], seed=cfg["seed"])
        save_pairs(os.path.join(out, "edits.png"), [x for x, _, _ in items], outs, [e for _, e, _ in items],
                   f"{cfg['model']} edit model, step {step} (EMA)", targets=[y for _, _, y in items])
    return log.last


# ------------------------------------------------------------------------------------------
# 5. Sampling with two guidance scales (InstructPix2Pix's form):
#    v = v(-, -) + s_img (v(src, -) - v(-, -)) + s_txt (v(src, text) - v(src, -))
#    where "-" is the dropped source (hidden by the mask) or the null instruction.
# ------------------------------------------------------------------------------------------

@torch.no_grad()
def edit_sample(model, noise, src, text, null, steps=50, shift=3.0, cfg_text=3.0, cfg_image=1.5):
    """Euler from t = 1 to 0 on the shifted grid; src is the normalised clean source latent."""
    ts = G.shift_t(torch.linspace(1, 0, steps + 1), shift).tolist()
    x, B = noise, len(noise)
    guided = cfg_text != 1.0 or cfg_image != 1.0
    ones = torch.ones(B, dtype=torch.bool, device=x.device)
    for t0, t1 in zip(ts[:-1], ts[1:]):
        t = torch.full((B,), t0, device=x.device)
        if guided:  # the three predictions in one forward pass
            cond = (torch.cat([text, null, null]), torch.cat([src, src, src]), torch.cat([ones, ones, ~ones]))
            v_full, v_img, v_none = model(torch.cat([x, x, x]), torch.cat([t, t, t]), cond).float().chunk(3)
            v = v_none + cfg_image * (v_img - v_none) + cfg_text * (v_full - v_img)
        else:
            v = model(x, t, (text, src, ones)).float()
        x = x + (t1 - t0) * v
    return x


@torch.no_grad()
def edit_images(model, tok, images, instructions, steps=50, shift=3.0, cfg_text=3.0, cfg_image=1.5, seed=0,
                batch=64, first=0):
    """images (B, 3, S, S) in [-1, 1] + instructions -> edited images (B, 3, S, S). Output i starts
    from noise seeded by (seed, first + i), so a result does not depend on the batch size."""
    for s in instructions:
        if not s.strip():
            raise GeneratorError("the instruction is empty; say what to change, e.g. 'make the red circle blue'")
    text = G.TextTokenizer()
    ids = text(instructions, model.T)  # raises the "too long" sentence
    dev = model.latent_mean.device
    outs = []
    for b in range(0, len(images), batch):
        x = images[b:b + batch].to(dev)
        src = (tokenizer.encode(tok, x).float() - model.latent_mean) / model.latent_std
        noise = torch.stack([torch.randn(model.latent_shape, generator=torch.Generator().manual_seed(
            hash((seed, first + b + i)) % 2**63)) for i in range(len(x))]).to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            z = edit_sample(model, noise, src, ids[b:b + batch].to(dev), text([""] * len(x), model.T).to(dev),
                            steps, shift, cfg_text, cfg_image)
        outs.append(tokenizer.decode(tok, z.float() * model.latent_std + model.latent_mean).cpu())
    return torch.cat(outs)


def load_edit_model(path, device="cpu"):
    """(EMA model in eval mode, its config, the tokenizer path) from an edit.py checkpoint or run."""
    ck, path = load_edit_run(path)
    model = build_model(ck["config"], ck["latent_shape"])
    model.load_state_dict(ck["ema"])
    return model.to(device).eval(), {**ck["config"], "tokenizer_sha1": ck.get("tokenizer_sha1")}, ck["tokenizer"]


def save_pairs(path, sources, outputs, instructions, title, targets=None, per_row=1):
    """A grid of (input, output[, the world's exact target]) triplets, `per_row` triplets side by
    side, each headed by its instruction."""
    import textwrap
    from matplotlib.figure import Figure
    k = 3 if targets is not None else 2
    n = len(sources)
    rows = -(-n // per_row)
    fig = Figure(figsize=(1.9 * k * per_row, 2.1 * rows + 0.4))
    for i in range(n):
        trip = [sources[i], outputs[i]] + ([targets[i]] if targets is not None else [])
        for j, (img, name) in enumerate(zip(trip, ("input", "output", "target"))):
            ax = fig.add_subplot(rows, k * per_row, (i // per_row) * k * per_row + (i % per_row) * k + j + 1)
            ax.imshow(tokenizer.to_uint8(img), interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(("\n".join(textwrap.wrap(instructions[i], 34)) + "\n" if j == 0 else "") + name,
                         fontsize=7, loc="left" if j == 0 else "center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)


def cmd_sample(argv):
    p = argparse.ArgumentParser(prog="edit.py sample", description="edit one image; writes input | output")
    p.add_argument("--ckpt", required=True, help="an edit.py run folder or its edit.pt")
    p.add_argument("--image", required=True, help="the input image (resized and centre-cropped to the model's size)")
    p.add_argument("--instruction", required=True, help="what to change, e.g. 'make the red circle blue'")
    p.add_argument("--out", default="edit.png", help="PNG to write (input and output side by side)")
    p.add_argument("--tokenizer", default=None, help="tokenizer checkpoint (default: the one used in training)")
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: the run's)")
    p.add_argument("--sample-shift", type=float, default=None, help="inference timestep shift")
    p.add_argument("--cfg-text", type=float, default=None, help="instruction guidance scale")
    p.add_argument("--cfg-image", type=float, default=None, help="source-image guidance scale")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--device", default=None, choices=("cpu", "cuda", "mps"), help="default: cuda if available")
    a = p.parse_args(argv)
    if not a.instruction.strip():
        raise GeneratorError("the instruction is empty; say what to change, e.g. 'make the red circle blue'")
    if not os.path.isfile(a.image):
        raise GeneratorError(f"the input image {a.image} does not exist; pass the path of a PNG or JPEG")
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, cfg, tok_path = load_edit_model(a.ckpt, device)
    tok, shape, size = G.open_tokenizer(a.tokenizer or tok_path, device, cfg["tokenizer_sha1"])
    if tuple(shape) != tuple(model.latent_shape):
        raise GeneratorError(f"the tokenizer makes {tuple(shape)} latents but the edit model was trained on "
                             f"{tuple(model.latent_shape)}; pass the tokenizer it was trained with")
    try:
        from PIL import Image
        with Image.open(a.image) as im:
            w, h = im.size
        x = tokenizer.load_image(a.image, size)
    except (ValueError, OSError) as e:
        raise GeneratorError(f"cannot read the input image {a.image}: {e}")
    if (w, h) != (size, size):
        print(f"note: {a.image} is {w}x{h}; resized and centre-cropped to the model's {size}x{size}")
    kw = dict(steps=a.steps or cfg["sample_steps"], shift=a.sample_shift or cfg["sample_shift"],
              cfg_text=a.cfg_text if a.cfg_text is not None else cfg["cfg_text"],
              cfg_image=a.cfg_image if a.cfg_image is not None else cfg["cfg_image"], seed=a.seed)
    y = edit_images(model, tok, x[None], [a.instruction], **kw)
    save_pairs(a.out, [x], [y[0]], [a.instruction], f"{kw['steps']} Euler steps, text CFG {kw['cfg_text']}, "
               f"image CFG {kw['cfg_image']}")
    print(f"wrote {a.out}")
    return a.out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="PS-VAE editing: fine-tune a generator.py checkpoint on edit triplets "
                                "(`edit.py sample --help` for sampling)")
    g = p.add_argument_group("run")
    g.add_argument("--init", default=None, help="the T2I run (generator.py folder or generator.pt) to start from")
    g.add_argument("--tokenizer", default=None, help="the frozen tokenizer (default: the T2I run's)")
    g.add_argument("--preset", choices=list(PRESETS), default="cpu", help="a dict of defaults; flags override it")
    g.add_argument("--out", default=None, help="run folder (default runs/edit-<preset>)")
    g.add_argument("--resume", action="store_true", help="continue exactly from <out>/edit.pt")
    g.add_argument("--device", default=None, choices=("cpu", "cuda", "mps"), help="default: cuda if available")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--seed", type=int, default=0, help="seed of the new weights, data order and noise")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None, help="JSONL of {input, instruction, output} paths instead of world edits")
    g.add_argument("--n-train", type=int, help="number of world training edit pairs")
    g.add_argument("--cache", default=os.path.join("runs", "cache"), help="folder of cached latents")
    g.add_argument("--cache-batch", type=int, default=128, help="pairs per tokenizer batch when caching")
    g.add_argument("--workers", type=int, default=0, help="DataLoader workers while caching")
    g = p.add_argument_group("flow matching and optimisation")
    g.add_argument("--shift", type=float, default=None, help="training timestep shift (default: the T2I run's)")
    g.add_argument("--instruction-dropout", type=float, default=0.1, help="share of null instructions")
    g.add_argument("--source-dropout", type=float, default=0.1, help="share of hidden sources (independent)")
    G.add_optimisation_args(g)
    g = p.add_argument_group("sampling")
    g.add_argument("--sample-steps", type=int, help="Euler steps")
    g.add_argument("--sample-shift", type=float, default=3.0, help="inference timestep shift (paper 3)")
    g.add_argument("--cfg-text", type=float, help="instruction guidance scale")
    g.add_argument("--cfg-image", type=float, help="source-image guidance scale")
    g.add_argument("--n-samples", type=int, help="held-out edits in the edits.png written at the end (0 = none)")
    G.add_logging_args(p)
    pre, _ = p.parse_known_args(argv)
    p.set_defaults(**PRESETS[pre.preset])
    args = p.parse_args(argv)
    if args.out is None:
        args.out = os.path.join("runs", f"edit-{args.preset}")
    return vars(args)


def main(argv=None):
    return G.run_cli(SCRIPT, argv, parse_args, train, cmd_sample)


if __name__ == "__main__":
    main()
