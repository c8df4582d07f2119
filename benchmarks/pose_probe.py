"""Probe: the quality driver (quality_experiments.py) with the input camera's pose given to the
encoder, patched in without changing the package.

The dataset's shapes are uniformly randomly rotated and its cameras are random, so the world-frame
shape is not determined by one picture: the same picture arises from every camera direction,
each with the shape turned to match. This probe tests what the encoder does with that missing
information: with `--pose`, the 12 numbers of the input camera's c2w (rotation and position) are
joined to the conv features before the encoder's FC layers. The images carry the pose as 12
constant extra channels, so every code path that passes images (training, evaluation) passes the
pose too; the encoder reads it back from one pixel.

Without `--pose` it is the plain driver (the same variants, the same patches for speed: no
per-epoch figures, no final evaluation of every training shape; `--train-eval-shapes K` scores
the training-shape columns on the first K shapes).

    PYTHONPATH=$PWD python benchmarks/pose_probe.py --pose --out outputs/quality --refine 0 --only pose-1000
    benchmarks/gpu_quality.sh OUT      # the 10,000-shape arms on a GPU
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality_experiments as qe  # noqa: E402

import flowsdf.pipeline as pipeline_mod  # noqa: E402
import flowsdf.runs as runs_mod  # noqa: E402
import flowsdf.train.loop as loop_mod  # noqa: E402
import flowsdf.train.stage1 as stage1_mod  # noqa: E402
from flowsdf.checkpoint import atomic_write_text  # noqa: E402
from flowsdf.data.dataset import Dataset, ShapeSplit, Views  # noqa: E402
from flowsdf.models.encoder import CNNEncoder  # noqa: E402
from flowsdf.models.sdf import SDFDecoder  # noqa: E402

POSE_DIM = 12  # c2w[:3, :4]


class PoseEncoder(CNNEncoder):
    """CNNEncoder whose first FC layer also reads the camera pose (POSE_DIM numbers)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        first = self.fc[1]
        self.fc[1] = nn.Linear(first.in_features + POSE_DIM, first.out_features)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, 3 + POSE_DIM, H, W): the image, then the pose as constant channels -> (B, D)."""
        image, pose = x[:, :3], x[:, 3:, 0, 0]  # (B, 3, H, W), (B, POSE_DIM)
        features = self.convs(image * 2.0 - 1.0).flatten(1)  # (B, C * side * side)
        return self.fc[3](self.fc[2](self.fc[1](torch.cat([features, pose], dim=1))))


def with_pose_channels(data: Dataset) -> Dataset:
    """Input images gain their camera's pose as POSE_DIM constant channels (novel views are only rendered)."""
    for split in (data.train, data.heldout):
        views = split.input
        pose = views.c2w[:, :, :3, :].flatten(-2)  # (N, V, POSE_DIM)
        size = views.images.shape[-1]
        views.images = torch.cat([views.images, pose[..., None, None].expand(*pose.shape, size, size)], dim=2)
    return data


def first_shapes(split: ShapeSplit, k: int) -> ShapeSplit:
    def cut(v: Views) -> Views:
        return Views(v.images[:k], v.masks[:k], v.K[:k], v.c2w[:k], v.light[:k])

    return ShapeSplit(split.shapes[:k], split.albedo[:k], cut(split.input), cut(split.novel))


def patch(pose: bool, train_eval_shapes: int) -> None:
    load_data, run_data = runs_mod.load_data, runs_mod.run_data
    add = with_pose_channels if pose else (lambda data: data)

    def training_load(*a, **k):
        return add(load_data(*a, **k))

    def training_run_data(*a, **k):
        return add(run_data(*a, **k))

    def evaluation_data(*a, **k):  # what light_eval scores
        data = add(run_data(*a, **k))
        if train_eval_shapes:
            data.train = first_shapes(data.train, train_eval_shapes)
        return data

    def build(cfg):
        torch.manual_seed(cfg.seed)
        return (PoseEncoder if pose else CNNEncoder)(cfg.encoder), SDFDecoder(cfg.decoder)

    def finish(phase, cfg, data, run_dir, wall_seconds):  # the driver evaluates on its own
        rows = runs_mod.read_metrics(run_dir, phase.name)
        summary = {"stage": phase.name, "epochs": phase.train.epochs, "train_seconds_total": sum(r["seconds"] for r in rows)}
        atomic_write_text(Path(run_dir) / phase.name / "summary.json", json.dumps(summary))
        return summary

    stage1_mod.load_data, stage1_mod.run_data, stage1_mod.finish = training_load, training_run_data, finish
    runs_mod.run_data = evaluation_data
    stage1_mod.build_stage1 = pipeline_mod.build_stage1 = build
    loop_mod.prediction_grid = lambda *a, **k: None


GPU = ["data.n_train_shapes=10000", "stage1.epochs=10", "stage1.batch_size=32"]
MV3 = ["data.n_train_shapes=1000", "data.train_views=3", "stage1.all_views=true", "stage1.epochs=8"]
PROBES = {
    "pose-1000": (["data.n_train_shapes=1000", "stage1.epochs=12"], "world frame + input pose to encoder, 1000 x 12 (= world-1000)"),
    "g-pose-10k": (GPU, "GPU: world frame + input pose, 10000 shapes x 10 epochs, batch 32"),
    "g-world-10k": (GPU, "GPU: world frame, 10000 shapes x 10 epochs, batch 32"),
    "pose-mv3-1000": (MV3, "world frame + input pose, 1000 shapes x 3 supervising views x 8 epochs"),
    "world-mv3-1000": (MV3, "world frame, 1000 shapes x 3 supervising views x 8 epochs"),
    "view-mv3-1000": (["frame=view", *MV3], "view frame (the camera known by construction), 1000 shapes x 3 supervising views x 8 epochs"),
    "t-pose": (["data.n_train_shapes=60", "stage1.epochs=1", "stage1.batch_size=32"], "dry run"),
    "t-world": (["data.n_train_shapes=60", "stage1.epochs=1", "stage1.batch_size=32"], "dry run"),
}


if __name__ == "__main__":
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--pose", action="store_true", help="give the encoder the input camera's pose")
    p.add_argument("--train-eval-shapes", type=int, default=0, help="score training shapes on the first K only (0: all)")
    known, rest = p.parse_known_args()
    sys.argv = [sys.argv[0], *rest]  # the rest is quality_experiments' command line
    qe.VARIANTS.update(PROBES)
    patch(known.pose, known.train_eval_shapes)
    qe.main()
