"""A frozen DINOv2-Small/14 as the conditioner: images -> CLS + 256 patch tokens of 384.

    images (B, 3, H, W) in [0, 1] -> resize to 224 -> ImageNet mean/std -> DINOv2 -> (B, 1 + 16*16, 384)

The output is the last hidden state after DINOv2's final LayerNorm: the CLS token first, then the
16 x 16 patch tokens row by row, each carrying its position embedding (so the DiT's order-blind
cross-attention still knows where a token came from). At our 32-64 px a /14 ViT would see only
2-4 patches a side, hence the resize to 224. The checkpoint's 37 x 37 position grid (trained at
518 px) is interpolated bicubically to 16 x 16 by transformers' Dinov2Model; Meta's own code
interpolates slightly differently, so tokens agree with Meta's forward only to that detail.

The weights never come from the network: the user brings them and passes `weights=PATH`, one of
    (a) a Hugging Face folder (config.json + model.safetensors or pytorch_model.bin), loaded with
        transformers.Dinov2Model.from_pretrained(PATH, local_files_only=True);
    (b) Meta's original state dict, e.g. dinov2_vits14_pretrain.pth, read with
        torch.load(weights_only=True) only (no pickled code is ever run);
    (c) a .safetensors file in Meta's layout or in Hugging Face's.
(b) and (c) are mapped onto the same transformers model by `meta_to_hf`. A missing or wrong file
is one FlowSDFError line that says what was expected and where to get it. transformers is imported
only inside the loader, so `import flowsdf` stays fast and works without it.

Frozen: no parameter needs a gradient, the model stays in eval mode whatever .train() is called
with, and the forward runs under no_grad. Because of that its tokens for a given training image
never change, so they can be computed once and cached (see `encode_in_batches`): 257 x 384 floats
are 395 KB per image in float32 (half in float16).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowsdf.errors import FlowSDFError
from flowsdf.schema import int_range

if TYPE_CHECKING:  # annotations only: transformers is imported lazily by the loader
    from transformers import Dinov2Model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

WHERE = ("the facebook/dinov2-small model page on Hugging Face (a folder) or "
         "dinov2_vits14_pretrain.pth from Meta's facebookresearch/dinov2 repository")


@dataclass
class DINOv2Config:
    """The architecture the weights must have (DINOv2-Small/14 by default) and the input size.

    The checkpoint's position grid is read from the file, so any training resolution loads.
    """

    hidden_size: int = 384
    num_layers: int = 12
    num_heads: int = 6  # not stored in the weights: 64-wide heads in every DINOv2
    patch_size: int = 14
    mlp_ratio: int = 4
    input_size: int = 224  # images are resized to this: 16 x 16 patches of 14 px

    RULES = {"hidden_size": int_range(1, 8192), "num_layers": int_range(1, 256), "num_heads": int_range(1, 256),
             "patch_size": int_range(1, 64), "mlp_ratio": int_range(1, 16), "input_size": int_range(14, 1036)}

    def describe(self) -> str:
        return (f"a DINOv2 ViT/{self.patch_size} with width {self.hidden_size}, {self.num_layers} layers "
                f"and {self.num_heads} heads (DINOv2-Small: 384, 12, 6)")


# Meta's per-block module names -> Hugging Face's (as published on the hub); the fused qkv and the
# LayerScale gammas are handled on their own in meta_to_hf.
_META_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_META_LAYERSCALE = {"ls1": "layer_scale1", "ls2": "layer_scale2"}  # .gamma -> .lambda1
_META_TOP = {
    "cls_token": "embeddings.cls_token",
    "mask_token": "embeddings.mask_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
# Newer transformers name the attention projections like a language model; both spellings load.
_HF_RENAMES = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
)


def meta_to_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Meta's DINOv2 state dict -> Hugging Face Dinov2Model names (the hub's published layout).

    blocks.{i}.attn.qkv (3C, C) holds query, key and value stacked in that order (Meta reshapes
    its output to (3, heads, C / heads)), so it is cut into three (C, C) thirds.
    Keys the mapping does not know are passed through unchanged, for the caller's check to name.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        block = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias|gamma)", key)
        if key in _META_TOP:
            out[_META_TOP[key]] = value
        elif block and block[2] == "attn.qkv":
            prefix = f"encoder.layer.{block[1]}.attention.attention."
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[f"{prefix}{name}.{block[3]}"] = part
        elif block and block[3] == "gamma" and block[2] in _META_LAYERSCALE:
            out[f"encoder.layer.{block[1]}.{_META_LAYERSCALE[block[2]]}.lambda1"] = value
        elif block and block[3] != "gamma" and block[2] in _META_BLOCK:
            out[f"encoder.layer.{block[1]}.{_META_BLOCK[block[2]]}.{block[3]}"] = value
        else:
            out[key] = value
    return out


def _to_model_names(state: dict[str, Tensor], model_keys: set[str]) -> dict[str, Tensor]:
    """Spell the attention keys the way the installed transformers' state_dict() does."""
    new_style = any(".attention.q_proj." in k for k in model_keys)
    out = {}
    for key, value in state.items():
        for old, new in _HF_RENAMES:
            key = key.replace(old, new) if new_style else key.replace(new, old)
        out[key] = value
    return out


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(path: Path, problem: str, config: DINOv2Config) -> FlowSDFError:
    return FlowSDFError(_one_line(
        f"DINOv2 weights {path}: {problem}; expected {config.describe()} as a Hugging Face folder, "
        f"a .pth state dict or a .safetensors file; get it from {WHERE}"))


def _read_state(path: Path, config: DINOv2Config) -> dict[str, Tensor]:
    """The tensors of a .pth/.pt/.bin (torch.load, weights_only) or .safetensors file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        elif suffix in (".pth", ".pt", ".bin"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise _fail(path, f"unknown file type {suffix!r}", config)
    except FlowSDFError:
        raise
    except Exception as e:  # any unreadable file: torch and safetensors raise several types
        raise _fail(path, f"cannot be read ({type(e).__name__}: {e})", config) from e
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise _fail(path, "is not a flat state dict of tensors", config)
    return state


def _hf_config(config: DINOv2Config, image_size: int):
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        patch_size=config.patch_size,
        image_size=image_size,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        qkv_bias=True,
        use_swiglu_ffn=False,
    )


def _model_from_state(path: Path, state: dict[str, Tensor], config: DINOv2Config) -> Dinov2Model:
    """Build Dinov2Model for `config` and load `state` (Meta's or Hugging Face's layout) strictly."""
    from transformers import Dinov2Model

    state = {k.removeprefix("dinov2."): v for k, v in state.items()}  # a classifier's backbone
    if "patch_embed.proj.weight" in state:
        state = meta_to_hf(state)
    elif "embeddings.patch_embeddings.projection.weight" not in state:
        some = ", ".join(sorted(state)[:4]) or "no tensors"
        raise _fail(path, f"has neither Meta's keys (patch_embed.proj.weight, blocks.N...) nor Hugging "
                          f"Face's (embeddings..., encoder.layer.N...), found {some}", config)
    pos = state.get("embeddings.position_embeddings")
    grid = round((pos.shape[1] - 1) ** 0.5) if pos is not None and pos.ndim == 3 else 0
    if grid < 1 or grid * grid + 1 != pos.shape[1]:
        raise _fail(path, "has no square position-embedding grid (pos_embed)", config)

    with torch.device("meta"):  # no time spent on a random initialisation that is overwritten
        model = Dinov2Model(_hf_config(config, grid * config.patch_size))
    expected = model.state_dict()
    state = _to_model_names(state, set(expected))
    if "embeddings.mask_token" in expected and "embeddings.mask_token" not in state:
        state["embeddings.mask_token"] = torch.zeros(expected["embeddings.mask_token"].shape)  # unused here
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = (f"lacks {len(missing)} expected tensor(s) (first: {missing[0]})" if missing else "")
        what += ("; " if missing and unexpected else "")
        what += (f"has {len(unexpected)} unknown tensor(s) (first: {unexpected[0]})" if unexpected else "")
        raise _fail(path, what, config)
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise _fail(path, f"{key} has shape {tuple(state[key].shape)}, expected {tuple(ref.shape)}", config)
    state = {k: v.float() for k, v in state.items()}  # a half-precision file runs in float32
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _model_from_folder(path: Path, config: DINOv2Config) -> Dinov2Model:
    from transformers import Dinov2Model
    from transformers.utils import logging as hf_logging

    # Quiet while loading: transformers' progress bar and load report would only repeat, in many
    # lines, what the one-line error below says.
    bar, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        # ignore_mismatched_sizes: report wrong shapes through `info` (checked below) rather than as
        # an exception that points at the load report silenced here.
        model, info = Dinov2Model.from_pretrained(
            str(path), local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except (OSError, ValueError, RuntimeError, KeyError) as e:  # no weights file, unreadable config
        raise _fail(path, f"cannot be loaded as a Hugging Face folder ({type(e).__name__}: {e})", config) from e
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    mismatched = sorted(info.get("mismatched_keys", ()))  # (name, file shape, model shape)
    if mismatched:  # from_pretrained filled these with random numbers
        name, got, want = mismatched[0][:3]
        raise _fail(path, f"{len(mismatched)} tensor(s) of the wrong shape (first: {name} is {tuple(got)}, "
                          f"its config.json asks for {tuple(want)})", config)
    missing = sorted(info.get("missing_keys", ()))
    if missing:  # likewise left random
        raise _fail(path, f"lacks {len(missing)} expected tensor(s) (first: {missing[0]})", config)
    hf = model.config
    got = (hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads, hf.patch_size)
    want = (config.hidden_size, config.num_layers, config.num_heads, config.patch_size)
    if got != want:
        raise _fail(path, f"is a ViT/{hf.patch_size} with width {hf.hidden_size}, {hf.num_hidden_layers} "
                          f"layers and {hf.num_attention_heads} heads", config)
    return model


def load_dinov2(weights: str | os.PathLike, config: DINOv2Config | None = None) -> Dinov2Model:
    """The transformers Dinov2Model held in `weights` (folder, .pth or .safetensors), never the network."""
    config = config if config is not None else DINOv2Config()
    path = Path(weights).expanduser()
    if not path.exists():
        raise _fail(path, "not found", config)
    # Belt and braces: every call below reads local files only, and the hub client is told so too.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        raise FlowSDFError("the DINOv2 conditioner needs the transformers package: pip install transformers") from e
    if path.is_dir():
        return _model_from_folder(path, config)
    return _model_from_state(path, _read_state(path, config), config)


class DINOv2Conditioner(nn.Module):
    """(B, 3, H, W) images in [0, 1] -> (B, 1 + (input_size / 14)^2, hidden) tokens of a frozen DINOv2.

    Its weights are part of this module's state_dict like any submodule's (22 M for ViT-S).
    """

    def __init__(self, weights: str | os.PathLike, config: DINOv2Config | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else DINOv2Config()
        if config.input_size % config.patch_size:
            raise ValueError(f"input_size {config.input_size} must be divisible by patch_size {config.patch_size}")
        self.model = load_dinov2(weights, config)
        self.model.requires_grad_(False)
        self.model.eval()
        self.embed_dim = config.hidden_size
        self.num_tokens = 1 + (config.input_size // config.patch_size) ** 2
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> DINOv2Conditioner:
        """Frozen: the encoder stays in eval mode (no dropout, fixed statistics) whatever mode says."""
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [0, 1] -> tokens (B, 1 + (S/14)^2, hidden), CLS first."""
        s = self.config.input_size
        x = images
        if x.shape[-2:] != (s, s):
            # Bicubic as in DINOv2's own preprocessing; antialias for inputs larger than s.
            x = F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False, antialias=True)  # (B, 3, S, S)
            x = x.clamp(0.0, 1.0)  # bicubic overshoots a little at edges
        x = (x - self.mean) / self.std  # (B, 3, S, S)
        with torch.no_grad():
            return self.model(pixel_values=x).last_hidden_state  # (B, 1 + (S/14)^2, hidden)


@torch.no_grad()
def encode_in_batches(encoder: nn.Module, images: Tensor, batch_size: int = 64,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """Tokens of a frozen encoder for every image (N, 3, H, W) -> (N, T, C) on the CPU.

    For caching per training image: run once, store (e.g. with safetensors), and train the velocity
    net on the stored tokens. Images are moved batch by batch to the encoder's device; the result is
    kept on the CPU in `dtype` (float16 halves the cache).
    """
    device = next(encoder.parameters()).device
    out = [encoder(images[i : i + batch_size].to(device)).to("cpu", dtype) for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0)
