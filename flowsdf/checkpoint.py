"""Checkpoints: safetensors weights with their JSON metadata in the same file, written atomically.

A checkpoint holds named modules' parameters (`model.<module>.<param>`), the optimiser's tensor
state (`optim.<index>.<key>`) and a JSON header (`meta`: epoch, optimiser hyper-parameters, any
scalars the caller adds). Nothing is ever unpickled. One file means one atomic `os.replace`:
a crash mid-write leaves the previous checkpoint intact.

The header also holds `tensors_sha256`, a digest of every tensor's name, dtype, shape and bytes,
checked on every load: a file damaged in place (same size, some bytes changed) is refused instead
of silently resuming from wrong weights. Checkpoints written before the digest existed load with
a one-line warning on stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from flowsdf.errors import FlowSDFError, warn


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a temporary file in the same folder."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def publish(tmp: str | Path, path: Path) -> None:
    """Make a finished temporary file durable and move it over `path` in one step.

    fsync before the rename, so a power cut cannot leave a renamed but empty file; 0644 because
    mkstemp makes private files and results are meant to be shared.
    """
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order (CPU tensors)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # raw bytes, whatever the dtype
    return h.hexdigest()


def save(
    path: Path,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Save modules (+ optimiser state, + JSON meta) to one safetensors file, atomically."""
    path = Path(path)
    tensors = {
        f"model.{name}.{k}": v.detach().contiguous().cpu()
        for name, module in modules.items()
        for k, v in module.state_dict().items()
    }
    header: dict[str, Any] = {"meta": meta or {}}
    if optimizer is not None:
        state = optimizer.state_dict()
        for idx, per_param in state["state"].items():
            for key, value in per_param.items():
                tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).contiguous().cpu()
        header["optimizer_groups"] = state["param_groups"]
    header["tensors_sha256"] = tensors_digest(tensors)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"flowsdf": json.dumps(header)})
        publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a checkpoint (meta + optimiser groups), without loading tensors."""
    path = Path(path)
    if not path.is_file():
        raise FlowSDFError(f"checkpoint {path} does not exist")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        header = json.loads(metadata["flowsdf"])
        if not isinstance(header, dict) or not isinstance(header.get("meta"), dict):
            raise KeyError("meta")
        return header
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FlowSDFError(f"checkpoint {path} is damaged or not a flowsdf checkpoint ({e})") from e


def load(
    path: Path,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load weights into `modules` (and the optimiser state); returns the checkpoint's meta."""
    header = read_header(path)
    tensors = {k: v.to(map_location) for k, v in _verified_tensors(path, header).items()}
    for name, module in modules.items():
        prefix = f"model.{name}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise FlowSDFError(f"checkpoint {path} does not fit the '{name}' model: {first}") from e
    if optimizer is not None:
        if "optimizer_groups" not in header:
            raise FlowSDFError(f"checkpoint {path} has no optimiser state to resume from")
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, key = k.split(".", 2)
                # Adam keeps its step count on the CPU unless fused/capturable; a CUDA step tensor
                # would force a device sync per parameter per step after a resume.
                per_param.setdefault(int(idx), {})[key] = v.cpu() if key == "step" else v
        try:
            optimizer.load_state_dict({"state": per_param, "param_groups": header["optimizer_groups"]})
        except (ValueError, KeyError) as e:
            raise FlowSDFError(f"checkpoint {path}: optimiser state does not fit ({e})") from e
    return header["meta"]


def _verified_tensors(path: Path, header: dict[str, Any]) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint on the CPU, checked against the header's digest."""
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise FlowSDFError(f"checkpoint {path} is damaged ({e})") from e
    expected = header.get("tensors_sha256")
    if expected is None:
        warn(f"checkpoint {path} has no content digest (written by an older flowsdf); loaded unverified")
    elif tensors_digest(tensors) != expected:
        raise FlowSDFError(f"checkpoint {path} is damaged: its tensors do not match the digest stored when it was saved")
    return tensors


def digest(path: Path) -> str:
    """The content digest that identifies a checkpoint: the stored one, or (for a checkpoint from
    before digests) computed from its tensors."""
    header = read_header(path)
    return header.get("tensors_sha256") or tensors_digest(_verified_tensors(path, header))

