"""edit.py -- instruction-based image editing: a generator.py checkpoint fine-tuned to edit.

Paper: Zhang et al. 2025, Sec. 4.1 "Instruction Editing": the text-to-image model is resumed and
trained on (input image, instruction, output image) triplets. Read top to bottom:

  1. presets (the network itself comes from the T2I checkpoint)
  2. EditModel: generator.Generator with a second image in the sequence, the clean source
  3. training: both images of a triplet encoded once and cached, then generator.fit
  4. sampling with two guidance scales (image and text) and the `sample` sub-command; main()

  python edit.py --init runs/generator-cpu --preset cpu
  torchrun --nproc_per_node=2 edit.py --init runs/generator-cpu --preset cpu
  python edit.py sample --ckpt runs/edit-cpu --image in.png --instruction "make the red circle blue"
  python evaluate.py gedit --ckpt runs/edit-cpu            # mini-GEdit: adherence and consistency

The sequence is [clean source latent (N tokens) | instruction (T tokens) | noisy target latent
(N tokens)]. What the paper states: the input image's clean latent comes first, the instruction
is causal, the image latents attend to each other fully. (In the tensor the instruction sits
first, where the T2I model's layers expect the language branch: attention does not depend on
where a token sits, since its position travels with it in RoPE and the mask.) Where it is silent
we chose:
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
import os
import textwrap

import torch
import torch.nn as nn

import generator as G
from generator import GeneratorError
from common import print0, write_config
from world import EditJsonlDataset, WorldEdits, load_image, to_uint8

SCRIPT = "edit.py"  # written into every checkpoint, checked when one is loaded

# ------------------------------------------------------------------------------------------
# 1. Presets: a dict of argparse defaults; any flag overrides it. The network's size, patch and
#    text context come from the T2I checkpoint, never from here.
# ------------------------------------------------------------------------------------------

PRESETS = {
    # tests: seconds on CPU
    "tiny": dict(batch_size=8, lr=5e-4, warmup=0, steps=12, n_train=48, ema=0.9, log_every=1, ckpt_every=6,
                 sample_steps=6, n_samples=2, guidance_text=3.0, guidance_image=1.5),
    # the laptop demo on 2 CPU cores (one thread each is fastest on a busy machine)
    "cpu": dict(batch_size=32, lr=5e-4, warmup=100, steps=1500, n_train=12000, ema=0.995, log_every=25,
                ckpt_every=250, sample_steps=50, n_samples=8, guidance_text=3.0, guidance_image=1.5),
    # the miniature paper on one GPU
    "world": dict(batch_size=256, lr=1e-4, warmup=500, steps=20000, n_train=200000, ema=0.9999, log_every=100,
                  ckpt_every=2000, sample_steps=50, n_samples=8, guidance_text=3.0, guidance_image=1.5),
    # the paper: 50k iterations from the T2I checkpoint; triplets from --data
    "paper": dict(batch_size=256, lr=1e-4, warmup=500, steps=50000, n_train=0, ema=0.9999, log_every=100,
                  ckpt_every=5000, sample_steps=50, n_samples=8, guidance_text=3.0, guidance_image=1.5),
}
MODEL_KEYS = G.SHAPE_KEYS  # the network's sizes: taken from the T2I checkpoint's config


# ------------------------------------------------------------------------------------------
# 2. The model: the T2I network plus a source slot
# ------------------------------------------------------------------------------------------

class EditModel(G.Generator):
    """generator.Generator over [source (N) | text (T) | noisy target (N)], held text-first in the
    tensor. Every T2I weight keeps its name, so a T2I state dict loads into it (any of Table 1's
    fusion designs: the source and target tokens go through the image branch); the one new tensor
    is `source_embed`. forward takes cond = (text ids (B, T), source latent (B, C, H, W), keep (B,)
    bool or None): keep[b] False hides the source from sample b (image-guidance dropout)."""

    def __init__(self, cfg, latent_shape, patch=1, text_len=16, head="ddt", text=None, fusion="transfusion"):
        super().__init__(cfg, latent_shape, patch, text_len, head, text, fusion)
        N, T, D = self.N, text_len, cfg.width
        self.source_embed = nn.Parameter(torch.randn(D) * 0.02)
        L = T + N + N  # text | source | target
        mask = torch.zeros(L, L, dtype=torch.bool)  # True = may attend; rows are queries
        mask[:T, :T] = torch.ones(T, T).tril().bool()  # text: causal, text only
        mask[T:, :] = True  # source and target: the instruction and both images
        self.register_buffer("mask", mask, persistent=False)
        cos, sin = G.rope_tables(list(range(T)) + [None] * (2 * N), D // cfg.heads, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def backbone(self, x_t, t, cond):
        """Hidden states of the target tokens after the last layer and the final norm: (B, N, D)."""
        text, src, keep = cond
        N, T = self.N, self.T
        h_src = self.img_in(G.patchify(src, self.P)) + self.pos + self.source_embed  # no timestep
        dt = self.embed_tokens.weight.dtype
        h = torch.cat([self.embed_tokens(text), h_src.to(dt), self.image_tokens(x_t, t).to(dt)], 1)  # (B, T+N+N, D)
        mask = self.mask
        if keep is not None and not bool(keep.all()):
            mask = self.mask.expand(len(x_t), 1, -1, -1).clone()  # (B, 1, L, L), broadcast over heads
            mask[~keep, :, T + N:, T:T + N] = False  # the target no longer sees the source
        return self.layers_over(h, mask, (self.rope_cos, self.rope_sin))[:, T + N:]

    def forward(self, x_t, t, cond):
        return self.velocity(x_t, t, self.backbone(x_t, t, cond))


def build_model(cfg, latent_shape):
    """The EditModel of a config (the T2I run's sizes), with its text tokenizer."""
    return EditModel(G.model_config(cfg), latent_shape, cfg["patch"], cfg["text_len"], cfg["head"], G.text_tokenizer(cfg),
                     cfg.get("fusion") or "transfusion")


def init_from_t2i(model, state):
    """Load a T2I state dict into an EditModel; every T2I tensor must land (one sentence if not).
    Returns the names that start fresh (only source_embed)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"source_embed"}:
        raise GeneratorError(f"the T2I checkpoint does not fit the edit model (missing {missing}, unexpected "
                             f"{unexpected}); pass a generator.py checkpoint")
    return missing


# ------------------------------------------------------------------------------------------
# 3. Training: (source, instruction, target) triplets, both images encoded once and cached; the
#    T2I model's weights, then generator.fit with flow matching on the target only.
# ------------------------------------------------------------------------------------------

def edit_dataset(cfg, size):
    """(dataset of (source, instruction, target), its description for the cache key)."""
    if cfg["data"]:
        try:
            return EditJsonlDataset(cfg["data"], size), {"data": os.path.abspath(cfg["data"])}
        except (ValueError, FileNotFoundError) as e:
            raise GeneratorError(str(e))
    if cfg["n_train"] < 1:
        raise GeneratorError(f"preset {cfg['preset']} trains on real edit triplets; pass --data FILE.jsonl or "
                             f"--n-train N for world edits")
    return WorldEdits("train", cfg["n_train"], size), {"world_edits": cfg["n_train"]}


def load_edit_run(path, what="edit checkpoint"):
    return G.load_run(path, what, script=SCRIPT, name="edit.pt")


def train(cfg, ddp, rank, local_rank, world, device):
    ck = G.start_run(cfg, world, "edit.pt", SCRIPT, keep=("resume", "steps", "init") + MODEL_KEYS)
    if ck is not None:
        cfg["init"] = ck["init"]  # the run keeps the T2I checkpoint it started from (absolute path)
    if not cfg["init"]:
        raise GeneratorError("no --init given; pass the text-to-image run to fine-tune, e.g. runs/generator-cpu")
    t2i, t2i_path = G.load_run(cfg["init"], "T2I checkpoint given to --init")
    cfg.update({k: t2i["config"].get(k) for k in MODEL_KEYS})

    # the T2I run's frozen tokenizer (the same latents it learnt) and the pair cache
    tok_path = cfg["tokenizer"] or t2i["tokenizer"]
    tok, latent_shape, size = G.open_tokenizer(tok_path, device, t2i.get("tokenizer_sha1"))
    if tuple(latent_shape) != tuple(t2i["latent_shape"]):
        raise GeneratorError(f"the tokenizer makes {latent_shape} latents, the T2I model {t2i['latent_shape']}")

    def encode_pairs(batch, enc=tok.encode):
        x, text, y = batch
        z = enc(torch.cat([x, y]).to(device)).float().cpu()
        return {"source": z[:len(x)], "target": z[len(x):], "instructions": list(text)}

    cache, cache_path = G.latent_cache(cfg, "edits", edit_dataset(cfg, size), tok_path, size, encode_pairs)
    del tok
    n = len(cache["instructions"])
    if n < cfg["batch_size"]:
        raise GeneratorError(f"the training set has {n} pairs, fewer than one batch of {cfg['batch_size']}")

    # the T2I weights (its EMA: the model one would sample from) and a fresh source embedding
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg, latent_shape)
    ids, cut = G.text_ids(model.text, cache["instructions"], cfg["text_len"], "instructions")
    null = model.text([""], cfg["text_len"])
    fresh = init_from_t2i(model, t2i["ema"])
    if ck is None:
        print0(f"initialised from {t2i_path} (T2I step {t2i['step']}, EMA weights): "
               f"{len(t2i['ema'])} tensors loaded, new: {', '.join(fresh)}")
    s = cfg["shift"] or t2i["shift"]
    record = dict(script=SCRIPT, latent_shape=latent_shape, tokenizer=os.path.abspath(tok_path),
                  tokenizer_sha1=G.file_hash(tok_path), shift=s, init=os.path.abspath(t2i_path))
    run = G.Run(cfg, model, build_model(cfg, latent_shape), ck, ddp, rank, local_rank, world, device, record, "edit.pt")
    print0(f"{world} process(es) on {device} | edit model {cfg['model']}: "
           f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters | {n} cached pairs | "
           f"training shift {s:.3f}")
    write_config(cfg["out"], {**cfg, "latent_shape": latent_shape, "shift_used": s, "cache_file": cache_path,
                              "instructions_cut": cut})
    mean, std = model.latent_mean.cpu(), model.latent_std.cpu()
    src_all, tgt_all = (cache["source"] - mean) / std, (cache["target"] - mean) / std

    def make_batch(idx, step):  # x0: the target; the condition: instruction (or null), clean source, kept?
        keep = ~G.coin(idx, cfg["source_dropout"], cfg["seed"], step, 3)
        text = torch.where(G.coin(idx, cfg["instruction_dropout"], cfg["seed"], step, 2)[:, None], null, ids[idx])
        return tgt_all[idx], (text.to(device), src_all[idx].to(device), keep.to(device))

    last = G.fit(cfg, run, make_batch, n, s, device)
    if rank == 0 and cfg["n_samples"] and not cfg["data"]:  # a look at the result: held-out world edits
        val = WorldEdits("val", cfg["n_samples"], size)
        items = [val[i] for i in range(len(val))]
        outs = edit_images(run.ema, G.open_tokenizer(tok_path, device)[0], torch.stack([x for x, _, _ in items]),
                           [e for _, e, _ in items], steps=cfg["sample_steps"], shift=cfg["sample_shift"],
                           guidance_text=cfg["guidance_text"], guidance_image=cfg["guidance_image"], seed=cfg["seed"])
        save_pairs(os.path.join(cfg["out"], "edits.png"), [x for x, _, _ in items], outs, [e for _, e, _ in items],
                   f"{cfg['model']} edit model, step {run.step} (EMA)", targets=[y for _, _, y in items])
    return last


# ------------------------------------------------------------------------------------------
# 4. Sampling with two guidance scales (InstructPix2Pix's form):
#    v = v(-, -) + s_img (v(src, -) - v(-, -)) + s_txt (v(src, text) - v(src, -))
#    where "-" is the dropped source (hidden by the mask) or the null instruction.
# ------------------------------------------------------------------------------------------

@torch.no_grad()
def edit_sample(model, noise, src, text, null, steps=50, shift=3.0, guidance_text=3.0, guidance_image=1.5):
    """Euler from t = 1 to 0 on the shifted grid; src is the normalised clean source latent."""
    ts = G.shift_t(torch.linspace(1, 0, steps + 1), shift).tolist()
    x, B = noise, len(noise)
    guided = guidance_text != 1.0 or guidance_image != 1.0
    ones = torch.ones(B, dtype=torch.bool, device=x.device)
    for t0, t1 in zip(ts[:-1], ts[1:]):
        t = torch.full((B,), t0, device=x.device)
        if guided:  # the three predictions in one forward pass
            cond = (torch.cat([text, null, null]), torch.cat([src, src, src]), torch.cat([ones, ones, ~ones]))
            v_full, v_img, v_none = model(torch.cat([x, x, x]), torch.cat([t, t, t]), cond).float().chunk(3)
            v = v_none + guidance_image * (v_img - v_none) + guidance_text * (v_full - v_img)
        else:
            v = model(x, t, (text, src, ones)).float()
        x = x + (t1 - t0) * v
    return x


@torch.no_grad()
def edit_images(model, tok, images, instructions, steps=50, shift=3.0, guidance_text=3.0, guidance_image=1.5,
                seed=0, batch=64, first=0):
    """images (B, 3, S, S) in [-1, 1] + instructions -> edited images (B, 3, S, S). Output i starts
    from noise seeded by (seed, first + i), so a result does not depend on the batch size."""
    for s in instructions:
        if not s.strip():
            raise GeneratorError("the instruction is empty; say what to change, e.g. 'make the red circle blue'")
    text = model.text
    ids = text(instructions, model.T)  # raises the "too long" sentence
    dev = model.latent_mean.device
    outs = []
    for b in range(0, len(images), batch):
        x = images[b:b + batch].to(dev)
        src = (tok.encode(x).float() - model.latent_mean) / model.latent_std
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            z = edit_sample(model, G.start_noise(model, first + b, len(x), seed), src, ids[b:b + batch].to(dev),
                            text([""] * len(x), model.T).to(dev), steps, shift, guidance_text, guidance_image)
        outs.append(tok.decode(z.float() * model.latent_std + model.latent_mean).cpu())
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
    from matplotlib.figure import Figure
    k = 3 if targets is not None else 2
    n = len(sources)
    rows = -(-n // per_row)
    fig = Figure(figsize=(1.9 * k * per_row, 2.1 * rows + 0.4))
    for i in range(n):
        trip = [sources[i], outputs[i]] + ([targets[i]] if targets is not None else [])
        for j, (img, name) in enumerate(zip(trip, ("input", "output", "target"))):
            ax = fig.add_subplot(rows, k * per_row, (i // per_row) * k * per_row + (i % per_row) * k + j + 1)
            ax.imshow(to_uint8(img), interpolation="nearest")
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
    p.add_argument("--guidance-text", type=float, default=None, help="instruction guidance scale")
    p.add_argument("--guidance-image", type=float, default=None, help="source-image guidance scale")
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
        x = load_image(a.image, size)
    except (ValueError, OSError) as e:
        raise GeneratorError(f"cannot read the input image {a.image}: {e}")
    if (w, h) != (size, size):
        print(f"note: {a.image} is {w}x{h}; resized and centre-cropped to the model's {size}x{size}")
    kw = dict(steps=a.steps or cfg["sample_steps"], shift=a.sample_shift or cfg["sample_shift"], seed=a.seed,
              guidance_text=a.guidance_text if a.guidance_text is not None else cfg["guidance_text"],
              guidance_image=a.guidance_image if a.guidance_image is not None else cfg["guidance_image"])
    y = edit_images(model, tok, x[None], [a.instruction], **kw)
    save_pairs(a.out, [x], [y[0]], [a.instruction], f"{kw['steps']} Euler steps, text guidance "
               f"{kw['guidance_text']}, image guidance {kw['guidance_image']}")
    print(f"wrote {a.out}")
    return a.out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="PS-VAE editing: fine-tune a generator.py checkpoint on edit triplets "
                                "(`edit.py sample --help` for sampling)")
    g = p.add_argument_group("run")
    g.add_argument("--init", default=None, help="the T2I run (generator.py folder or generator.pt) to start from")
    g.add_argument("--tokenizer", default=None, help="the frozen tokenizer (default: the T2I run's)")
    g.add_argument("--preset", choices=list(PRESETS), default="cpu", help="a dict of defaults; flags override it")
    G.add_run_args(g, "edit")
    G.add_training_args(p, "JSONL of {input, instruction, output} paths instead of world edits", 128)
    g = p.add_argument_group("flow matching")
    g.add_argument("--shift", type=float, default=None, help="training timestep shift (default: the T2I run's)")
    g.add_argument("--instruction-dropout", type=float, default=0.1, help="share of null instructions")
    g.add_argument("--source-dropout", type=float, default=0.1, help="share of hidden sources (independent)")
    g = p.add_argument_group("sampling")
    g.add_argument("--sample-steps", type=int, help="Euler steps")
    g.add_argument("--sample-shift", type=float, default=3.0, help="inference timestep shift (paper 3)")
    g.add_argument("--guidance-text", type=float, help="instruction guidance scale")
    g.add_argument("--guidance-image", type=float, help="source-image guidance scale")
    g.add_argument("--n-samples", type=int, help="held-out edits in the edits.png written at the end (0 = none)")
    pre, _ = p.parse_known_args(argv)
    p.set_defaults(**PRESETS[pre.preset])
    args = p.parse_args(argv)
    args.out = args.out or os.path.join("runs", f"edit-{args.preset}")
    return vars(args)


def main(argv=None):
    return G.run_cli(SCRIPT, argv, parse_args, train, cmd_sample)


if __name__ == "__main__":
    main()
