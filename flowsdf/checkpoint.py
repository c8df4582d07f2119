"""Checkpoints: safetensors weights with their JSON metadata in the same file, written atomically.

A checkpoint holds named modules' parameters (`model.<module>.<param>`), the optimiser's tensor
state (`optim.<index>.<key>`) and a JSON header (`meta`: epoch, optimiser hyper-parameters, any
scalars the caller adds). Nothing is ever unpickled. One file means one atomic `os.replace`:
a crash mid-write leaves the previous checkpoint intact.

The header also holds two digests, checked on every read: `tensors_sha256` (every tensor's name,
dtype, shape and bytes) and `header_sha256` (every other key of the header, `tensors_sha256`
included, so together they cover everything the file holds: weights, optimiser state, epoch,
sigma, stage, optimiser groups). A file damaged in place (same size, some bytes changed) or a
header edited by hand is refused instead of silently resuming from wrong weights or a wrong
sigma. Checkpoints written before a digest existed load with a one-line warning on stderr.
A checkpoint holding a non-finite number (NaN, inf) is neither written nor loaded.

Every write here goes through a temporary file that a kill may leave behind (`temporary`,
matched by `TEMPORARY`; flowsdf.runs.clean_temporaries removes them) and fails, on a full disk
or any other OSError, with one FlowSDFError line and the previous file intact. JSON is written
strictly (`strict_json`): no NaN or Infinity token, which standard readers reject.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from flowsdf.errors import FlowSDFError, warn

# What `temporary` names its files: "." + the target's name + "." + mkstemp's 8 random characters
# (+ ".png" for figures, whose writer needs the suffix). flowsdf.runs.clean_temporaries removes them.
TEMPORARY = re.compile(r"\.[^/]+\.[a-z0-9_]{8}(\.png)?")


def temporary(path: Path, suffix: str = "") -> str:
    """A new empty temporary file beside `path` for an atomic write of it; its name matches
    `TEMPORARY`. Every writer of the package makes its temporary files here."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as e:
        raise FlowSDFError(f"cannot write {path}: {e.strerror or e}") from e
    os.close(fd)
    return tmp


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a temporary file in the same folder."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder; a failed write (a full
    disk) is one FlowSDFError line and leaves the previous file as it was, and no temporary."""
    path = Path(path)
    tmp = temporary(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        publish(tmp, path)
    except OSError as e:
        raise FlowSDFError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, value: Any, indent: int | None = 2) -> None:
    """Write `value` as strict JSON (see `strict_json`) to `path`, atomically."""
    atomic_write_text(path, strict_json(value, indent) + "\n")


def strict_json(value: Any, indent: int | None = 2) -> str:
    """JSON text without NaN or Infinity tokens (Python writes them by default; JSON has none, and
    standard readers, jq and browsers included, refuse the file). Every JSON the package writes
    goes through here.

    A non-finite number becomes null, and the object that holds it gains a neighbouring key
    "<key>_not_finite" saying what it was ("nan", "inf" or "-inf"; for numbers inside lists, a
    map from their index path, "3" or "3.1", to that). Null rather than an error: a result file
    records a long computation (an evaluation, a training stage) in which one undefined figure (a
    ratio over an empty mesh, say) says something about the model, and refusing to write would
    throw the rest away; readers already take null as "not available" (the metrics use it for
    empty meshes). Training never gets this far with a non-finite loss: it stops first
    (flowsdf.train.loop). A non-finite number with no object to hold its reason (a bare number
    or list at the top) is a programming error: ValueError.
    """
    clean, reason = _finite(value)
    if reason is not None:
        raise ValueError(f"a non-finite number at the top of a JSON document has no key to explain it: {reason}")
    return json.dumps(clean, indent=indent, allow_nan=False)


def _finite(value: Any) -> tuple[Any, Any]:
    """-> (value with non-finite floats as None, what they were: None, a word, or {index path: word})."""
    if isinstance(value, float):
        return (value, None) if math.isfinite(value) else (None, "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out[k], reason = _finite(v)
            if reason is not None:
                key = f"{k}_not_finite"
                if key in value:
                    raise ValueError(f"cannot explain the non-finite {k!r}: the object already has a key {key!r}")
                out[key] = reason
        return out, None
    if isinstance(value, (list, tuple)):
        out_list, reasons = [], {}
        for i, v in enumerate(value):
            clean, reason = _finite(v)
            out_list.append(clean)
            if isinstance(reason, dict):
                reasons.update({f"{i}.{path}": word for path, word in reason.items()})
            elif reason is not None:
                reasons[str(i)] = reason
        return out_list, (reasons or None)
    return value, None


def ensure_space(folder: Path, needed: int, what: str) -> None:
    """Fail with one line unless the file system of `folder` (or of its nearest existing parent)
    has `needed` bytes free: checked before long work whose result would not fit."""
    probe = Path(folder).absolute()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise FlowSDFError(f"not enough free space in {folder} for {what}: it needs about {_size(needed)}, "
                           f"{_size(free)} free")


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def state_bytes(modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer | None = None) -> int:
    """About how large `save(path, modules, optimizer)` will be, before any training step: every
    tensor of the modules, and for an Adam optimiser two moments per parameter and its step
    count, plus the headers (a few hundred bytes per tensor, which is generous)."""
    tensors = [v for m in modules.values() for v in m.state_dict().values()]
    total = sum(t.numel() * t.element_size() for t in tensors)
    if optimizer is not None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        total += sum(2 * p.numel() * p.element_size() + 8 for p in params)
        tensors += params
    return total + 256 * len(tensors) + 65536


def publish(tmp: str | Path, path: Path) -> None:
    """Make a finished temporary file durable and move it over `path` in one step.

    fsync before the rename, so a power cut cannot leave a renamed but empty file; 0644 because
    mkstemp makes private files and results are meant to be shared.
    """
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, or None."""
    for name in sorted(tensors):
        t = tensors[name]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order (CPU tensors)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # raw bytes, whatever the dtype
    return h.hexdigest()


def header_digest(header: dict[str, Any]) -> str:
    """sha256 of every key of a checkpoint header but `header_sha256` itself, as canonical JSON."""
    rest = {k: v for k, v in header.items() if k != "header_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """`header` with both digests set for `tensors`: what `save` stores. Exposed for deliberate
    edits of a checkpoint (tests), which would otherwise be refused as damage."""
    header = {k: v for k, v in header.items() if k not in ("tensors_sha256", "header_sha256")}
    header["tensors_sha256"] = tensors_digest(tensors)
    header["header_sha256"] = header_digest(header)
    return header


class NonFiniteError(FlowSDFError):
    """A checkpoint would hold, or holds, a NaN or an infinity (`tensor` names the first)."""

    def __init__(self, message: str, tensor: str):
        super().__init__(message)
        self.tensor = tensor


def save(
    path: Path,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Save modules (+ optimiser state, + JSON meta) to one safetensors file, atomically.

    Refuses (NonFiniteError, nothing written) a tensor holding a NaN or an infinity: a checkpoint
    is what later commands trust. A failed write (a full disk) is one FlowSDFError line; the
    previous checkpoint stays as it was and no temporary file is left.
    """
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
        # A captured Adam (train/graphed.py) holds its lr as a device scalar: stored as a number.
        header["optimizer_groups"] = [{k: v.item() if isinstance(v, torch.Tensor) else v for k, v in group.items()}
                                      for group in state["param_groups"]]
    bad = non_finite(tensors)
    if bad is not None:
        raise NonFiniteError(f"checkpoint {path} not written: {bad} holds non-finite values (NaN or inf)", bad)
    try:  # a non-finite sigma or lr is refused like a non-finite weight
        text = json.dumps(seal(header, tensors), allow_nan=False)
    except ValueError as e:
        raise NonFiniteError(f"checkpoint {path} not written: its metadata holds a non-finite number ({e})", "meta") from e
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FlowSDFError(f"cannot write checkpoint {path}: {e.strerror or e}") from e
    tmp = temporary(path)
    try:
        save_file(tensors, tmp, metadata={"flowsdf": text})
        publish(tmp, path)
    except (OSError, SafetensorError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0]
        raise FlowSDFError(f"cannot write checkpoint {path} ({reason}); the previous one, if any, is kept") from e
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
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FlowSDFError(f"checkpoint {path} is damaged or not a flowsdf checkpoint ({e})") from e
    expected = header.get("header_sha256")
    if expected is None and "tensors_sha256" in header:
        warn(f"checkpoint {path} was written before its metadata had a digest (an older flowsdf); "
             "its tensors are verified, its epoch, sigma and optimiser settings are not")
    elif expected is not None and header_digest(header) != expected:
        raise FlowSDFError(f"checkpoint {path} is damaged or was edited: its metadata (epoch, sigma, stage, optimiser "
                           "settings) does not match the digest stored when it was saved")
    return header


def load(
    path: Path,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load weights into `modules` (and the optimiser state); returns the checkpoint's meta.

    Every reader of a checkpoint comes here, so every command refuses, with one line, a file
    that is damaged, edited, does not fit the model (naming the tensor), or holds a NaN or an
    infinity (which training never saves: it would come from elsewhere).
    """
    header = read_header(path)
    verified = _verified_tensors(path, header)
    bad = non_finite(verified)
    if bad is not None:
        raise NonFiniteError(f"checkpoint {path} holds non-finite values (NaN or inf) in {bad}; refusing to load it", bad)
    # Copies: safetensors maps the file into memory, and a tensor kept from the mapping (Adam's
    # state is taken as it is) would hold the file's space on disk after the next save replaced
    # it, for the whole run: a resumed run would need room for three checkpoints, not two.
    tensors = {k: v.to(map_location, copy=True) for k, v in verified.items()}
    del verified
    for name, module in modules.items():
        prefix = f"model.{name}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        problem = _misfit(module, state, prefix)
        if problem:
            raise FlowSDFError(f"checkpoint {path} does not fit the '{name}' model: {problem}")
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


def _misfit(module: nn.Module, state: dict[str, torch.Tensor], prefix: str) -> str | None:
    """What keeps `state` from loading into `module`, in words (the first problem), or None."""
    expected = module.state_dict()
    for key, want in expected.items():
        if key not in state:
            others = len(set(expected) - set(state)) - 1
            return f"the checkpoint lacks {prefix}{key}" + (f" (and {others} more)" if others else "")
        if tuple(state[key].shape) != tuple(want.shape):
            return (f"{prefix}{key} is {tuple(state[key].shape)} in the checkpoint but {tuple(want.shape)} in the model "
                    "(another model size or kind)")
    extra = sorted(set(state) - set(expected))
    if extra:
        return f"the checkpoint holds {prefix}{extra[0]}, which the model lacks" + (
            f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
    return None


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

