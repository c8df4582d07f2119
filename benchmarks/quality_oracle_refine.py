"""Refinement of a world-frame probe with the true input cameras (as SDF-SRN, whose poses are known),
against `--refine` in the world frame, which must estimate the camera first.

    PYTHONPATH=$PWD python benchmarks/quality_oracle_refine.py   # scores outputs/quality/p-world
"""
import json
from pathlib import Path

import torch

torch.set_num_threads(1)
from flowsdf import runs
from flowsdf.eval.shapes3d import evaluate_shapes
from flowsdf.eval.views import evaluate_views, predict_codes
from flowsdf.pipeline import FlowSDF
from flowsdf.refine import refine_codes

run = Path("outputs/quality/p-world")
pipe = FlowSDF.from_run(run, "cnn"); cfg = pipe.cfg
data = runs.run_data(cfg, run, None); s = data.heldout
codes = predict_codes(pipe.predictor(), s, cfg.seed)
ref = refine_codes(pipe.decoder, codes, s.input.masks[:, 0], s.input.K[:, 0], s.input.c2w[:, 0], cfg.render, pipe.tau, 20)
pred = lambda images, gen: ref
out = {g: evaluate_views(pred, pipe.decoder, s, g, cfg.render, pipe.tau, cfg.seed)["iou"] for g in ("input", "novel")}
m = evaluate_shapes(pipe.decoder, ref, s.shapes, bound_radius=cfg.render.bound_radius, resolution=64, progress=False)["mean"]
out.update(iou3d=m["volumetric_iou"], chamfer=m["chamfer_l1"], fscore=m["fscore"])
Path("outputs/quality/p-world/eval/oracle_refine20.json").write_text(json.dumps(out, indent=2))
print(out)
