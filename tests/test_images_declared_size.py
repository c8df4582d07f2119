"""Pictures whose header declares a huge size are refused before any pixel is decoded."""

import pytest
from bad_pictures import declared_png
from PIL import Image

from flowsdf.data.images import MAX_PIXELS, open_checked
from flowsdf.errors import FlowSDFError


@pytest.mark.parametrize("side", [9_000, 100_000])  # over our limit; over Pillow's own bomb limit too
def test_huge_declared_size_is_one_clear_error(tmp_path, side):
    assert side * side > MAX_PIXELS
    with pytest.raises(FlowSDFError, match="limit of 64,000,000"):
        open_checked(declared_png(tmp_path / "huge.png", side, side))


def test_the_patched_header_is_still_a_readable_png(tmp_path):
    # The size check, not a broken file, is what refuses it: a small declared size decodes far
    # enough for Pillow to read the header and then finds the pixel data short.
    path = declared_png(tmp_path / "small.png", 3, 2)
    with Image.open(path) as im:
        assert im.size == (3, 2)
