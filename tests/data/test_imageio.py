from __future__ import annotations

import hashlib
import io
import pickle
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from samsearch.data.imageio import (
    IMAGE_EXTENSIONS,
    ImageLoadError,
    LoadedImage,
    collect_image_paths,
    decode_image,
    load_image,
    read_bytes_and_hash,
)

# ---------------------------------------------------------------- fixture builders (all in memory)


def _encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width×height 8-bit grey pixels (the pixel data is a few bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _grey() -> bytes:
    return _encode(Image.new("L", (8, 6), 100), "PNG")


def _bilevel() -> bytes:
    im = Image.new("1", (8, 6), 0)
    im.putpixel((0, 0), 1)
    return _encode(im, "PNG")


def _la() -> bytes:
    im = Image.new("LA", (8, 6), (50, 255))
    im.putpixel((0, 0), (50, 0))  # fully transparent
    return _encode(im, "PNG")


def _rgba() -> bytes:
    im = Image.new("RGBA", (8, 6), (0, 0, 255, 255))
    im.putpixel((0, 0), (255, 0, 0, 0))  # transparent red -> white
    im.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black -> mid grey
    return _encode(im, "PNG")


def _palette(transparent: bool) -> bytes:
    im = Image.new("P", (8, 6), 1)
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * (254 * 3))
    im.putpixel((0, 0), 0)
    if transparent:
        return _encode(im, "PNG", transparency=0)
    return _encode(im, "PNG")


def _rgb() -> bytes:
    return _encode(Image.new("RGB", (8, 6), (12, 34, 56)), "PNG")


def _png16() -> bytes:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    im = Image.fromarray(values)
    assert im.mode == "I;16"
    return _encode(im, "PNG")


def _tiff16_big_endian() -> bytes:
    im = Image.frombytes("I;16B", (3, 1), struct.pack(">HHH", 0, 514, 65535))
    return _encode(im, "TIFF")


def _tiff_int32(values: list[int]) -> bytes:
    return _encode(Image.fromarray(np.array([values], dtype=np.int32)), "TIFF")


def _tiff_float(values: list[float]) -> bytes:
    return _encode(Image.fromarray(np.array([values], dtype=np.float32)), "TIFF")


def _cmyk_jpeg(icc: bytes | None = None) -> bytes:
    im = Image.new("CMYK", (16, 16), (255, 0, 0, 0))  # pure cyan
    im.paste((0, 0, 0, 255), (8, 0, 16, 16))  # right half: pure black
    params: dict[str, object] = {"quality": 95}
    if icc:
        params["icc_profile"] = icc
    return _encode(im, "JPEG", **params)


def _ycbcr() -> bytes:
    return _encode(Image.new("RGB", (8, 8), (200, 40, 40)).convert("YCbCr"), "TIFF")


def _gif_two_frames() -> bytes:
    first = Image.new("RGB", (8, 6), (255, 0, 0))
    second = Image.new("RGB", (8, 6), (0, 0, 255))
    return _encode(first, "GIF", save_all=True, append_images=[second], duration=100)


# (builder, expected H×W, {(row, col): expected RGB}, tolerance)
CONVERSIONS: list[
    tuple[str, Callable[[], bytes], tuple[int, int], dict[tuple[int, int], tuple[int, ...]], int]
] = [
    ("grey L", _grey, (6, 8), {(3, 3): (100, 100, 100)}, 0),
    ("bilevel 1", _bilevel, (6, 8), {(0, 0): (255, 255, 255), (3, 3): (0, 0, 0)}, 0),
    ("LA on white", _la, (6, 8), {(0, 0): (255, 255, 255), (3, 3): (50, 50, 50)}, 0),
    (
        "RGBA on white",
        _rgba,
        (6, 8),
        {(0, 0): (255, 255, 255), (0, 1): (127, 127, 127), (3, 3): (0, 0, 255)},
        1,
    ),
    ("P opaque", lambda: _palette(False), (6, 8), {(0, 0): (0, 0, 0), (3, 3): (10, 200, 30)}, 0),
    ("P transparent", lambda: _palette(True), (6, 8), {(0, 0): (255, 255, 255), (3, 3): (10, 200, 30)}, 0),
    ("RGB", _rgb, (6, 8), {(5, 7): (12, 34, 56)}, 0),
    (
        "I;16 png",
        _png16,
        (1, 4),
        {(0, 0): (0,) * 3, (0, 1): (1,) * 3, (0, 2): (128,) * 3, (0, 3): (255,) * 3},
        0,
    ),
    ("I;16B tiff", _tiff16_big_endian, (1, 3), {(0, 1): (2,) * 3, (0, 2): (255,) * 3}, 0),
    (
        "I 16-bit range",
        lambda: _tiff_int32([0, 257, 65535]),
        (1, 3),
        {(0, 1): (1,) * 3, (0, 2): (255,) * 3},
        0,
    ),
    ("I min-max", lambda: _tiff_int32([-100, 0, 100]), (1, 3), {(0, 0): (0,) * 3, (0, 2): (255,) * 3}, 0),
    (
        "F in range",
        lambda: _tiff_float([0.0, 99.6, 255.0]),
        (1, 3),
        {(0, 1): (100,) * 3, (0, 2): (255,) * 3},
        0,
    ),
    ("F min-max", lambda: _tiff_float([-1.0, 0.5, 2.0]), (1, 3), {(0, 0): (0,) * 3, (0, 1): (128,) * 3}, 0),
    (
        "F min-max high",
        lambda: _tiff_float([300.0, 350.0, 400.0]),
        (1, 3),
        {(0, 0): (0,) * 3, (0, 1): (128,) * 3, (0, 2): (255,) * 3},
        1,
    ),
    (
        "I min-max high",
        lambda: _tiff_int32([100000, 150000, 200000]),
        (1, 3),
        {(0, 0): (0,) * 3, (0, 1): (128,) * 3},
        0,
    ),
    ("CMYK jpeg", _cmyk_jpeg, (16, 16), {(8, 2): (0, 255, 255), (8, 13): (0, 0, 0)}, 8),
    ("YCbCr tiff", _ycbcr, (8, 8), {(4, 4): (200, 40, 40)}, 3),
    ("GIF first frame", _gif_two_frames, (6, 8), {(3, 3): (255, 0, 0)}, 0),
]


@pytest.mark.parametrize(
    ("builder", "shape", "pixels", "tolerance"),
    [c[1:] for c in CONVERSIONS],
    ids=[c[0] for c in CONVERSIONS],
)
def test_decode_modes(
    builder: Callable[[], bytes],
    shape: tuple[int, int],
    pixels: dict[tuple[int, int], tuple[int, ...]],
    tolerance: int,
) -> None:
    rgb = decode_image(builder(), "x")
    assert rgb.shape == (*shape, 3)
    assert rgb.dtype == np.uint8
    assert rgb.flags.c_contiguous and rgb.flags.writeable
    for (row, col), expected in pixels.items():
        got = rgb[row, col].astype(int)
        assert np.abs(got - np.array(expected)).max() <= tolerance, (row, col, got.tolist(), expected)


def test_cmyk_with_unusable_profile_falls_back_to_formula() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # an RGB profile on CMYK data
    with_profile = decode_image(_cmyk_jpeg(icc=srgb), "x")
    without = decode_image(_cmyk_jpeg(), "x")
    assert np.abs(with_profile.astype(int) - without.astype(int)).max() <= 1


def test_exif_orientation_6_rotates_clockwise(tmp_path: Path) -> None:
    stored = Image.new("RGB", (60, 30), (128, 128, 128))
    stored.paste((255, 0, 0), (0, 0, 12, 12))  # marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "rotated.jpg"
    stored.save(path, format="JPEG", quality=95, exif=exif)

    loaded = load_image(path)
    assert loaded.rgb.shape == (60, 30, 3)
    assert (loaded.width, loaded.height) == (30, 60)
    top_right = loaded.rgb[2:8, 22:28].reshape(-1, 3).mean(axis=0)
    top_left = loaded.rgb[2:8, 2:8].reshape(-1, 3).mean(axis=0)
    assert top_right[0] > 200 and top_right[1] < 60  # the marker moved to the displayed top-right
    assert abs(top_left[0] - 128) < 20


def test_load_image_fields(tmp_path: Path) -> None:
    path = tmp_path / "pic.png"
    data = _rgb()
    path.write_bytes(data)
    loaded = load_image(path)
    assert isinstance(loaded, LoadedImage)
    assert loaded.path == path
    assert (loaded.width, loaded.height, loaded.file_size) == (8, 6, len(data))
    assert loaded.content_hash == hashlib.sha256(data).hexdigest()
    assert read_bytes_and_hash(path) == (data, loaded.content_hash)


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return make


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "folder.png"
    path.mkdir()
    return path


_jpeg = _encode(
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG"
)
_png = _encode(Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "PNG")


@pytest.mark.parametrize(
    ("make", "max_pixels", "reason"),
    [
        (_write("empty.jpg", b""), 10**8, "empty file"),
        (
            _write("text.jpg", b"hello, I am not a JPEG\n" * 10),
            10**8,
            "not an image (cannot identify format)",
        ),
        (
            _write("half.png", _png[: len(_png) // 2]),
            10**8,
            "corrupt or truncated image: image file is truncated",
        ),
        (
            _write("half.jpg", _jpeg[: len(_jpeg) // 2]),
            10**8,
            "corrupt or truncated image: image file is truncated",
        ),
        (
            _write("bomb.png", _png_claiming(100_000, 100_000)),
            200_000_000,
            "image too large: 100000×100000 = 10000000000 pixels exceeds the limit of 200000000 "
            "(decompression-bomb guard)",
        ),
        (
            _write("real.png", _png),
            1000,
            "image too large: 64×64 = 4096 pixels exceeds the limit of 1000 (decompression-bomb guard)",
        ),
        (_directory, 10**8, "unreadable: is a directory"),
        (lambda tmp_path: tmp_path / "missing.png", 10**8, "unreadable: no such file"),
    ],
    ids=[
        "empty",
        "text",
        "truncated-png",
        "truncated-jpeg",
        "bomb-header",
        "max-pixels",
        "directory",
        "missing",
    ],
)
def test_load_errors(tmp_path: Path, make: Callable[[Path], Path], max_pixels: int, reason: str) -> None:
    path = make(tmp_path)
    limit_before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning (or any other) may escape
        with pytest.raises(ImageLoadError) as info:
            load_image(path, max_pixels=max_pixels)
    err = info.value
    assert err.path == path
    assert err.reason.startswith(reason)
    assert str(err) == f"{path}: {err.reason}"
    assert "\n" not in str(err)
    assert limit_before == Image.MAX_IMAGE_PIXELS


def test_pillow_guard_neither_fires_nor_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    # With Pillow's limit far below the image size, Pillow alone would raise DecompressionBombError.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = decode_image(_png, "big.png", max_pixels=10_000)
    assert rgb.shape == (64, 64, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(ImageLoadError("a/b.png", "empty file")))
    assert str(err) == "a/b.png: empty file"
    assert (err.path, err.reason) == ("a/b.png", "empty file")


def test_multiline_reason_is_one_line() -> None:
    assert str(ImageLoadError("p", "first\nsecond")) == "p: first second"


# ---------------------------------------------------------------- collect_image_paths


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    files = [
        "a.jpg",
        "B.PNG",
        "notes.txt",
        ".hidden.png",
        ".cache/x.png",
        "sub/c.webp",
        "sub/deeper/d.TIFF",
        "sub/deeper/e.json",
    ]
    for name in files:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    return root


def _names(paths: list[Path], root: Path) -> list[str]:
    assert all(p.is_absolute() for p in paths)
    assert paths == sorted(set(paths))
    return [p.relative_to(root.resolve()).as_posix() for p in paths]


IMAGES_IN_TREE = ["B.PNG", "a.jpg", "sub/c.webp", "sub/deeper/d.TIFF"]


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        (["."], IMAGES_IN_TREE),
        (["notes.txt"], ["notes.txt"]),  # explicit files are kept whatever their extension
        ([".hidden.png", "a.jpg", "a.jpg"], [".hidden.png", "a.jpg"]),
        (["sub", "sub/deeper/d.TIFF"], ["sub/c.webp", "sub/deeper/d.TIFF"]),
        (["*.jpg"], ["a.jpg"]),
        (["*"], IMAGES_IN_TREE),  # matched folders are walked; notes.txt is dropped
        (["**/*.webp", "sub/deeper/?.TIFF"], ["sub/c.webp", "sub/deeper/d.TIFF"]),
        (["[ab].*"], ["a.jpg"]),
    ],
)
def test_collect_relative_inputs(
    tree: Path, monkeypatch: pytest.MonkeyPatch, inputs: list[str], expected: list[str]
) -> None:
    monkeypatch.chdir(tree)
    assert _names(collect_image_paths(inputs), tree) == expected


def test_collect_absolute_folder_and_glob(tree: Path) -> None:
    assert _names(collect_image_paths([tree]), tree) == IMAGES_IN_TREE
    assert _names(collect_image_paths([f"{tree}/**/*.webp"]), tree) == ["sub/c.webp"]


@pytest.mark.parametrize("missing", ["nope.jpg", "nothing/*.png", "sub/*.gif"])
def test_collect_missing_input(tree: Path, monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    monkeypatch.chdir(tree)
    with pytest.raises(FileNotFoundError) as info:
        collect_image_paths(["a.jpg", missing])
    assert str(info.value) == f"{missing}: no such file, folder or matching glob"


def test_extensions_are_lower_case_suffixes() -> None:
    assert {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"} <= IMAGE_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)
