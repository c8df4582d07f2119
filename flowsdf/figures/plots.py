"""Figures: prediction grids (the "epoch outputs") and loss curves. Matplotlib, no display."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from flowsdf.checkpoint import publish, temporary  # noqa: E402
from flowsdf.errors import FlowSDFError  # noqa: E402


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Save through a temporary file (checkpoint.temporary: a rerun removes one that a kill left)
    so an interrupted run never leaves half a PNG; a failed write (a full disk) is one line."""
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary(path.with_name(path.stem), suffix=".png")
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        publish(tmp, path)
    except OSError as e:
        raise FlowSDFError(f"cannot write the figure {path}: {e.strerror or e}") from e
    finally:
        plt.close(fig)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def prediction_grid(
    rows: Sequence[dict], title: str, path: Path
) -> None:
    """One row per shape: input image, then (ground truth, prediction) pairs per view.

    Each row is {"image": (H, W, 3), "views": [(name, gt (H, W), pred (H, W), iou), ...]}.
    """
    n_cols = 1 + 2 * max(len(r["views"]) for r in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.3 * n_cols, 1.4 * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, row in enumerate(rows):
        axes[i, 0].imshow(row["image"])
        if i == 0:
            axes[i, 0].set_title("input", fontsize=7)
        for j, (name, gt, pred, iou) in enumerate(row["views"]):
            axes[i, 1 + 2 * j].imshow(gt, cmap="gray", vmin=0, vmax=1)
            axes[i, 2 + 2 * j].imshow(pred, cmap="gray", vmin=0, vmax=1)
            axes[i, 2 + 2 * j].text(1, 3, f"{iou:.2f}", color="orange", fontsize=6, va="top")
            if i == 0:
                axes[i, 1 + 2 * j].set_title(f"{name} GT", fontsize=7)
                axes[i, 2 + 2 * j].set_title(f"{name} pred", fontsize=7)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def loss_curves(metrics: dict[str, list[dict]], path: Path, key: str = "loss") -> None:
    """Loss per epoch (log scale) of one or more stages' metric rows (runs.read_metrics)."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for label, rows in metrics.items():
        epochs = np.array([r["epoch"] for r in rows if key in r])
        values = np.array([r[key] for r in rows if key in r])
        if len(epochs):
            ax.plot(epochs, values, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"silhouette BCE ({key})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def flow_strip(strips: Sequence[dict], path: Path) -> None:
    """The 8-step flow strip: per image, the latent and its decoded silhouette after each step.

    Each strip is {"label": str, "latents": (S+1, D), "silhouettes": (S+1, H, W), "gt": (H, W)}.
    Latents are drawn as a small heat map (D reshaped to 8 rows) on a shared colour scale.
    """
    n_steps = strips[0]["latents"].shape[0]
    fig, axes = plt.subplots(2 * len(strips), n_steps + 1, figsize=(1.25 * (n_steps + 1), 2.4 * len(strips)), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, strip in enumerate(strips):
        lat = np.asarray(strip["latents"])
        lim = float(np.abs(lat[-1]).max()) or 1.0
        for s in range(n_steps):
            axes[2 * i, s].imshow(lat[s].reshape(8, -1), cmap="coolwarm", vmin=-lim, vmax=lim)
            axes[2 * i + 1, s].imshow(strip["silhouettes"][s], cmap="gray", vmin=0, vmax=1)
            if i == 0:
                axes[0, s].set_title(f"step {s}", fontsize=7)
        axes[2 * i + 1, n_steps].imshow(strip["gt"], cmap="gray", vmin=0, vmax=1)
        axes[2 * i + 1, n_steps].set_title("ground truth", fontsize=7)
        axes[2 * i, n_steps].text(0.0, 0.5, strip["label"].replace(": ", ":\n"), fontsize=6, va="center",
                                  transform=axes[2 * i, n_steps].transAxes, wrap=True)
    fig.suptitle("rectified flow, Euler steps: latent (top) and decoded silhouette (bottom)", fontsize=9)
    save_figure(fig, path)


def mesh_gallery(rows: Sequence[dict], path: Path, azimuths: Sequence[float] = (30.0, 150.0, 270.0)) -> None:
    """Extracted meshes from several angles: one row per mesh, one column per azimuth.

    Each row is {"label": str, "vertices": (V, 3), "faces": (F, 3)}; an empty mesh shows a note.
    """
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    fig = plt.figure(figsize=(2.0 * len(azimuths), 2.0 * len(rows)))
    light = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    for i, row in enumerate(rows):
        v, f = np.asarray(row["vertices"]), np.asarray(row["faces"])
        for j, az in enumerate(azimuths):
            ax = fig.add_subplot(len(rows), len(azimuths), i * len(azimuths) + j + 1, projection="3d")
            ax.set_axis_off()
            if len(f) == 0:
                ax.text2D(0.3, 0.5, "empty mesh", transform=ax.transAxes, fontsize=7)
            else:
                tri = v[f]  # (F, 3, 3)
                n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
                n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
                shade = 0.25 + 0.75 * np.clip(n @ light, 0, 1)
                ax.add_collection3d(Poly3DCollection(tri, facecolors=plt.cm.Greys(0.2 + 0.6 * shade), linewidths=0))
            ax.set_xlim(-0.9, 0.9)
            ax.set_ylim(-0.9, 0.9)
            ax.set_zlim(-0.9, 0.9)
            ax.view_init(elev=20, azim=az)
            if j == 0:
                ax.set_title(row["label"], fontsize=7, loc="left")
    save_figure(fig, path)


def sample_grid(rows: Sequence[dict], path: Path) -> None:
    """K flow samples per image: input, ground truth, then each seed's decoded silhouette.

    Each row is {"image": (H, W, 3), "gt": (H, W), "samples": [(H, W), ...]}.
    """
    k = max(len(r["samples"]) for r in rows)
    fig, axes = plt.subplots(len(rows), k + 2, figsize=(1.3 * (k + 2), 1.4 * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, row in enumerate(rows):
        axes[i, 0].imshow(row["image"])
        axes[i, 1].imshow(row["gt"], cmap="gray", vmin=0, vmax=1)
        for j, sil in enumerate(row["samples"]):
            axes[i, 2 + j].imshow(sil, cmap="gray", vmin=0, vmax=1)
            if i == 0:
                axes[0, 2 + j].set_title(f"seed {j}", fontsize=7)
    axes[0, 0].set_title("input", fontsize=7)
    axes[0, 1].set_title("ground truth", fontsize=7)
    fig.suptitle("flow samples from different seeds (novel view 1)", fontsize=9)
    save_figure(fig, path)
