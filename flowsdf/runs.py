"""Run folders: what a training command reads and writes, and the checks before it starts.

    RUN_DIR/config.json          the full Config (written once, when the run starts)
    RUN_DIR/<stage>/last.safetensors   weights + optimiser + epoch (atomic, every epoch)
    RUN_DIR/<stage>/metrics.jsonl      one JSON line per epoch
    RUN_DIR/<stage>/figures/           prediction grids every N epochs
    RUN_DIR/<stage>/summary.json       final figures of the stage
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from pathlib import Path

from flowsdf import checkpoint
from flowsdf import config as config_mod
from flowsdf.checkpoint import TEMPORARY, atomic_write_text, strict_json, write_json
from flowsdf.config import Config
from flowsdf.data import dataset as data_mod
from flowsdf.data.dataset import Dataset, ShapeSplit
from flowsdf.data.frames import apply_frame
from flowsdf.errors import FlowSDFError, warn


def checkpoint_path(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / stage / "last.safetensors"


def checkpoint_epoch(run_dir: Path, stage: str) -> int | None:
    """The last finished epoch recorded in a stage's checkpoint, or None if there is none."""
    path = checkpoint_path(run_dir, stage)
    if not path.exists():
        return None
    return checkpoint.read_header(path)["meta"].get("epoch")


def ensure_writable(folder: Path) -> None:
    """Fail with one clear line unless `folder` exists and is writable, or can be created.

    Called before any work, so a bad --out costs nothing. It writes and removes one probe file
    in the nearest existing folder (permission bits alone do not tell: root may write anywhere
    by them, yet not into /proc or a read-only mount) and creates nothing else, so a command
    that fails later leaves no empty folder.
    """
    folder = Path(folder).absolute()
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise FlowSDFError(f"cannot write to {folder}: {probe} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".flowsdf-probe.", dir=probe)
    except OSError as e:
        raise FlowSDFError(f"cannot write to {folder}: {e.strerror or e}") from e
    os.close(fd)
    os.unlink(tmp)


def read_config(run_dir: Path) -> Config:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FlowSDFError(f"{run_dir} is not a flowsdf run (no config.json)")
    try:
        return config_mod.loads(path.read_text())
    except UnicodeDecodeError as e:
        raise FlowSDFError(f"{path} is not valid UTF-8 JSON") from e


def prepare(run_dir: Path, cfg: Config, stage: str, resume: bool) -> tuple[Config, bool]:
    """Check that `stage` may run in `run_dir`; returns the config to use. Writes nothing.

    A new stage may start in a folder that holds earlier stages of the same run (Stage 2 goes
    into the Stage 1 folder by default) but never over a stage that already has a checkpoint,
    unless `resume` is set: nothing is overwritten by accident. With `resume`, the run's own
    config.json wins over whatever preset was named.
    """
    run_dir = Path(run_dir)
    ensure_writable(run_dir)
    has_ckpt = checkpoint_path(run_dir, stage).exists()
    if resume:
        if not has_ckpt:
            raise FlowSDFError(f"nothing to resume: {checkpoint_path(run_dir, stage)} does not exist")
        return read_config(run_dir), True
    if has_ckpt:
        raise FlowSDFError(
            f"{run_dir} already holds a '{stage}' checkpoint; pass --resume to continue it or choose another --out"
        )
    if (run_dir / "config.json").exists():
        keep = STAGE2_FIELDS if stage in ("phase1", "phase2") else ()
        if _without(read_config(run_dir), keep) != _without(cfg, keep):
            raise FlowSDFError(f"{run_dir} holds a run with a different config; choose another --out")
    return cfg, False


# Config fields that only Stage 2 reads: a Stage-2 run may set them in a Stage-1 run folder.
STAGE2_FIELDS = ("conditioner", "velocity", "flow", "phase1", "phase2")
# ... and those only the text flow reads (flowsdf.train.text).
TEXT_FIELDS = ("text", "text_velocity", "text_train")


def _without(cfg: Config, names: tuple[str, ...]) -> dict:
    d = config_mod.to_dict(cfg)
    return {k: v for k, v in d.items() if k not in names}


def begin(run_dir: Path, cfg: Config, stage: str) -> None:
    """Create the stage folder and write config.json: the whole config for a new run, and the
    Stage-2 fields when Stage 2 starts in a Stage-1 folder (prepare() checked the rest).

    Also removes what a killed earlier attempt left half-written (see clean_temporaries).
    """
    try:
        (Path(run_dir) / stage).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FlowSDFError(f"cannot write to {Path(run_dir) / stage}: {e.strerror or e}") from e
    clean_temporaries(run_dir, ("phase1", "phase2") if stage == "phase2" else (stage,))
    path = Path(run_dir) / "config.json"
    # Stages after Stage 1 may set their own sections (Stage 2's, the text flow's): record them.
    if not path.exists() or (stage in ("phase1", "phase2", "text") and read_config(run_dir) != cfg):
        atomic_write_text(path, config_mod.dumps(cfg))


# Every temporary file of the package is named by checkpoint.temporary (checkpoints, JSON and
# text, figures) and matches checkpoint.TEMPORARY; datasets' temporary folders are removed by
# flowsdf.data.dataset.generate.


def clean_temporaries(run_dir: Path, stages: tuple[str, ...]) -> list[Path]:
    """Delete temporary files that a killed write left in the run folder and the given folders
    inside it (stages, "eval", "report_figures") and their figures/ (a checkpoint's is as large as
    the checkpoint). Called when a stage starts or resumes, and by eval and reproduce for their
    outputs: each folder's own writer is the only one that writes there. Returns what was removed."""
    folders = [Path(run_dir)] + [Path(run_dir) / s / sub for s in stages for sub in ("", "figures")]
    removed = []
    for folder in folders:
        if folder.is_dir():
            for path in folder.iterdir():
                if path.is_file() and TEMPORARY.fullmatch(path.name):
                    path.unlink()
                    removed.append(path)
    return removed


def clean_temporaries_of(paths: list[Path]) -> list[Path]:
    """Delete the temporary files that a killed write of these files (checkpoint.temporary) left
    beside them, and nothing else of their folders (which may be the user's). Returns what was removed."""
    removed = []
    for path in map(Path, paths):
        if path.parent.is_dir():
            mine = re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]{8}")
            for tmp in path.parent.iterdir():
                if tmp.is_file() and mine.fullmatch(tmp.name):
                    tmp.unlink()
                    removed.append(tmp)
    return removed


def record_data(run_dir: Path, root: Path, config_hash: str) -> None:
    """Remember which dataset folder a run was trained on (data.json beside config.json): its
    absolute path, and its path relative to the run for when both move together."""
    root = Path(root).resolve()
    rec = {"path": str(root), "relative": os.path.relpath(root, Path(run_dir).resolve()), "config_hash": config_hash}
    write_json(Path(run_dir) / "data.json", rec, indent=1)


def recorded_data(run_dir: Path, config_hash: str) -> Path | None:
    """The dataset folder recorded for a run, if it is still there with the same config hash
    (None otherwise: the caller falls back to the preset's cache or --data)."""
    path = Path(run_dir) / "data.json"
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FlowSDFError(f"{path} is damaged ({e})") from e
    if not isinstance(rec, dict):
        raise FlowSDFError(f"{path} is damaged (not a JSON object)")
    if rec.get("config_hash") != config_hash:
        return None
    candidates = [Path(str(rec["path"]))] if rec.get("path") else []
    if rec.get("relative"):
        candidates.append(Path(run_dir) / str(rec["relative"]))
    return next((root for root in candidates if (root / "manifest.json").is_file()), None)


def append_metrics(run_dir: Path, stage: str, row: dict) -> None:
    """Append one epoch's row (strict JSON). Written after the epoch's checkpoint, so the log is
    never ahead of it; a failed write (a full disk) is one line, and a resume drops a partial
    line (read_metrics) and says which epochs the log lacks (truncate_metrics)."""
    path = Path(run_dir) / stage / "metrics.jsonl"
    try:
        with path.open("a") as f:
            f.write(strict_json(row, None) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise FlowSDFError(f"cannot write {path}: {e.strerror or e} (the epoch's checkpoint is saved)") from e


def truncate_metrics(run_dir: Path, stage: str, last_epoch: int) -> None:
    """Before a resume: drop metric lines past the checkpoint's epoch (no duplicates) and damaged
    ones, and say which earlier epochs the log lacks (training goes on; the loss curve and the
    training time will miss them)."""
    path = Path(run_dir) / stage / "metrics.jsonl"
    kept = [row for row in read_metrics(run_dir, stage) if row["epoch"] <= last_epoch]
    missing = sorted(set(range(1, last_epoch + 1)) - {row["epoch"] for row in kept})
    if missing:
        warn(f"{path} lacks epoch(s) {_ranges(missing)} of the {last_epoch} in the checkpoint; "
             "training continues, but loss curves and training time will miss them")
    if path.exists() or kept:
        atomic_write_text(path, "".join(strict_json(row, None) + "\n" for row in kept))


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 5] -> "1-3, 5"."""
    parts, start = [], numbers[0]
    for prev, n in zip(numbers, numbers[1:] + [None]):
        if n is None or n != prev + 1:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = n
    return ", ".join(parts)


def read_metrics(run_dir: Path, stage: str) -> list[dict]:
    """The per-epoch rows of a stage's metrics.jsonl ([] when it is missing). A line that is not
    a JSON row with an epoch (a write cut short by a kill, a damaged file) is left out, with a
    warning: the history is a record, not something training depends on."""
    path = Path(run_dir) / stage / "metrics.jsonl"
    if not path.exists():
        return []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise FlowSDFError(f"cannot read {path} ({e})") from e
    rows, bad = [], 0
    for ln in lines:
        if not ln.strip():
            continue
        try:
            row = json.loads(ln)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("epoch"), int) and all(
            isinstance(row.get(k), (int, float)) for k in ("loss", "seconds")
        ):
            rows.append(row)
        else:
            bad += 1
    if bad:
        warn(f"{path}: {bad} damaged line(s) left out")
    return rows


def load_data(
    cfg: Config, data_dir: Path | None, run_dirs: tuple[Path, ...] = (), progress: bool = True
) -> Dataset:
    """The dataset a command works on, checked against `cfg`.

    `data_dir` (--data) must exist. Otherwise the folder recorded by the first of `run_dirs`
    that has one, else the preset's cached dataset (generated, deterministically, if missing).
    """
    if data_dir is not None:
        data = data_mod.load(Path(data_dir))
    else:
        recorded = next((r for r in (recorded_data(d, cfg.data.hash()) for d in run_dirs) if r), None)
        data = data_mod.load(recorded) if recorded else data_mod.ensure(cfg.data, data_mod.default_root(cfg.data), progress)
    if data.config.image_size != cfg.data.image_size:
        raise FlowSDFError(
            f"dataset images are {data.config.image_size}px but the config expects {cfg.data.image_size}px"
        )
    return apply_frame(data, cfg.frame)


def run_data(
    cfg: Config, run_dir: Path, data_dir: Path | None, search: tuple[Path, ...] = (), progress: bool = True
) -> Dataset:
    """The dataset of an existing run: the one it recorded, or --data if it is the same data."""
    data = load_data(cfg, data_dir, (Path(run_dir), *search), progress)
    if data.config != cfg.data:
        raise FlowSDFError(f"the dataset at {data.root} is not the one {run_dir} was trained on (different config)")
    return data


def heldout_split(cfg: Config, run_dir: Path, fresh_seed: int | None = None, n: int | None = None) -> ShapeSplit:
    """The held-out shapes a benchmark scores: the run's own held-out split, or with `fresh_seed`
    `n` fresh ones (default 40) drawn by fresh_heldout."""
    if fresh_seed is None:
        return run_data(cfg, run_dir, None, progress=False).heldout
    return fresh_heldout(cfg, fresh_seed, n or 40)


def fresh_heldout(cfg: Config, seed: int, n: int, base: Path = Path("data_cache"), progress: bool = True) -> ShapeSplit:
    """`n` held-out shapes drawn and rendered by the run's own data recipe from another data seed,
    in the run's frame: shapes nobody has looked at, to confirm a choice that was made by looking at
    the run's own held-out shapes. Cached like any dataset (one training shape, which is not used)."""
    if seed == cfg.data.seed:
        raise FlowSDFError(f"data seed {seed} is the run's own: its held-out shapes are not fresh; choose another seed")
    data_cfg = dataclasses.replace(cfg.data, seed=seed, n_train_shapes=1, n_heldout_shapes=n)
    data = data_mod.ensure(data_cfg, data_mod.default_root(data_cfg, base), progress)
    return apply_frame(data, cfg.frame).heldout
