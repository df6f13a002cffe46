"""Reading images from disk into RGB uint8 arrays, and finding the images to read.

Every image that reaches SAM goes through :func:`load_image`, which gives one well-defined result for
each input, whatever its format or mode:

* EXIF orientation is applied, so the array is the picture as a viewer shows it.
* Multi-frame files (GIF, APNG, TIFF pages, ...) give their first frame.
* Transparent pixels (RGBA, LA, PA, palette or colour-key transparency) are composited on **white**:
  that is what most viewers show, and it keeps "transparent" from turning into "black object".
* 16-bit greyscale (``I;16``, ``I;16B``, ...) is scaled linearly so 65535 maps to 255 (not clipped).
  Mode ``I`` (32-bit int) is read the same way when every value lies in 0..65535 (so an ``I`` image
  holding 0..255 comes out dark), and is min-max scaled to 0..255 otherwise (as are signed 16-bit
  images with negative values). Mode ``F`` (float) is taken as-is (rounded) when every value lies in
  0..255, and is min-max scaled to 0..255 otherwise; NaNs and infinities become 0.
* CMYK uses the embedded ICC profile when there is one (through LittleCMS), and Pillow's
  ``R = (255 - C) * (255 - K) / 255`` formula otherwise.

Failures raise :class:`ImageLoadError` with a one-line reason (empty file, not an image, corrupt or
truncated, too large, unreadable). The whole file is decoded up front, so truncation is caught here and
not later in the pipeline.

The decompression-bomb guard is ours: the pixel count from the header is checked against ``max_pixels``
before any pixel data is decoded. Pillow's own guard (``Image.MAX_IMAGE_PIXELS``, warning above ~89 M
pixels, error above ~179 M) would otherwise fire on images our limit allows, so it is lifted for the
duration of the header parse (microseconds) and, for images above Pillow's limit only, of the decode;
the previous value is always restored. Those windows are serialised by a module lock; another thread
calling Pillow directly during such a window runs without Pillow's guard.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import stat
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from samsearch.errors import InputError

DEFAULT_MAX_PIXELS = 200_000_000
DEFAULT_MAX_BYTES = 512 * 1024 * 1024  # image files above this are not read (SAMSEARCH_MAX_IMAGE_BYTES)
MAX_BYTES_ENV = "SAMSEARCH_MAX_IMAGE_BYTES"

# Lower-case suffixes picked up when walking folders and expanding globs.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".apng",
        ".gif",
        ".bmp",
        ".dib",
        ".tif",
        ".tiff",
        ".webp",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".tga",
    }
)

_GLOB_CHARS = frozenset("*?[")

# Exceptions Pillow raises for damaged data, at open or at decode time.
_CORRUPT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    ZeroDivisionError,
    struct.error,
)

_PIL_LIMIT_LOCK = threading.Lock()


class _UnsupportedModeError(Exception):
    pass


class ImageLoadError(Exception):
    """An image could not be loaded; ``str()`` is one line: ``"{path}: {reason}"``."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = path
        self.reason = " ".join(str(reason).split())  # keep it on one line
        super().__init__(path, self.reason)  # both args, so the error pickles across processes

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class LoadedImage:
    """A decoded image. ``rgb`` is H×W×3 uint8, C-contiguous and writable."""

    path: Path
    rgb: np.ndarray
    width: int
    height: int
    content_hash: str  # sha256 hex digest of the file bytes
    file_size: int


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` as text that any store and terminal accepts: bytes of a file name that are not valid
    UTF-8 (Python keeps them as lone surrogates) are shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def not_a_regular_file(mode: int) -> str | None:
    """Why a file of this ``st_mode`` is no image file (a FIFO would block a read, a device could be
    read forever), or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a directory" if stat.S_ISDIR(mode) else "not a regular file")
    return f"unreadable: {kind}, not a regular file"


def max_image_bytes() -> int:
    """The byte cap on image files: ``SAMSEARCH_MAX_IMAGE_BYTES`` (bytes), else 512 MiB."""
    raw = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise InputError(f"{MAX_BYTES_ENV} must be a positive number of bytes, got {raw!r}")
    return value


def too_many_bytes(size: int, max_bytes: int) -> str | None:
    """Why a file of ``size`` bytes is not read (over the cap), or None."""
    if size <= max_bytes:
        return None
    return (f"file too large: {size} bytes exceeds the limit of {max_bytes} bytes ({MAX_BYTES_ENV}; "
            "not read)")


def read_bytes_and_hash(path: str | os.PathLike[str], max_bytes: int | None = None) -> tuple[bytes, str]:
    """Return the file's bytes and their sha256 hex digest; unreadable files raise ImageLoadError. Only
    regular files are read: the file is opened non-blocking (a FIFO without a writer returns at once) and
    checked with ``fstat`` before any byte is read. A file over ``max_bytes`` (default:
    :func:`max_image_bytes`) is refused from its size, and never more than ``max_bytes + 1`` bytes are read
    (a file that grows while it is read)."""
    limit = max_image_bytes() if max_bytes is None else max_bytes
    try:
        if display_path(path) != os.fspath(path):
            raise ImageLoadError(display_path(path), "file name is not valid UTF-8 (rename the file)")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            why = not_a_regular_file(st.st_mode) or too_many_bytes(st.st_size, limit)
            if why is not None:
                raise ImageLoadError(path, why)
            os.set_blocking(f.fileno(), True)
            data = f.read(limit + 1)
            if len(data) > limit:
                raise ImageLoadError(path, too_many_bytes(os.fstat(f.fileno()).st_size, limit) or
                                     f"file too large: over the limit of {limit} bytes ({MAX_BYTES_ENV})")
    except FileNotFoundError:
        raise ImageLoadError(path, "unreadable: no such file") from None
    except IsADirectoryError:
        raise ImageLoadError(path, "unreadable: is a directory") from None
    except PermissionError:
        raise ImageLoadError(path, "unreadable: permission denied") from None
    except OSError as exc:
        raise ImageLoadError(path, f"unreadable: {exc.strerror or exc}") from None
    return data, hashlib.sha256(data).hexdigest()


def header_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) from the file's header as decoding will see it (EXIF rotation applied), without
    decoding pixels; Pillow's decompression-bomb guard is lifted for the header parse only (the pixel cap
    is applied when the image is decoded). Only regular files are opened. ImageLoadError otherwise."""
    try:
        why = not_a_regular_file(os.stat(path).st_mode)  # a FIFO would block the open
        if why is not None:
            raise ImageLoadError(path, why)
        with _pil_guard_lifted():
            im = Image.open(path)
        with im:
            width, height = im.size
            try:
                orientation = im.getexif().get(0x0112, 1)
            except _CORRUPT_ERRORS:  # a broken EXIF block: decoding ignores it too
                orientation = 1
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image (cannot identify format)") from None
    except _CORRUPT_ERRORS as exc:
        raise ImageLoadError(path, f"{' '.join(str(exc).split())}") from None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def load_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read, hash and decode one image file (see the module docstring for the conversion rules)."""
    data, digest = read_bytes_and_hash(path)
    rgb = decode_image(data, path, max_pixels)
    return LoadedImage(
        path=Path(path),
        rgb=rgb,
        width=int(rgb.shape[1]),
        height=int(rgb.shape[0]),
        content_hash=digest,
        file_size=len(data),
    )


def decode_image(
    data: bytes, path: str | os.PathLike[str] = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode encoded image bytes to an H×W×3 uint8 C-contiguous array; ``path`` only names errors."""
    if not data:
        raise ImageLoadError(path, "empty file")
    im = _open_header(data, path)
    try:
        width, height = im.size
        pixels = width * height
        if pixels > max_pixels:
            raise ImageLoadError(
                path,
                f"image too large: {width}×{height} = {pixels} pixels exceeds the limit of {max_pixels} "
                "(decompression-bomb guard)",
            )
        pil_limit = Image.MAX_IMAGE_PIXELS
        needs_lift = pil_limit is not None and pixels > pil_limit
        with _pil_guard_lifted() if needs_lift else _nothing():
            try:
                im.load()  # full decode: truncation and corruption surface here
                im = _apply_exif_orientation(im)
                rgb = _to_rgb_array(im)
            except _UnsupportedModeError as exc:
                raise ImageLoadError(path, str(exc)) from None
            except Image.DecompressionBombError as exc:  # only if a frame/tile is larger than the header said
                raise ImageLoadError(path, f"image too large: {exc}") from None
            except _CORRUPT_ERRORS as exc:
                raise ImageLoadError(path, f"corrupt or truncated image: {exc}") from None
    finally:
        im.close()
    return rgb


def _open_header(data: bytes, path: str | os.PathLike[str]) -> Image.Image:
    """Parse the header only (Pillow opens lazily), with Pillow's bomb guard lifted."""
    try:
        with _pil_guard_lifted():
            im = Image.open(io.BytesIO(data))
            im.seek(0)
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image (cannot identify format)") from None
    except _CORRUPT_ERRORS as exc:
        raise ImageLoadError(path, f"corrupt or truncated image: {exc}") from None
    return im


@contextmanager
def _pil_guard_lifted() -> Iterator[None]:
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _apply_exif_orientation(im: Image.Image) -> Image.Image:
    try:
        rotated = ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block should not cost us the pixels
        return im
    return rotated if rotated is not None else im


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        grey = _scale_to_uint8(np.asarray(im), mode)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if mode == "CMYK":
        return _array(_cmyk_to_rgb(im))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        try:
            rgba = im.convert("RGBA")
        except ValueError as exc:
            raise _UnsupportedModeError(f"unsupported image mode {mode}: {exc}") from None
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return _array(Image.alpha_composite(white, rgba).convert("RGB"))
    if mode == "RGB":
        return _array(im)
    try:
        return _array(im.convert("RGB"))
    except ValueError as exc:
        raise _UnsupportedModeError(f"unsupported image mode {mode}: {exc}") from None


def _array(im: Image.Image) -> np.ndarray:
    arr = np.array(im, dtype=np.uint8)  # a copy: writable and C-contiguous
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise _UnsupportedModeError(f"unsupported image mode {im.mode}: decoded shape {arr.shape}")
    return arr


def _scale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    if values.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    if mode == "F":
        f = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(f.min()), float(f.max())
        if lo < 0.0 or hi > 255.0:
            f = (f - lo) * (255.0 / (hi - lo))
        return np.clip(np.rint(f), 0, 255).astype(np.uint8)
    v = values.astype(np.int64)
    lo, hi = int(v.min()), int(v.max())
    if lo >= 0 and hi <= 65535:
        # 16-bit range: 65535 -> 255 exactly, 257*k -> k
        return ((v * 255 + 32767) // 65535).astype(np.uint8)
    return np.rint((v - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    icc = im.info.get("icc_profile")
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(im, source, srgb, outputMode="RGB")
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass  # a broken profile: fall back to the plain formula
    return im.convert("RGB")


def collect_image_paths(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files, folders and glob patterns into a sorted list of unique absolute paths.

    * an existing file is always included, whatever its extension (non-images fail later, visibly);
    * an existing folder is walked recursively for files with an :data:`IMAGE_EXTENSIONS` suffix
      (case-insensitive), skipping hidden files and folders;
    * otherwise an input with ``*``, ``?`` or ``[`` is a glob (``**`` recurses); matched files are kept
      when they have an image suffix, matched folders are walked as above; hidden names only match
      patterns that spell out the dot.

    An input that is neither raises ``FileNotFoundError("{input}: no such file, folder or matching glob")``.
    """
    found: set[Path] = set()
    for item in inputs:
        text = os.fspath(item)
        path = Path(text).expanduser()
        if path.is_dir():
            found.update(_walk_images(path))
        elif path.exists() or path.is_symlink():  # a symlink loop "does not exist": read it to say why
            found.add(_resolved(path))
        elif _GLOB_CHARS.intersection(text):
            matches = glob.glob(os.path.expanduser(text), recursive=True)
            if not matches:
                raise FileNotFoundError(f"{text}: no such file, folder or matching glob")
            for match in matches:
                m = Path(match)
                if m.is_dir():
                    found.update(_walk_images(m))
                elif m.suffix.lower() in IMAGE_EXTENSIONS and (m.exists() or m.is_symlink()):
                    found.add(_resolved(m))
        else:
            raise FileNotFoundError(f"{text}: no such file, folder or matching glob")
    return sorted(found)


def _walk_images(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                yield _resolved(Path(root, name))


def _resolved(path: Path) -> Path:
    """The absolute path with symlinks resolved, unless that leads nowhere readable: a symlink loop, or a
    link to a device or FIFO, stays as named (reading it then fails and is recorded under that name)."""
    try:
        real = path.resolve()
        if stat.S_ISREG(real.stat().st_mode):
            return real
    except (RuntimeError, OSError):  # RuntimeError: "Symlink loop" (Python < 3.13)
        pass
    return path.absolute()
