"""Text encoders: prompts -> a sequence of token features and its mask, for conditioning.

Two kinds behind one interface, `encode(texts) -> (tokens (B, L, C), mask (B, L) bool)`:

- "small": `SmallTextEncoder`, a few pre-LayerNorm transformer blocks trained from scratch
  with the rest of flowsdf, over our own word tokenizer (flowsdf.text.tokenizer). It knows only
  the caption vocabulary, which is all the procedural dataset ever says.
- "clip": `CLIPTextEncoder`, a frozen pretrained CLIP text transformer read from a LOCAL folder
  the user provides (this project never downloads weights). It knows English at large, so
  prompts off the caption vocabulary still mean something. transformers is imported only here,
  when this kind is asked for, with the Hugging Face hub switched offline.

Padding never changes what the real tokens see: padded keys are masked out of attention, and
the small encoder's outputs at padded positions are zero. Readers (cross-attention, pooling)
should still use the mask.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowsdf.errors import FlowSDFError
from flowsdf.schema import Rule, int_range, one_of
from flowsdf.text.tokenizer import (
    WordTokenizer,
    caption_tokenizer,
    check_prompts,
    warn_truncated,
)

KINDS = ("small", "clip")


@dataclass
class TextConfig:
    kind: str = "small"  # "small" (trained from scratch) or "clip" (frozen, from clip_path)
    width: int = 128  # small: feature size C of every token
    depth: int = 3  # small: transformer blocks
    heads: int = 4  # small: attention heads; width must divide by it
    mlp_ratio: int = 4  # small: hidden size of each block's MLP, as a multiple of width
    max_length: int = 32  # small: tokens incl. <start>/<end>; the longest caption is ~20 words
    clip_path: str = ""  # clip: a folder saved by transformers' save_pretrained (see CLIPTextEncoder)

    # Checked like every config section (flowsdf.schema); width / heads and clip_path: flowsdf.config.
    RULES = {"kind": one_of(*KINDS), "width": int_range(1, 4096), "depth": int_range(1, 64), "heads": int_range(1, 64),
             "mlp_ratio": int_range(1, 16), "max_length": int_range(3, 512), "clip_path": Rule("a path", lambda v: True)}


class TextEncoder(Protocol):
    """What a conditioner needs from either kind."""

    @property
    def width(self) -> int: ...

    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]: ...


def pooled(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean of the real tokens: tokens (B, L, C), mask (B, L) -> (B, C)."""
    m = mask.to(tokens.dtype).unsqueeze(-1)  # (B, L, 1)
    return (tokens * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, C)


# ---------------------------------------------------------------------------------------------
# small: trained from scratch


class Block(nn.Module):
    """Pre-LayerNorm transformer block, bidirectional attention with a key-padding mask."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, L, C), mask (B, L) bool (True = real) -> (B, L, C)."""
        B, L, C = x.shape
        qkv = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, C // self.heads)  # (B, L, 3, H, D)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, L, D)
        # Every row keeps <start> as a real key, so no softmax row is all -inf.
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # (B, H, L, D)
        x = x + self.proj(a.transpose(1, 2).reshape(B, L, C))  # (B, L, C)
        return x + self.mlp(self.ln2(x))  # (B, L, C)


class SmallTextEncoder(nn.Module):
    """ids (B, L) + mask (B, L) -> tokens (B, L, width), trained from scratch.

    Parameters at the defaults (width 128, depth 3, MLP x4, max_length 32, vocabulary V):
        token embedding   V * 128             (V = 97 for today's caption vocabulary: 12,416)
        positions         32 * 128            =   4,096
        each block        4 * 128 + 128*384 + 384 + 128*128 + 128 + 2 * (128*512) + 512 + 128
                                              = 198,272;  3 blocks = 594,816
        final LayerNorm   256
        total with V = 97                       611,584
    """

    def __init__(self, config: TextConfig, tokenizer: WordTokenizer) -> None:
        super().__init__()
        if tokenizer.max_length > config.max_length:
            raise FlowSDFError(
                f"the tokenizer writes {tokenizer.max_length} tokens but text.max_length is {config.max_length}"
            )
        self.config = config
        self.tokenizer = tokenizer
        self.token_embed = nn.Embedding(tokenizer.vocab_size, config.width)
        self.pos_embed = nn.Parameter(torch.randn(1, config.max_length, config.width) * 0.02)
        self.blocks = nn.ModuleList(Block(config.width, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.ln_f = nn.LayerNorm(config.width)
        nn.init.normal_(self.token_embed.weight, std=0.02)

    @property
    def width(self) -> int:
        return self.config.width

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids (B, L) long, mask (B, L) bool with L <= max_length -> tokens (B, L, C), zero at padding."""
        L = ids.shape[1]
        x = self.token_embed(ids) + self.pos_embed[:, :L]  # (B, L, C)
        for block in self.blocks:
            x = block(x, mask)  # (B, L, C)
        return self.ln_f(x) * mask.unsqueeze(-1).to(x.dtype)  # (B, L, C)

    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Prompts -> (tokens (B, max_length, C), mask (B, max_length) bool), on this module's device."""
        ids, mask = self.tokenizer.encode(texts)
        device = self.token_embed.weight.device
        ids, mask = ids.to(device), mask.to(device)
        return self(ids, mask), mask


# ---------------------------------------------------------------------------------------------
# clip: frozen, from a local folder

_CLIP_HINT = (
    "expected a local folder with a CLIP model as transformers saves it (config.json, model.safetensors or "
    "pytorch_model.bin, tokenizer.json or vocab.json + merges.txt), e.g. openai/clip-vit-base-patch32 or "
    "openai/clip-vit-large-patch14 downloaded once where there is network "
    "(https://huggingface.co/openai/clip-vit-base-patch32)"
)
_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:200]


def _check_clip_folder(path: str | os.PathLike) -> Path:
    """The folder, or a one-line FlowSDFError saying what is missing; reads nothing but files."""
    if not str(path):
        raise FlowSDFError(f"CLIP text encoder: no folder given (text.clip_path is empty); {_CLIP_HINT}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FlowSDFError(f"CLIP text encoder: {folder} is not a folder; {_CLIP_HINT}")
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any((folder / w).is_file() for w in _WEIGHTS):
        missing.append("weights")
    if not ((folder / "tokenizer.json").is_file() or all((folder / f).is_file() for f in ("vocab.json", "merges.txt"))):
        missing.append("tokenizer files")
    if missing:
        raise FlowSDFError(f"CLIP text encoder: {folder} lacks {', '.join(missing)}; {_CLIP_HINT}")
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise FlowSDFError(f"CLIP text encoder: {folder}/config.json is unreadable ({_first_line(e)}); {_CLIP_HINT}") from e
    if model_type not in ("clip", "clip_text_model"):
        raise FlowSDFError(f"CLIP text encoder: {folder} holds a {model_type!r} model, not CLIP; {_CLIP_HINT}")
    return folder


@contextmanager
def _quiet(transformers) -> Iterator[None]:
    """Silence transformers' loading reports (a full CLIP folder lists every unused vision weight)."""
    log = transformers.utils.logging
    level, bars = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        yield
    finally:
        log.set_verbosity(level)
        if bars:
            log.enable_progress_bar()


def load_clip_text(path: str | os.PathLike):
    """(CLIPTokenizer, CLIPTextModel) from a local folder, frozen and in eval mode.

    Never touches the network: HF_HUB_OFFLINE=1 and local_files_only=True. Any problem — a
    missing folder, missing files, another model, damaged or missing weights, no transformers —
    is one FlowSDFError line that says what is expected and where to get it."""
    folder = _check_clip_folder(path)
    os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is first imported, so the hub sees it
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import transformers
    except ImportError as e:
        raise FlowSDFError("the CLIP text encoder needs the transformers package: pip install transformers") from e
    from safetensors import SafetensorError

    with _quiet(transformers):
        try:
            tokenizer = transformers.CLIPTokenizer.from_pretrained(folder, local_files_only=True)
            model, info = transformers.CLIPTextModel.from_pretrained(
                folder, local_files_only=True, output_loading_info=True
            )
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
            raise FlowSDFError(f"CLIP text encoder: cannot load {folder} ({_first_line(e)}); {_CLIP_HINT}") from e
    if info.get("missing_keys"):
        keys = sorted(info["missing_keys"])
        raise FlowSDFError(
            f"CLIP text encoder: {folder} lacks {len(keys)} text-model weights (e.g. {keys[0]}); {_CLIP_HINT}"
        )
    top_id = max(tokenizer.get_vocab().values())
    if top_id >= model.config.vocab_size:
        raise FlowSDFError(
            f"CLIP text encoder: {folder}'s tokenizer has ids up to {top_id} but the model only "
            f"{model.config.vocab_size} embeddings; {_CLIP_HINT}"
        )
    model.requires_grad_(False)
    return tokenizer, model.eval()


class CLIPTextEncoder(nn.Module):
    """A frozen CLIP text transformer: prompts -> last hidden states (B, 77, C) + mask (B, 77).

    Load it from a local folder (`path`), e.g. one made once where there is network by
        CLIPModel.from_pretrained("openai/clip-vit-base-patch32").save_pretrained(DIR)
        CLIPTokenizer.from_pretrained("openai/clip-vit-base-patch32").save_pretrained(DIR)
    A whole CLIP folder (text and vision) works; only the text half is read."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.tokenizer, self.model = load_clip_text(path)
        limit = self.tokenizer.model_max_length
        # A folder without tokenizer_config.json leaves model_max_length "infinite": use the model's.
        self.max_length = min(limit, self.model.config.max_position_embeddings)

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    def train(self, mode: bool = True) -> CLIPTextEncoder:
        super().train(mode)
        self.model.eval()  # frozen: never dropout, whatever the caller's mode
        return self

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids (B, L), mask (B, L) bool -> last hidden states (B, L, C), no gradient."""
        with torch.no_grad():
            return self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (B, L, C)

    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Prompts -> (hidden states (B, 77, C), mask (B, 77) bool); longer prompts are cut to 77
        tokens with a warning, as CLIP itself was trained."""
        texts = check_prompts(texts)
        L = self.max_length
        batch = self.tokenizer(texts, padding="max_length", truncation=True, max_length=L, return_tensors="pt")
        mask = batch["attention_mask"].bool()  # (B, L)
        full = [t for t, m in zip(texts, mask) if bool(m.all())]
        if full:  # only prompts that fill the window can have been cut; count their tokens
            import transformers  # already imported by load_clip_text

            with _quiet(transformers):  # it would warn that the count exceeds the window
                n_long = sum(len(self.tokenizer(t, truncation=False)["input_ids"]) > L for t in full)
            if n_long:
                warn_truncated(n_long, len(texts), L)
        device = next(self.model.parameters()).device
        ids, mask = batch["input_ids"].to(device), mask.to(device)
        return self(ids, mask), mask


def build_text_encoder(config: TextConfig, tokenizer: WordTokenizer | None = None) -> nn.Module:
    """The encoder `config.kind` names; the small one gets the caption tokenizer by default."""
    if config.kind == "small":
        return SmallTextEncoder(config, tokenizer if tokenizer is not None else caption_tokenizer(config.max_length))
    return CLIPTextEncoder(config.clip_path)
