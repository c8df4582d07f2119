"""The pictures the viewer shows: silhouettes and masks as images, and the latent plot.

Everything is drawn into RGB uint8 arrays (H, W, 3) with matplotlib's Agg canvas (no pyplot, so
requests served from several threads never share a figure).
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from flowsdf.figures.preview import colour_bar as draw_colour_bar
from flowsdf.figures.preview import figure_array
from flowsdf.viewer.latent import LatentFrame

PANE_SIZE = 256  # pixels per side of the silhouette and ground-truth panes


def gray_pane(values: np.ndarray, size: int = PANE_SIZE) -> np.ndarray:
    """A (S, S) map in [0, 1] (soft silhouette or mask) as an RGB image (size, size, 3).

    Upscaled by whole pixels (nearest neighbour): each model pixel stays a visible square, so
    what the page shows is what the model produced, not a smoothed version of it.
    """
    return rgb_pane(np.repeat(np.asarray(values, dtype=np.float32)[..., None], 3, axis=-1), size)


def rgb_pane(image: np.ndarray, size: int = PANE_SIZE) -> np.ndarray:
    """An (S, S, 3) float picture in [0, 1] as an RGB uint8 image of about `size` pixels a side."""
    image = np.asarray(image, dtype=np.float32)
    factor = max(1, size // image.shape[0])
    big = image.repeat(factor, axis=0).repeat(factor, axis=1)  # (S*f, S*f, 3)
    return (np.clip(big, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def colour_bar(vmax: float, std: np.ndarray | None) -> np.ndarray:
    """The uncertainty colour bar, 0 .. vmax object units, with the shown mesh's median (dotted)
    and largest (solid) spread marked: RGB uint8 (H, W, 3)."""
    fig = Figure(figsize=(4.6, 0.95), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.04, 0.62, 0.92, 0.3))
    draw_colour_bar(fig, ax, vmax, std, horizontal=True)
    return figure_array(fig)


def latent_figure(frame: LatentFrame, path: np.ndarray, norms: np.ndarray, step: int, steps: int) -> np.ndarray:
    """The latent plot at Euler step `step` of `steps`: RGB uint8 (H, W, 3).

    Left: the training codes (grey) and the path of the flow's state so far (states 0..step of
    `path` (T, 2)) on their principal plane. Right: the state's norm at each step so far (`norms`
    (T,)) against the band of the training codes' norms (5th-95th percentile, median line); a log
    scale when the norms span more than a factor of 20 (unscaled noise is ~25x the codes').
    """
    fig = Figure(figsize=(8.0, 3.6), dpi=90)
    FigureCanvasAgg(fig)
    ax_plane, ax_norm = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1.0]})
    upto = slice(0, step + 1)

    ax_plane.scatter(frame.points[:, 0], frame.points[:, 1], s=10, c="0.7", label="training codes")
    ax_plane.plot(path[upto, 0], path[upto, 1], "-", color="tab:blue", lw=1.2, zorder=2)
    ax_plane.scatter(path[upto, 0], path[upto, 1], s=14, c=np.arange(step + 1), cmap="viridis",
                     vmin=0, vmax=max(steps, 1), zorder=3)
    ax_plane.scatter(path[0, 0], path[0, 1], s=60, marker="x", c="k", label="noise (step 0)", zorder=4)
    ax_plane.scatter(path[step, 0], path[step, 1], s=90, facecolors="none", edgecolors="tab:red", lw=2,
                     label=f"step {step}", zorder=5)
    both = np.concatenate([frame.points, path])  # (N + T, 2): fixed limits while the slider moves
    pad = 0.08 * float(np.ptp(both, axis=0).max() or 1.0)
    ax_plane.set_xlim(both[:, 0].min() - pad, both[:, 0].max() + pad)
    ax_plane.set_ylim(both[:, 1].min() - pad, both[:, 1].max() + pad)
    ev = frame.explained
    ax_plane.set_xlabel(f"principal axis 1 ({100 * ev[0]:.0f}% of spread)")
    ax_plane.set_ylabel(f"axis 2 ({100 * ev[1]:.0f}%)")
    ax_plane.legend(fontsize=7, loc="best", framealpha=0.6)
    ax_plane.set_title("the state on the training codes' principal plane", fontsize=9, pad=4)

    lo, med, hi = frame.norm_band()
    ax_norm.axhspan(lo, hi, color="0.85", label="training codes (5-95%)")
    ax_norm.axhline(med, color="0.5", lw=1, label="median")
    ax_norm.plot(np.arange(step + 1), norms[upto], "o-", color="tab:blue", ms=4, label="flow state")
    ax_norm.set_xlim(-0.3, steps + 0.3)
    span = np.concatenate([norms, [lo, hi]])
    span = span[span > 0]
    if span.size and span.max() / span.min() > 20:
        ax_norm.set_yscale("log")
    ax_norm.set_ylim(*_limits(np.concatenate([norms, [lo, hi]]), ax_norm.get_yscale() == "log"))
    ax_norm.set_xlabel("Euler step")
    ax_norm.set_ylabel("code norm")
    ax_norm.legend(fontsize=7, loc="best", framealpha=0.6)
    ax_norm.set_title(f"norm at step {step}: {norms[step]:.3f} (training median {med:.3f})", fontsize=9, pad=4)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.93))  # room above for the page's label
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3)


def _limits(values: np.ndarray, log: bool) -> tuple[float, float]:
    """Axis limits covering every step's norm (not only those drawn), so the axis stays put while
    the slider moves."""
    if log:
        positive = values[values > 0]
        return float(positive.min()) / 1.5, float(positive.max()) * 1.5
    lo, hi = float(values.min()), float(values.max())
    pad = 0.1 * (hi - lo) or 0.1 * abs(hi) or 1.0
    return max(0.0, lo - pad), hi + pad
