"""A damaged or emptied SQLite file (issue 12): a corrupt file was a raw traceback, and a zero-length
file beside a vector store that holds segments was silently made a new empty database (every vector
then looked orphaned, and ``doctor --repair`` would have deleted them)."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from samsearch.cli import app
from samsearch.db.engine import DatabaseError
from samsearch.home import SEGMENTS, Home
from samsearch.ingest.ingestor import ingest
from samsearch.ingest.options import IngestOptions

runner = CliRunner()


def _stats(home):
    return runner.invoke(app, ["--home", str(home), "stats"])


@pytest.mark.parametrize("damage", ["garbage", "overwritten pages"])
def test_a_corrupt_sqlite_file_is_a_one_line_error(tmp_path, damage):
    home = tmp_path / "h"
    Home(home).close()  # a real database with the schema
    db = home / "samsearch.db"
    if damage == "garbage":
        db.write_bytes(bytes(range(256)) * 20)
    else:
        with open(db, "r+b") as f:
            f.seek(4096)
            f.write(b"\xff" * 8192)
    with pytest.raises(DatabaseError) as info:
        Home(home)
    message = str(info.value)
    assert message.startswith(f"{db}: cannot open the SQLite database: ") and "\n" not in message
    assert ("file is not a database" if damage == "garbage" else "malformed") in message
    result = _stats(home)
    assert result.exit_code == 1 and result.output.strip().splitlines() == [f"Error: {message}"]


def test_a_zero_length_sqlite_file_beside_stored_vectors_is_refused(tmp_path, tiny_model, shapes):
    home = tmp_path / "h"
    opts = IngestOptions(prompts="masks", annotations=shapes.annotations_path)
    with Home(home) as h:
        summary = ingest(h, [shapes.images[0].path], tiny_model, opts, progress=False)
        assert summary.segments > 0 and h.vectors.count(SEGMENTS) == summary.segments
    db = home / "samsearch.db"
    db.write_bytes(b"")
    result = _stats(home)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {db}: the SQLite database is an empty (zero-length) file, but the vector store holds "
        f"{summary.segments} segment vectors; refusing to start an empty database beside them (restore the "
        "database from a backup, or delete the file and the vectors folder to start over)"]
    assert db.stat().st_size == 0  # left as it was

    # With the vector store empty too, the empty file is simply a new database.
    shutil.rmtree(home / "vectors")
    result = _stats(home)
    assert result.exit_code == 0, result.output
    assert db.stat().st_size > 0
