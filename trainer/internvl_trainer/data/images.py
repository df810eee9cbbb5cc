"""Decoding an image file into the RGB pixels a person sees when they open it.

InternVL opens images with ``Image.open(path).convert("RGB")``. That is right for plain 8-bit RGB
files and wrong for several others, which this module decodes as an image viewer shows them:

- EXIF orientation: a phone photo stored sideways with an orientation tag is turned upright
  (InternVL ignores the tag and trains on the sideways pixels).
- Transparency (RGBA, LA, palette images with a transparent index, transparent colour keys):
  composited over white, as transformers' ``convert_to_rgb`` does; ``convert("RGB")`` would expose
  whatever colour the transparent pixels happen to hold, often black. An image whose alpha is 255
  everywhere skips the compositing (the pixels are the same, in a fraction of the time).
- 16-bit greyscale (``I;16`` PNG, TIFF): the high byte of each sample, the way Pillow already
  reads 16-bit RGB PNGs; ``convert("RGB")`` clips every value above 255 to white.
- 32-bit integer (``I``) and float (``F``) greyscale: read as 16-bit samples and as 0..1 (or
  0..255 when larger) intensities.
- CMYK (including Adobe's inverted CMYK JPEGs, which Pillow undoes when decoding), palette,
  1-bit, greyscale, YCbCr, LAB and HSV: Pillow's own conversion to RGB.

Animated files give their first frame. Embedded ICC profiles are not applied (InternVL and
transformers do not apply them either). Sources are encoded bytes, local paths or open binary
files, so a cache in front of S3 can hand over whichever it holds. Any file Pillow cannot read
raises ``ImageDecodeError``, which the data pipeline counts as a bad sample.

An image of more than ``max_pixels`` pixels (``data.maxImagePixels``, Pillow's own limit by
default) is refused from its header, before any pixel is decoded: a decompression bomb (a PNG of
a few KB that decodes to gigabytes) is a bad sample like any other. This limit replaces Pillow's
two-step one (a ``DecompressionBombWarning`` between its limit and twice it, an error above): the
warning is silenced, since an image up to ``max_pixels`` is accepted and one above it refused,
and Pillow's error (raised past twice its limit, which ``max_pixels`` may not exceed, or by a
plugin for a frame or tile of such a size) is an ``ImageDecodeError`` too.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from internvl_trainer.config import MAX_IMAGE_PIXELS
from internvl_trainer.data.errors import ImageDecodeError

__all__ = ["ImageDecodeError", "ImageSource", "decode_image", "decode_rgb_array", "image_size", "open_image", "to_rgb"]

ImageSource = bytes | bytearray | memoryview | str | os.PathLike | BinaryIO | Image.Image
"""What can be decoded: encoded bytes, a local path, an open binary file, or a PIL image."""

ORIENTATION_TAG = 0x0112
"""The EXIF tag that says how the stored pixels must be turned to stand upright."""

TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})
"""EXIF orientations that swap width and height."""

BACKGROUND = (255, 255, 255)
"""What transparent pixels are composited over."""


def _silence_pillows_bomb_warning() -> None:
    """Ignore ``DecompressionBombWarning``: open_image's own limit decides. Installed when an image
    is opened rather than once at import, since whoever imported this module inside
    ``warnings.catch_warnings`` (pytest, for one) has dropped that filter since."""
    for action, _, category, _, _ in warnings.filters:
        if action == "ignore" and category is Image.DecompressionBombWarning:
            return
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def open_image(source: ImageSource, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """The image in ``source``, opened lazily: only its header is read until pixels are needed (a
    PIL image is already open: it is returned as it is). Raises ImageDecodeError, also for an
    image of more than ``max_pixels`` pixels."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(source)
    _silence_pillows_bomb_warning()
    try:
        image = Image.open(source)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"cannot open image: {error}") from error
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"{width}x{height} image: {width * height:,} pixels, more than the limit of {max_pixels:,} "
            "(data.maxImagePixels; a decompression bomb?)"
        )
    return image


def orientation(image: Image.Image) -> int:
    """The image's EXIF orientation (1 = upright, also when there is no tag)."""
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block must not make the image unreadable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def image_size(source: ImageSource, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) of the image as it is displayed (EXIF orientation applied), from the
    header alone: no pixels are decoded, so this is cheap enough to plan tiles and lengths.
    Raises ImageDecodeError."""
    image = open_image(source, max_pixels)
    width, height = image.size
    if orientation(image) in TRANSPOSED_ORIENTATIONS:
        return height, width
    return width, height


def _has_transparency(image: Image.Image) -> bool:
    return "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info


def _opaque(image: Image.Image) -> bool:
    """Whether every pixel of an image with an alpha band is fully opaque (screenshots and many
    exported PNGs are RGBA with alpha 255 everywhere): compositing would change nothing."""
    if "transparency" in image.info:
        return False
    bands = image.getbands()
    alpha = "A" if "A" in bands else "a" if "a" in bands else None
    return alpha is not None and image.getchannel(alpha).getextrema() == (255, 255)


def _over_background(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _deep_grey_to_l(image: Image.Image) -> Image.Image:
    """8-bit greyscale from a 16-bit, 32-bit integer or float greyscale image."""
    pixels = np.asarray(image)
    if image.mode.startswith("I;16"):
        return Image.fromarray((pixels.astype(np.uint16) >> 8).astype(np.uint8))
    if image.mode == "I":
        return Image.fromarray((np.clip(pixels, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8))
    if image.mode == "F":
        finite = np.nan_to_num(pixels, nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if finite.size and float(finite.max()) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.rint(finite * scale), 0, 255).astype(np.uint8))
    raise ImageDecodeError(f"unsupported pixel mode {image.mode}")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB: EXIF orientation applied, transparency over white, deep greyscale
    scaled to 8 bits. Decodes the pixels. Raises ImageDecodeError."""
    try:
        image.load()
        if getattr(image, "is_animated", False):
            image.seek(0)
        if orientation(image) != 1:
            image = ImageOps.exif_transpose(image)
        if image.mode in ("I", "F") or image.mode.startswith("I;16"):
            return _deep_grey_to_l(image).convert("RGB")
        if _has_transparency(image) and not _opaque(image):
            return _over_background(image)
        return image if image.mode == "RGB" else image.convert("RGB")
    except ImageDecodeError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"cannot decode image: {error}") from error


def decode_image(source: ImageSource, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """The RGB image in ``source`` as it is displayed. Raises ImageDecodeError."""
    return to_rgb(open_image(source, max_pixels))


def decode_rgb_array(source: ImageSource) -> np.ndarray:
    """The RGB pixels of ``source`` as a (height, width, 3) uint8 array. Raises ImageDecodeError."""
    return np.asarray(decode_image(source))
