"""File-system oddities in an input folder (a FIFO, a symlink to a device, a symlink loop, a file name
that is not UTF-8) and an image too thin for SAM's resize: each is a recorded failure naming the file,
nothing hangs or reads a device, and the good image is stored (plain ingest and enqueue, both backends)."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from samsearch.db import Image
from samsearch.errors import InputError
from samsearch.home import Home
from samsearch.ingest.ingestor import ingest
from samsearch.ingest.options import IngestOptions
from samsearch.jobs.work_queue import enqueue
from samsearch.sam.encoder import too_thin
from samsearch.search.query import search_by_image

TIMEOUT = 240  # seconds; a FIFO read or /dev/zero would never return


def _hostile_folder(root: Path, good: Path) -> dict[str, str]:
    """The folder, and the expected failure reason (a fragment) per name as stored."""
    root.mkdir()
    shutil.copyfile(good, root / good.name)
    os.mkfifo(root / "pipe.png")
    (root / "zero.png").symlink_to("/dev/zero")
    (root / "loop.png").symlink_to(root / "loop.png")
    bad_name = os.fsencode(root) + b"/bad\xff.png"
    with open(bad_name, "wb") as f:
        f.write(good.read_bytes())
    PILImage.fromarray(np.full((1, 3000, 3), 200, np.uint8)).save(root / "thin.png")
    return {
        str(root / "pipe.png"): "unreadable: a FIFO, not a regular file",
        str(root / "zero.png"): "unreadable: a character device, not a regular file",
        str(root / "loop.png"): "unreadable: Too many levels of symbolic links",
        str(root) + "/bad\\xff.png": "file name is not valid UTF-8 (rename the file)",
        str(root / "thin.png"): "image is 3000x1: too thin for SAM",
    }


def _in_time(fn):
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result(timeout=TIMEOUT)


def test_special_files_and_thin_images_are_recorded_failures(home: Home, tiny_model, shapes, tmp_path):
    good = Path(shapes.images[0].path)
    expected = _hostile_folder(tmp_path / "in", good)
    opts = IngestOptions(dataset="d", prompts="masks", annotations=shapes.annotations_path)
    summary = _in_time(lambda: ingest(home, [tmp_path / "in"], tiny_model, opts, progress=False))
    assert (summary.images_ingested, summary.images_failed) == (1, len(expected))
    reasons = {f.path: f.reason for f in summary.failures}
    assert set(reasons) == set(expected)
    for path, fragment in expected.items():
        assert reasons[path].startswith(fragment), (path, reasons[path])
    with home.db.session() as s:
        stored = {i.path: (i.status, i.error) for i in s.scalars(select(Image))}
    assert stored[str(tmp_path / "in" / good.name)] == ("done", None)
    for path, fragment in expected.items():
        assert stored[path][0] == "failed" and stored[path][1].startswith(fragment)

    # A search by an image too thin for SAM is a one-line error naming it (it used to be a traceback).
    with pytest.raises(InputError, match=r"thin\.png: image is 3000x1: too thin for SAM"):
        search_by_image(home, tmp_path / "in" / "thin.png", box=(0, 0, 100, 1), model=tiny_model)

    # The queue hashes files without reading special ones; the good image is stored already.
    queued = _in_time(lambda: enqueue(home, [tmp_path / "in"], "tiny-random", opts))
    assert queued.already_done == 1
    failures = {f["path"]: f["reason"] for f in queued.failures}
    assert failures[str(tmp_path / "in" / "pipe.png")] == expected[str(tmp_path / "in" / "pipe.png")]
    zero = str(tmp_path / "in" / "zero.png")
    assert failures[zero] == expected[zero]
    assert failures[str(tmp_path / "in") + "/bad\\xff.png"] == expected[str(tmp_path / "in") + "/bad\\xff.png"]


def test_too_thin_follows_sams_rounding():
    assert too_thin((1, 2048), 1024) is None  # 0.5 rounds up to 1 pixel
    assert too_thin((1, 2049), 1024) is not None
    assert too_thin((3000, 1), 1024) == ("image is 1x3000: too thin for SAM (resized to 1024 px on the long "
                                         "side, the short side would be 0 pixels)")
    assert too_thin((192, 256), 1024) is None
