"""Text to 3-D without 3-D data: a flow from a shape's captions to its Stage-1 code.

Every training shape is described in words by flowsdf.data.captions (its family, proportions,
size, colour, composition: varied templates, some attribute pairs kept out as unseen
combinations). The Stage-1 run's codes of the training shapes are the latent dataset: the code
the encoder gives each shape's input picture (or a code table's fitted code). A text encoder and
a velocity net of the run's text_velocity kind learn p(code | caption) by conditional flow matching,
with condition dropout for classifier-free guidance; the Stage-1 decoder turns a sampled code into
a shape. No 3-D data and no rendering: the codes were learnt from silhouettes.

    RUN/text/last.safetensors   the text encoder and the velocity net; meta: sigma, the iteration,
                                the tokenizer (its vocabulary as JSON) and the Stage-1 checkpoint
    RUN/text/summary.json       the loss history, times, provenance

Resumable: the checkpoint is written every `SAVE_EVERY` iterations and at the end; a rerun with
--resume continues from it (the batches are drawn from a generator seeded by (seed, iteration),
so a resumed run draws what the uninterrupted one would).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from tqdm import tqdm

from flowsdf import checkpoint, runs
from flowsdf.build import build_stage1, build_text_flow
from flowsdf.checkpoint import write_json
from flowsdf.config import Config
from flowsdf.data.captions import captions_for
from flowsdf.device import pick_device
from flowsdf.errors import FlowSDFError
from flowsdf.flow import (
    FlowConfig,
    draw_objective_noise,
    drop_condition,
    flow_loss,
    noise_scale,
)
from flowsdf.provenance import provenance
from flowsdf.runs import run_data
from flowsdf.text.tokenizer import WordTokenizer, caption_tokenizer
from flowsdf.train.distill import init_record
from flowsdf.train.flow import check_stage1_run
from flowsdf.train.loop import grad_norm

SAVE_EVERY = 500  # iterations between checkpoints


def training_captions(cfg: Config, specs: list, albedo: torch.Tensor) -> list[list[str]]:
    """cfg.text_train.captions_per_shape training captions per shape (never an unseen combination)."""
    n = cfg.text_train.captions_per_shape
    return [captions_for(spec, albedo[i].tolist(), n, seed=cfg.seed * 1_000_003 + i, split="train")
            for i, spec in enumerate(specs)]


def train_text(cfg: Config, run_dir: Path, init_dir: Path, data_dir: Path | None = None, resume: bool = False,
               progress: bool = True, device: str = "auto") -> dict:
    """Train (or continue) the text-conditioned flow of a finished Stage-1 run; returns the summary."""
    dev = pick_device(device)
    run_dir, init_dir = Path(run_dir), Path(init_dir)
    runs.ensure_writable(run_dir)
    base = runs.read_config(run_dir if (run_dir / "config.json").exists() else init_dir)
    cfg = base if resume else dataclasses.replace(base, **{f: getattr(cfg, f) for f in runs.TEXT_FIELDS})
    init_ckpt = check_stage1_run(init_dir, cfg)
    ckpt = runs.checkpoint_path(run_dir, "text")
    if resume and not ckpt.exists():
        raise FlowSDFError(f"nothing to resume: {ckpt} does not exist")
    if not resume and ckpt.exists():
        raise FlowSDFError(f"{run_dir} already holds a 'text' checkpoint; pass --resume to continue it or choose another --out")
    data = run_data(cfg, run_dir, data_dir, (init_dir,), progress)
    runs.begin(run_dir, cfg, "text")

    encoder, decoder = (m.to(dev) for m in build_stage1(cfg))
    checkpoint.load(init_ckpt, {"encoder": encoder, "decoder": decoder}, map_location=dev)
    with torch.no_grad():
        targets = encoder.eval()(data.train.input.images[:, 0].to(dev))  # (N, *latent) each shape's code
    sigma = noise_scale(targets)
    captions = training_captions(cfg, data.train.shapes, data.train.albedo)  # N lists of n
    pairs = [(i, c) for i, caps in enumerate(captions) for c in caps]
    tokenizer = caption_tokenizer(cfg.text.max_length) if cfg.text.kind == "small" else None
    text_enc, velocity = (m.to(dev) for m in build_text_flow(cfg, tokenizer))
    trainable = [p for p in [*text_enc.parameters(), *velocity.parameters()] if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=cfg.text_train.lr)
    start, history = 0, []
    if resume:
        meta = checkpoint.load(ckpt, {"text": text_enc, "velocity": velocity}, optimizer, map_location=dev)
        start, history = int(meta["iteration"]), list(meta.get("history", []))
    tt = cfg.text_train
    flow_cfg = FlowConfig(sampling_weight=0.0, cond_dropout=tt.cond_dropout, time_sampling=cfg.flow.time_sampling,
                          logit_mean=cfg.flow.logit_mean, logit_std=cfg.flow.logit_std)
    meta = {"stage": "text", "sigma": sigma, "tokenizer": tokenizer.to_dict() if tokenizer else None,
            **init_record(run_dir, init_ckpt)}
    checkpoint.ensure_space(ckpt.parent, 2 * checkpoint.state_bytes({"text": text_enc, "velocity": velocity}, optimizer),
                            "the text flow's checkpoints")
    t0 = time.perf_counter()
    text_enc.train()
    velocity.train()
    bar = tqdm(range(start, tt.iterations), desc="text flow", leave=False, disable=not progress, initial=start,
               total=tt.iterations)
    for it in bar:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + it)  # a resumed run draws the same batches
        idx = torch.randint(len(pairs), (min(tt.batch_size, len(pairs)),), generator=gen).tolist()
        z1 = targets[[pairs[i][0] for i in idx]]  # (B, *latent)
        tokens, mask = text_enc.encode([pairs[i][1] for i in idx])  # (B, L, C), (B, L)
        noise = draw_objective_noise(z1, sigma, gen, flow_cfg)
        if noise.keep is not None:
            tokens = drop_condition(tokens, noise.keep)
        loss, parts = flow_loss(velocity, z1, velocity.prepare(tokens, mask), noise, flow_cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm(trainable))):
            raise FlowSDFError(f"the text flow diverged at iteration {it + 1} of {tt.iterations}: the loss or its gradient "
                               f"is not finite; the last checkpoint ({ckpt}) is kept; lower text_train.lr ({tt.lr:g})")
        optimizer.step()
        if (it + 1) % 50 == 0 or it + 1 == tt.iterations:
            history.append({"iteration": it + 1, "velocity_loss": parts["velocity"].item()})
            bar.set_postfix(loss=f"{history[-1]['velocity_loss']:.5f}")
        if (it + 1) % SAVE_EVERY == 0 or it + 1 == tt.iterations:
            checkpoint.save(ckpt, {"text": text_enc, "velocity": velocity}, optimizer,
                            {**meta, "iteration": it + 1, "history": history})
    summary = {"stage": "text", "iterations": tt.iterations, "shapes": len(captions), "captions": len(pairs),
               "sigma": sigma, "history": history, "last_velocity_loss": history[-1]["velocity_loss"] if history else None,
               "provenance": provenance(dev, seconds={"this_session": time.perf_counter() - t0})}
    write_json(run_dir / "text" / "summary.json", summary)
    return summary


def load_tokenizer(meta: dict) -> WordTokenizer | None:
    """The tokenizer a text checkpoint was trained with (None for CLIP, which brings its own)."""
    return WordTokenizer.from_dict(meta["tokenizer"]) if meta.get("tokenizer") else None
