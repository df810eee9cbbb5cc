"""Decoding: every pixel mode and orientation becomes the RGB a viewer shows."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from internvl_trainer.config import MAX_IMAGE_PIXELS
from internvl_trainer.data import images
from internvl_trainer.data.errors import ImageDecodeError, SampleError
from internvl_trainer.data.images import decode_image, decode_rgb_array, image_size
from tests.unit.trainer.data.conftest import bomb_png, encode

# The stored pixels of an image with EXIF orientation n, turned upright as the EXIF specification
# says: mirror, rotate clockwise, or both.
UPRIGHT = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: np.rot90(np.fliplr(a), 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(np.fliplr(a), -1),
    8: lambda a: np.rot90(a, 1),
}


def stored_pixels() -> np.ndarray:
    """A 3 x 5 image with a distinct colour per pixel, so any turn or mirror shows."""
    return np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3) * 5


def with_orientation(pixels: np.ndarray, orientation: int, image_format: str = "PNG", **options) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(pixels, image_format, exif=exif.tobytes(), **options)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_the_image_upright(orientation):
    data = with_orientation(stored_pixels(), orientation)
    expected = UPRIGHT[orientation](stored_pixels())
    assert np.array_equal(decode_rgb_array(data), expected)
    assert image_size(data) == (expected.shape[1], expected.shape[0])


def test_exif_orientation_of_a_jpeg_photo():
    stored = np.zeros((60, 100, 3), dtype=np.uint8)
    stored[:, :50] = (200, 30, 30)  # left half red, right half blue as stored
    stored[:, 50:] = (30, 30, 200)
    decoded = decode_rgb_array(with_orientation(stored, 6, "JPEG", quality=95))
    assert decoded.shape == (100, 60, 3)  # turned clockwise: the stored left half is now on top
    assert np.abs(decoded[10, 30].astype(int) - (200, 30, 30)).max() <= 4
    assert np.abs(decoded[90, 30].astype(int) - (30, 30, 200)).max() <= 4


def test_palette_image_and_its_transparent_index():
    image = Image.new("P", (4, 1))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0, 0, 0] * 253)
    image.putdata([0, 1, 2, 1])
    assert decode_rgb_array(image).tolist() == [[[255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 255, 0]]]
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=1)
    assert decode_rgb_array(buffer.getvalue()).tolist() == [
        [[255, 0, 0], [255, 255, 255], [0, 0, 255], [255, 255, 255]]
    ]
    gif = io.BytesIO()
    image.save(gif, format="GIF", transparency=1)
    assert decode_rgb_array(gif.getvalue()).tolist() == [[[255, 0, 0], [255, 255, 255], [0, 0, 255], [255, 255, 255]]]


def test_transparency_is_composited_over_white():
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 0, 0, 128], [200, 100, 0, 64]]], dtype=np.uint8)
    decoded = decode_rgb_array(encode(rgba, "PNG")).astype(int)
    alpha = rgba[..., 3:].astype(float) / 255
    expected = rgba[..., :3] * alpha + 255 * (1 - alpha)
    assert np.abs(decoded - expected).max() <= 1
    assert decoded[0, 1].tolist() == [255, 255, 255]  # convert("RGB") would give (10, 20, 30)
    keyed = io.BytesIO()  # an RGB PNG whose colour (10, 20, 30) is transparent
    Image.fromarray(rgba[..., :3]).save(keyed, format="PNG", transparency=(10, 20, 30))
    assert decode_rgb_array(keyed.getvalue())[0, :2].tolist() == [[255, 255, 255], [255, 255, 255]]
    la = np.array([[[0, 0], [100, 255]]], dtype=np.uint8)
    assert decode_rgb_array(Image.fromarray(la, mode="LA")).tolist() == [[[255, 255, 255], [100, 100, 100]]]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "RGBa", "PA"])
def test_opaque_images_with_an_alpha_band_skip_compositing_with_the_same_pixels(monkeypatch, mode):
    rng = np.random.default_rng(4)
    rgb = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8))
    source = rgb.convert({"RGBA": "RGB", "RGBa": "RGB", "LA": "L", "PA": "P"}[mode])
    opaque = Image.merge(mode, [*source.split(), Image.new("L", source.size, 255)])
    composited = np.asarray(images._over_background(opaque))
    monkeypatch.setattr(images, "_over_background", lambda image: pytest.fail("an opaque image was composited"))
    assert np.array_equal(decode_rgb_array(opaque), composited)
    if mode in ("RGBA", "LA"):
        buffer = io.BytesIO()
        opaque.save(buffer, format="PNG")
        assert np.array_equal(decode_rgb_array(buffer.getvalue()), composited)


def test_one_transparent_pixel_is_enough_to_composite():
    rgba = np.full((3, 3, 4), 255, dtype=np.uint8)
    rgba[..., :3] = 40
    rgba[2, 2, 3] = 254
    decoded = decode_rgb_array(encode(rgba, "PNG"))
    assert decoded[0, 0].tolist() == [40, 40, 40] and decoded[2, 2].tolist() == [41, 41, 41]


def test_cmyk():
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 255, 255, 0], [0, 0, 0, 255], [0, 0, 255, 0]]], dtype=np.uint8)
    expected = [[[255, 255, 255], [0, 255, 255], [255, 0, 0], [0, 0, 0], [255, 255, 0]]]
    image = Image.fromarray(cmyk, mode="CMYK")
    tiff = io.BytesIO()
    image.save(tiff, format="TIFF")
    assert decode_rgb_array(tiff.getvalue()).tolist() == expected
    # A CMYK JPEG (Pillow writes Adobe's inverted form and undoes it when reading).
    flat = Image.new("CMYK", (16, 16), (255, 0, 0, 0))
    jpeg = io.BytesIO()
    flat.save(jpeg, format="JPEG", quality=95)
    assert Image.open(io.BytesIO(jpeg.getvalue())).mode == "CMYK"
    assert np.abs(decode_rgb_array(jpeg.getvalue())[8, 8].astype(int) - (0, 255, 255)).max() <= 3


def test_greyscale_and_bilevel():
    grey = np.array([[0, 77, 255]], dtype=np.uint8)
    assert decode_rgb_array(encode(grey, "PNG")).tolist() == [[[0, 0, 0], [77, 77, 77], [255, 255, 255]]]
    bilevel = Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).convert("1")
    assert decode_rgb_array(bilevel).tolist() == [[[0, 0, 0], [255, 255, 255]]]


SIXTEEN_BIT = np.array([0, 0x00FF, 0x0100, 0x7FFF, 0x8000, 0xFEFF, 0xFFFF], dtype=np.uint16)
EIGHT_BIT = [0, 0, 1, 127, 128, 254, 255]  # the high byte


def png16(samples: np.ndarray) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour): samples (h, w, channels)."""
    height, width, channels = samples.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_sixteen_bit_greyscale_keeps_its_range():
    data = png16(SIXTEEN_BIT.reshape(1, -1, 1))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    assert Image.open(io.BytesIO(data)).convert("RGB").getpixel((3, 0)) == (255, 255, 255)  # the naive way
    assert decode_rgb_array(data)[0, :, 0].tolist() == EIGHT_BIT
    assert decode_rgb_array(encode(SIXTEEN_BIT.reshape(1, -1), "TIFF"))[0, :, 1].tolist() == EIGHT_BIT


def test_sixteen_bit_colour_and_alpha():
    rgb = np.stack([SIXTEEN_BIT, SIXTEEN_BIT[::-1], SIXTEEN_BIT], axis=-1)[None]
    assert decode_rgb_array(png16(rgb))[0].tolist() == [
        [a, b, a] for a, b in zip(EIGHT_BIT, EIGHT_BIT[::-1], strict=True)
    ]
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 0xFFFF, dtype=np.uint16)], axis=-1)
    assert decode_rgb_array(png16(rgba))[0, :, 0].tolist() == EIGHT_BIT


def test_integer_and_float_greyscale():
    integer = Image.fromarray(SIXTEEN_BIT.astype(np.int32).reshape(1, -1), mode="I")
    assert decode_rgb_array(integer)[0, :, 0].tolist() == EIGHT_BIT
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    assert decode_rgb_array(unit)[0, :, 0].tolist() == [0, 128, 255]
    tiff = io.BytesIO()
    Image.fromarray(np.array([[0.0, 100.0, 300.0]], dtype=np.float32), mode="F").save(tiff, format="TIFF")
    assert decode_rgb_array(tiff.getvalue())[0, :, 0].tolist() == [0, 100, 255]


def test_sources_bytes_paths_and_files(tmp_path):
    data = encode(stored_pixels(), "PNG")
    path = tmp_path / "image.png"
    path.write_bytes(data)
    for source in (data, bytearray(data), memoryview(data), str(path), path, io.BytesIO(data), path.open("rb")):
        assert np.array_equal(decode_rgb_array(source), stored_pixels())
    assert decode_image(data).mode == "RGB"


def test_animated_images_give_their_first_frame():
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert decode_rgb_array(buffer.getvalue())[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image", encode(stored_pixels(), "PNG")[:40], encode(np.zeros((64, 64, 3), np.uint8), "JPEG")[:300]],
    ids=["empty", "garbage", "truncated-png", "truncated-jpeg"],
)
def test_unreadable_files_raise_a_sample_error(data):
    with pytest.raises(ImageDecodeError) as error:
        decode_image(data)
    assert isinstance(error.value, SampleError) and error.value.kind == "image"


def test_missing_file_raises_a_sample_error(tmp_path):
    with pytest.raises(ImageDecodeError):
        image_size(tmp_path / "missing.png")


def test_a_decompression_bomb_is_a_bad_image_refused_from_its_header():
    bomb = bomb_png(20000, 20000)
    assert len(bomb) < 50_000
    for read in (image_size, decode_image):
        with pytest.raises(ImageDecodeError) as error:
            read(bomb)
        # Past twice its own limit Pillow refuses before open_image sees the size.
        assert str(error.value) == (
            "cannot open image: Image size (400000000 pixels) exceeds limit of 178956970 pixels, "
            "could be decompression bomb DOS attack."
        )
        assert error.value.kind == "image"


def test_the_pixel_limit_is_exact_and_replaces_pillows_warning():
    """Between Pillow's limit and twice it Pillow only warns: here the setting decides, silently."""
    between = bomb_png(10000, 9000)  # 90,000,000 pixels: Pillow's warning range
    with pytest.raises(
        ImageDecodeError, match="^10000x9000 image: 90,000,000 pixels, more than the limit of 89,478,485"
    ):
        image_size(between)
    with warnings.catch_warnings(record=True) as caught:
        assert image_size(between, max_pixels=2 * MAX_IMAGE_PIXELS) == (10000, 9000)
    assert [warning.category for warning in caught] == []
    small = encode(np.zeros((100, 120, 3), dtype=np.uint8))  # 12,000 pixels
    assert decode_image(small, max_pixels=12_000).size == (120, 100)
    with pytest.raises(ImageDecodeError, match="^120x100 image: 12,000 pixels, more than the limit of 11,999 "):
        decode_image(small, max_pixels=11_999)
