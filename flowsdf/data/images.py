"""Pictures from users: read, check and bring to the model's input format.

The models were trained on square RGB renders with a black background (flowsdf.data.dataset).
Any picture is brought to that form: every Pillow mode becomes RGB in [0, 1] at its full bit depth
(16-bit greyscale is divided by 65535, not clipped at 255 as Pillow's convert("RGB") does), an alpha
channel is composited on black (the training background), a non-square picture is padded to a
square with the background colour (nothing is cropped), and the square is resized to the model's
size. Re-framing the object and replacing another background is flowsdf.data.prepare's work.

Reading is defensive, because pictures come from anywhere:
- Only PNG, JPEG and WebP are opened (Pillow's `formats=`): a PostScript file named .png never
  reaches Ghostscript, nor any of Pillow's other decoders.
- Pillow reads only the header when a file is opened, so the declared size is checked before a
  single pixel is decoded: more than MAX_PIXELS pixels, or a side longer than MAX_SIDE, is refused
  without allocating memory for it. After that no step allocates side x side: the padding to a
  square is done at the model's size (see `_square_resized`), so a 16,000 x 3 strip costs what its
  own pixels cost, not a 16,000-pixel square.
- EXIF orientation is applied, so a phone's portrait photo is read upright.
- An animated picture (APNG, animated WebP) or a multi-picture JPEG gives its first frame, and says so
  in its notes.
Every failure is one FlowSDFError naming the file and the reason.
"""

from __future__ import annotations

import dataclasses
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from flowsdf.errors import FlowSDFError

# Pictures larger than this (in pixels) are refused before decoding: 64 megapixels, far beyond
# any use at the model's input size and small enough to decode safely on a laptop.
MAX_PIXELS = 64_000_000
# ... and so is a side longer than this: the longest side of a 200-megapixel phone sensor (16,320)
# still passes, while a 1 x 60,000 strip (60,000 pixels, far under MAX_PIXELS) does not. Every
# intermediate image below is at most (model size) x MAX_SIDE pixels.
MAX_SIDE = 16_384
FORMATS = ("PNG", "JPEG", "WEBP")  # Pillow's names of the only decoders we let run
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
BACKGROUND = (0, 0, 0)  # the training renders' background

# Full scale of Pillow's integer greyscale modes. "I" (32-bit) is how Pillow has long stored 16-bit
# greyscale files, so it is read on the same 16-bit scale; values outside it are clipped, with a note.
_INTEGER_FULL_SCALE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0}
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
# Rows of the padded square are resized this many pixels at a time (3 MB of RGB).
_BAND_PIXELS = 1 << 20
_ORIENTATION = 0x0112  # the EXIF tag


@dataclass
class PictureInfo:
    """What reading a picture found out, for a summary: where it came from and what was done."""

    name: str
    format: str | None  # "PNG", "JPEG", "WEBP" (Pillow's name; "MPO" for a multi-picture JPEG), None in memory
    mode: str  # Pillow's mode as decoded, e.g. "RGB", "I;16", "P"
    size: tuple[int, int]  # (width, height), upright (after the EXIF orientation)
    frames: int = 1
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class PictureList:
    """Pictures found in files and folders, and what was not taken."""

    files: list[Path]
    problems: list[str]  # one line each: a missing path, a folder without pictures
    skipped: list[Path]  # files in a folder whose suffix is not a picture's (subfolders are not searched)


def list_pictures(paths: list[Path]) -> PictureList:
    """Expand files and folders into picture files (folders: their PNG/JPEG/WebP files, sorted).

    A file named directly is taken whatever its suffix (reading it decides); in a folder only the
    picture suffixes are taken and the other files are returned in `skipped`, so a summary can
    name them. A path that does not exist or a folder without pictures is a problem (one line
    each), not an exception, so the other inputs of the same call are still processed.
    """
    files, problems, skipped = [], [], []
    for p in map(Path, paths):
        if p.is_dir():
            entries = sorted(f for f in p.iterdir() if f.is_file())
            found = [f for f in entries if f.suffix.lower() in IMAGE_SUFFIXES]
            others = [f for f in entries if f.suffix.lower() not in IMAGE_SUFFIXES]
            if not found:
                extra = f" ({len(others)} other file(s) skipped)" if others else ""
                problems.append(f"{p}: the folder holds no PNG, JPEG or WebP picture{extra}")
            files += found
            skipped += others
        elif p.exists():
            files.append(p)
        else:
            problems.append(f"{p}: no such file or folder")
    return PictureList(files, problems, skipped)


def find_images(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """`list_pictures` without the skipped files: (files, problems)."""
    found = list_pictures(paths)
    return found.files, found.problems


def read_picture(source: str | Path | Image.Image) -> tuple[Image.Image, PictureInfo]:
    """A decoded, upright picture (first frame) and what reading it found.

    Refuses unreadable, empty, truncated, oversized and non-PNG/JPEG/WebP files with one line.
    A PIL image passed in is taken as it is (its format is the caller's business), but its size
    is checked and its EXIF orientation applied like a file's.
    """
    if isinstance(source, Image.Image):
        image, name = source, "image"
    else:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise FlowSDFError(f"{name}: no such file")
        if path.stat().st_size == 0:
            raise FlowSDFError(f"{name}: the file is empty (0 bytes)")
        try:
            with warnings.catch_warnings():  # Pillow warns above 89 Mpixel; our own, lower limit follows
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(path, formats=list(FORMATS))
        except UnidentifiedImageError as e:
            raise FlowSDFError(f"{name}: not a picture flowsdf reads (only PNG, JPEG and WebP are opened)") from e
        except Image.DecompressionBombError as e:  # Pillow's own refusal, at twice its pixel limit
            raise FlowSDFError(f"{name}: the picture declares more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, "
                               f"over the limit of {MAX_PIXELS:,}; scale it down first") from e
    try:
        _check_size(image, name)
        frames = int(getattr(image, "n_frames", 1))
        fmt = image.format  # exif_transpose returns a plain Image without it
        try:
            image.load()  # the first frame: Pillow opens a multi-frame file at frame 0
        except (OSError, SyntaxError, ValueError, EOFError) as e:  # Pillow's errors for truncated or corrupt data
            raise FlowSDFError(f"{name}: the picture data is damaged or truncated ({e})") from e
    except FlowSDFError:
        if not isinstance(source, Image.Image):  # a refused file is not left open
            image.close()
        raise
    notes = []
    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError, EOFError, KeyError, TypeError, struct.error) as e:
        # A damaged EXIF block does not make the pixels unreadable: read them as stored, and say so.
        orientation = 1
        notes.append(f"the EXIF data is unreadable ({type(e).__name__}); the picture is used as stored")
    if frames > 1:
        notes.append(f"{frames} frames (an animation or a multi-picture file): the first frame is used")
        if not isinstance(source, Image.Image):  # Pillow keeps a multi-frame file open for seeking: ours to close
            first = image.copy()
            image.close()
            image = first
    if orientation in range(2, 9):  # 1 is upright; anything else is not an orientation
        image = ImageOps.exif_transpose(image)
        notes.append(f"turned upright from its EXIF orientation ({orientation})")
    return image, PictureInfo(name=name, format=fmt, mode=image.mode, size=image.size, frames=frames, notes=notes)


def _check_size(image: Image.Image, name: str) -> None:
    """Refuse, from the header alone, a picture too large in pixels or in its longer side."""
    w, h = image.size
    if w < 1 or h < 1:
        raise FlowSDFError(f"{name}: the picture has no pixels ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise FlowSDFError(f"{name}: {w}x{h} pixels is over the limit of {MAX_PIXELS:,}; scale it down first")
    if max(w, h) > MAX_SIDE:
        raise FlowSDFError(f"{name}: a side of {max(w, h):,} pixels ({w}x{h}) is over the limit of {MAX_SIDE:,}; "
                           f"scale it down first")


def open_checked(source: str | Path | Image.Image) -> Image.Image:
    """A decoded, upright picture (first frame), refusing unreadable, empty, truncated and oversized files."""
    return read_picture(source)[0]


def working_mode(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """The picture in one of three modes everything else computes with, and notes on what changed.

    "RGB" and "RGBA" (8-bit; palette, bilevel, CMYK, YCbCr, LAB, HSV and a tRNS colour key are
    converted by Pillow, which scales them correctly), or "F": greyscale of more than 8 bits
    (I;16*, I, F) as float in [0, 1], since Pillow's convert("L"/"RGB") clips those at 255.
    """
    mode, notes = image.mode, []
    if mode in _INTEGER_FULL_SCALE or mode == "F":
        full = _INTEGER_FULL_SCALE.get(mode, 1.0)
        values = np.asarray(image, dtype=np.float32) / full  # (H, W); I;16B's big-endian handled by numpy
        if values.size and (values.min() < 0.0 or values.max() > 1.0):
            notes.append(f"{mode} picture has values outside 0..{full:g}; they are clipped")
            values = np.clip(values, 0.0, 1.0)
        return Image.fromarray(values, "F"), notes
    if mode == "La":  # premultiplied; Pillow converts it only to LA
        image, mode = image.convert("LA"), "LA"
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return (image if mode == "RGBA" else image.convert("RGBA")), notes
    return (image if mode == "RGB" else image.convert("RGB")), notes


def _on_background(image: Image.Image) -> Image.Image:
    """An RGBA picture composited on the training background: RGB (an RGB or F picture unchanged)."""
    if image.mode != "RGBA":
        return image
    base = Image.new("RGBA", image.size, BACKGROUND + (255,))
    return Image.alpha_composite(base, image).convert("RGB")


def _square_resized(image: Image.Image, size: int) -> Image.Image:
    """The picture padded to a square with black (centred), then resized to size x size.

    Exactly what pasting into a side x side canvas and resizing it gives, without making that
    canvas: Pillow resizes horizontally first, then vertically (rounding to the mode's type in
    between), with each output pixel's weights depending only on the padded coordinates. So the
    horizontal pass is run on bands of rows padded to `side`, and the vertical pass on a size x
    side column. tests/test_images_reading.py checks this against the plain canvas.
    """
    w, h = image.size
    side = max(w, h)
    filt = Image.Resampling.BOX if side > size else Image.Resampling.BILINEAR
    if w == h:
        return image.resize((size, size), filt)
    x0, y0 = (side - w) // 2, (side - h) // 2
    if w == side:  # nothing to pad horizontally: one pass over the picture itself
        rows = image.resize((size, h), filt)
    else:
        rows = Image.new(image.mode, (size, h))  # (size, h), black
        band = max(1, _BAND_PIXELS // side)
        for top in range(0, h, band):
            n = min(band, h - top)
            strip = Image.new(image.mode, (side, n))
            strip.paste(image.crop((0, top, w, top + n)), (x0, 0))
            rows.paste(strip.resize((size, n), filt), (0, top))
    column = Image.new(image.mode, (size, side))  # (size, side), black
    column.paste(rows, (0, y0))
    return column.resize((size, size), filt)


def _to_array(image: Image.Image) -> np.ndarray:
    """An RGB, RGBA or F picture as float32 (H, W, C) in [0, 1]: C = 3, or 4 with alpha last."""
    if image.mode == "F":
        return np.repeat(np.asarray(image, dtype=np.float32)[..., None], 3, axis=-1)  # (H, W, 3)
    return np.asarray(image, dtype=np.float32) / 255.0  # (H, W, 3 or 4)


def to_model_input(image: Image.Image, size: int) -> Tensor:
    """A picture as the model sees it: (3, size, size) float in [0, 1], black background.

    Takes the picture as it is (no EXIF step: `read_picture` does that); any Pillow mode.
    """
    image, _ = working_mode(image)
    square = _square_resized(_on_background(image), size)
    array = _to_array(square)  # (S, S, 3)
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()  # (3, S, S)


def load_image(source: str | Path | Image.Image, size: int) -> Tensor:
    """Read and convert one picture (path or PIL image): (3, size, size) in [0, 1]."""
    return load_picture(source, size)[0]


def load_picture(source: str | Path | Image.Image, size: int) -> tuple[Tensor, PictureInfo]:
    """`load_image` with what reading found: ((3, size, size) in [0, 1], PictureInfo with notes)."""
    image, info = read_picture(source)
    working, notes = working_mode(image)
    info.notes += notes
    square = _square_resized(_on_background(working), size)
    return torch.from_numpy(np.ascontiguousarray(_to_array(square))).permute(2, 0, 1).contiguous(), info


def picture_array(image: Image.Image, max_side: int | None = None) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """The picture as float32 arrays in [0, 1], shrunk (area average) to fit `max_side` if given.

    Returns rgb (H, W, 3), alpha (H, W) or None when the picture has no alpha channel, and notes.
    The colours are the picture's own, not composited on anything.
    """
    image, notes = working_mode(image)
    w, h = image.size
    if max_side is not None and max(w, h) > max_side:
        k = max_side / max(w, h)
        # Pillow resizes RGBA premultiplied, so transparent pixels' hidden colours do not bleed in.
        image = image.resize((max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.BOX)
    array = _to_array(image)  # (H, W, 3 or 4)
    if array.shape[-1] == 4:
        return array[..., :3], array[..., 3], notes
    return array, None, notes


def foreground_mask(images: Tensor, threshold: float = 0.02) -> Tensor:
    """The object's mask in model-input images (N, 3, S, S) -> (N, S, S) in {0, 1}.

    The background is black, and a rendered surface is never darker than the ambient term the
    renders add (0.1 in every channel): any channel above `threshold` is the object.
    """
    return (images.amax(dim=1) > threshold).float()
