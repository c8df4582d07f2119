"""A word-level tokenizer of our own, built from the caption vocabulary: nothing to download.

Text is lower-cased and split into words (runs of letters, digits and underscores, in any
script) and single punctuation marks, so "A tall, red cylinder!" reads as
    <start> a tall , red cylinder ! <end> <pad> <pad> ...
Words outside the vocabulary — typos, other languages, emoji — become <unk>, with one warning per
call that names them; a prompt with no known word at all is a FlowSDFError (it would condition on
nothing but <unk>).

Prompts are checked the same way for every text encoder (`check_prompts`): an empty or blank
prompt is a FlowSDFError, since it says nothing to condition on. A prompt longer than the
encoder's window is CUT to its first words with a one-line warning, not refused: CLIP does the
same at 77 tokens, the start of a description carries its main words, and a long prompt typed
by a person should still give a shape rather than an error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from flowsdf.data import captions
from flowsdf.errors import FlowSDFError, warn

PAD, UNK, START, END = "<pad>", "<unk>", "<start>", "<end>"
SPECIALS = (PAD, UNK, START, END)

_TOKEN = re.compile(r"\w+|[^\w\s]")


def split_words(text: str) -> list[str]:
    """Lower-case words and single punctuation marks of `text`."""
    return _TOKEN.findall(text.lower())


def check_prompts(texts: Sequence[str]) -> list[str]:
    """`texts` as a list, or a one-line FlowSDFError for a missing, empty or non-text prompt."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise FlowSDFError(f"prompts must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise FlowSDFError("no prompt given")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise FlowSDFError(f"prompt {i} is a {type(text).__name__}, not text")
        if not text.strip():
            raise FlowSDFError(f"prompt {i} is empty; describe the shape, e.g. 'a tall red cylinder'")
    return list(texts)


def _shown(words: Sequence[str], at_most: int = 5) -> str:
    head = ", ".join(repr(w[:20]) for w in words[:at_most])
    return head + (f" and {len(words) - at_most} more" if len(words) > at_most else "")


def warn_truncated(n_long: int, n_total: int, window: int) -> None:
    warn(f"{n_long} of {n_total} prompts were longer than the text encoder's {window} tokens and were cut to fit")


class WordTokenizer:
    """Words <-> ids; ids 0..3 are <pad>, <unk>, <start>, <end>, then the words in order."""

    def __init__(self, words: Sequence[str], max_length: int = 32) -> None:
        if max_length < 3:
            raise FlowSDFError(f"tokenizer max_length must be at least 3 (<start>, a word, <end>), got {max_length}")
        words = [w for w in words if w not in SPECIALS]
        if len(set(words)) != len(words):
            raise FlowSDFError("tokenizer vocabulary has a repeated word")
        self.itos: list[str] = list(SPECIALS) + list(words)
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        self.max_length = max_length
        self.pad_id, self.unk_id, self.start_id, self.end_id = (self.stoi[s] for s in SPECIALS)

    @classmethod
    def from_texts(cls, texts: Sequence[str], max_length: int = 32) -> WordTokenizer:
        """Every word of `texts`, sorted (so the same texts always give the same ids)."""
        return cls(sorted({w for t in texts for w in split_words(t)}), max_length)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Prompts -> ids (B, max_length) long and mask (B, max_length) bool, True on real tokens
        (<start>, words, <end>) and False on padding."""
        texts = check_prompts(texts)
        B, L = len(texts), self.max_length
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)  # (B, L)
        mask = torch.zeros(B, L, dtype=torch.bool)  # (B, L)
        n_long, unknown = 0, []
        for i, text in enumerate(texts):
            words = split_words(text)
            if len(words) > L - 2:
                n_long += 1
                words = words[: L - 2]
            missing = [w for w in words if w not in self.stoi]
            if words and len(missing) == len(words):
                raise FlowSDFError(f"prompt {i}: none of its words is one the model knows ({_shown(missing)}); it "
                                   f"knows {len(self.itos) - len(SPECIALS)} English words of shapes, e.g. "
                                   "'a tall red cylinder', 'a flat box', 'a small torus'")
            unknown += [w for w in missing if w not in unknown]
            row = [self.start_id] + [self.stoi.get(w, self.unk_id) for w in words] + [self.end_id]
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        if n_long:
            warn_truncated(n_long, B, L)
        if unknown:  # said once per call: the model reads them as <unk>, which carries no meaning
            warn(f"{len(unknown)} word(s) the model does not know were read as unknown: {_shown(unknown)}")
        return ids, mask

    def decode(self, ids: Tensor) -> list[str]:
        """ids (B, L) -> the words between <start> and <end>, joined by spaces (<unk> kept)."""
        out = []
        for row in ids.tolist():
            words = []
            for i in row:
                if i == self.end_id:
                    break
                if i not in (self.start_id, self.pad_id):
                    words.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
            out.append(" ".join(words))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "word", "max_length": self.max_length, "vocab": list(self.itos)}

    @classmethod
    def from_dict(cls, d: Any) -> WordTokenizer:
        """The inverse of to_dict; anything else is a one-line FlowSDFError."""
        if not isinstance(d, dict) or d.get("kind") != "word":
            raise FlowSDFError("tokenizer: not a word tokenizer (expected {'kind': 'word', ...})")
        vocab, max_length = d.get("vocab"), d.get("max_length")
        if not isinstance(vocab, list) or not all(isinstance(w, str) for w in vocab):
            raise FlowSDFError("tokenizer: 'vocab' must be a list of words")
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise FlowSDFError(f"tokenizer: the vocabulary must start with {', '.join(SPECIALS)}")
        if not isinstance(max_length, int) or isinstance(max_length, bool):
            raise FlowSDFError("tokenizer: 'max_length' must be an integer")
        return cls(vocab[len(SPECIALS):], max_length)


def caption_tokenizer(max_length: int = 32) -> WordTokenizer:
    """The tokenizer of every word the procedural captioner can write (flowsdf.data.captions)."""
    return WordTokenizer.from_texts(captions.vocabulary_phrases(), max_length)
