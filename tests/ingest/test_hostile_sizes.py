"""Huge inputs (issue 12): an image file over the byte cap is a recorded failure read from its size alone
(before, all of it was read into memory); a header promising more pixels than Pillow's bomb limit is
refused by our pixel cap when decoded, and no longer crashes YOLO/BDD100K dataset reading (Pillow's
DecompressionBombError escaped it); a FIFO in a dataset folder is skipped instead of blocking forever."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image as PILImage

from samsearch.data.datasets import read_dataset
from samsearch.data.imageio import DEFAULT_MAX_BYTES, ImageLoadError, read_bytes_and_hash
from samsearch.data.synthetic import coco_to_yolo, make_dataset
from samsearch.home import Home
from samsearch.ingest.ingestor import ingest
from samsearch.ingest.options import IngestOptions
from samsearch.jobs.work_queue import enqueue


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header says ``width``×``height`` RGB (a few bytes of pixel data: a decompression bomb's
    header without the bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _in_time(fn, seconds=240):
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result(timeout=seconds)


def test_files_over_the_byte_cap_and_pixel_bombs_are_recorded_failures(tmp_path, tiny_model, shapes, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    good = Path(shapes.images[0].path)
    shutil.copyfile(good, folder / good.name)
    huge = folder / "huge.png"
    with open(huge, "wb") as f:  # sparse: no disk used, 600 MiB if read
        f.truncate(600 * 1024 * 1024)
    _png_header(folder / "bomb.png", 30000, 30000)
    opts = IngestOptions(prompts="masks", annotations=shapes.annotations_path)
    with Home(tmp_path / "h") as home:
        summary = ingest(home, [folder], tiny_model, opts, progress=False)
        reasons = {Path(f.path).name: f.reason for f in summary.failures}
        assert (summary.images_ingested, summary.images_failed) == (1, 2)
        assert reasons["huge.png"] == (f"file too large: {600 * 1024 * 1024} bytes exceeds the limit of "
                                       f"{DEFAULT_MAX_BYTES} bytes (SAMSEARCH_MAX_IMAGE_BYTES; not read)")
        assert reasons["bomb.png"].startswith("image too large: 30000×30000 = 900000000 pixels exceeds the limit")

        # The cap is configurable; the queue records the same failure from the size, without hashing.
        monkeypatch.setenv("SAMSEARCH_MAX_IMAGE_BYTES", str(good.stat().st_size - 1))
        with pytest.raises(ImageLoadError, match=r"file too large: \d+ bytes exceeds the limit of \d+ bytes"):
            read_bytes_and_hash(good)
        queued = enqueue(home, [folder], "tiny-random", opts)
        assert {Path(f["path"]).name for f in queued.failures} >= {"huge.png"}
        assert all(f["reason"].startswith("file too large") for f in queued.failures if "huge" in f["path"])


def test_dataset_readers_survive_bombs_and_fifos(tmp_path):
    src = make_dataset(tmp_path / "src", n_images=1, seed=2)
    yaml_path = coco_to_yolo(src.annotations_path, tmp_path / "yolo")
    images = tmp_path / "yolo" / "images"
    _png_header(images / "bomb.png", 30000, 30000)  # above Pillow's limit of ~179 M pixels
    os.mkfifo(images / "pipe.png")
    dataset = _in_time(lambda: read_dataset(yaml_path, images, "yolo"))
    sizes = {im.path.name: (im.entry.width, im.entry.height) for im in dataset.images}
    assert sizes == {"00001.png": (256, 192), "bomb.png": (30000, 30000)}  # the decode refuses the bomb
    assert [s.reason for s in dataset.skipped] == ["unreadable image: unreadable: a FIFO, not a regular file"]
    assert PILImage.MAX_IMAGE_PIXELS is not None  # Pillow's own guard is back in place
