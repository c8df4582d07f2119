"""Files a user might upload instead of a picture, for the tests of refusals (not a test module)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def declared_png(path: Path, width: int, height: int) -> Path:
    """A valid 1x1 PNG whose header (IHDR, CRC fixed) claims width x height pixels."""
    Image.new("RGB", (1, 1)).save(path)
    raw = bytearray(path.read_bytes())
    raw[16:24] = struct.pack(">II", width, height)  # IHDR data follows the signature, length and type
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))  # CRC over type + data
    path.write_bytes(bytes(raw))
    return path


def empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def text_file(path: Path) -> Path:
    path.write_text("these are notes, not a picture\n")
    return path


def noise_png(path: Path, side: int, seed: int = 0) -> Path:
    """A real picture of random pixels: PNG cannot compress it, so it is about 3 * side^2 bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path
