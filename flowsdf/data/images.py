"""Pictures from users: read, check and bring to the model's input format.

The models were trained on square RGB renders with a black background (flowsdf.data.dataset).
Any picture is brought to that form: greyscale and palette images become RGB, an alpha channel is
composited on black (the training background), a non-square picture is padded to a square with
the background colour (nothing is cropped), and the square is resized to the model's size.

Pillow reads only the header when a file is opened, so the declared size is checked before a
single pixel is decoded: a file that claims 30000 x 30000 pixels is refused without allocating
memory for it. Every failure is one FlowSDFError naming the file and the reason.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from flowsdf.errors import FlowSDFError

# Pictures larger than this (in pixels) are refused before decoding: 64 megapixels, far beyond
# any use at the model's input size and small enough to decode safely on a laptop.
MAX_PIXELS = 64_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
BACKGROUND = (0, 0, 0)  # the training renders' background


def find_images(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Expand files and folders into picture files (folders: their PNG/JPEG/WebP files, sorted).

    Returns (files, problems): a path that does not exist or an empty folder is a problem (one
    line each), not an exception, so the other inputs of the same call are still processed.
    """
    files, problems = [], []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append(f"{p}: the folder holds no PNG, JPEG or WebP picture")
            files += found
        elif p.exists():
            files.append(p)
        else:
            problems.append(f"{p}: no such file or folder")
    return files, problems


def open_checked(source: str | Path | Image.Image) -> Image.Image:
    """A decoded RGB(A) picture, refusing unreadable, empty, truncated and oversized files."""
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
                image = Image.open(path)
        except UnidentifiedImageError as e:
            raise FlowSDFError(f"{name}: not a picture Pillow can read (PNG, JPEG, WebP ...)") from e
        except Image.DecompressionBombError as e:  # Pillow's own refusal, at twice its pixel limit
            raise FlowSDFError(f"{name}: the picture declares more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, "
                               f"over the limit of {MAX_PIXELS:,}; scale it down first") from e
    w, h = image.size
    if w < 1 or h < 1:
        raise FlowSDFError(f"{name}: the picture has no pixels ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise FlowSDFError(f"{name}: {w}x{h} pixels is over the limit of {MAX_PIXELS:,}; scale it down first")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for truncated or corrupt data
        raise FlowSDFError(f"{name}: the picture data is damaged or truncated ({e})") from e
    return image


def to_model_input(image: Image.Image, size: int) -> Tensor:
    """A picture as the model sees it: (3, size, size) float in [0, 1], black background."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        image = Image.alpha_composite(base, rgba)
    image = image.convert("RGB")
    w, h = image.size
    side = max(w, h)
    square = Image.new("RGB", (side, side), BACKGROUND)
    square.paste(image, ((side - w) // 2, (side - h) // 2))
    square = square.resize((size, size), Image.Resampling.BOX if side > size else Image.Resampling.BILINEAR)
    array = np.asarray(square, dtype=np.float32) / 255.0  # (S, S, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (3, S, S)


def load_image(source: str | Path | Image.Image, size: int) -> Tensor:
    """Read and convert one picture (path or PIL image): (3, size, size) in [0, 1]."""
    return to_model_input(open_checked(source), size)


def foreground_mask(images: Tensor, threshold: float = 0.02) -> Tensor:
    """The object's mask in model-input images (N, 3, S, S) -> (N, S, S) in {0, 1}.

    The background is black, and a rendered surface is never darker than the ambient term the
    renders add (0.1 in every channel): any channel above `threshold` is the object.
    """
    return (images.amax(dim=1) > threshold).float()
