"""The CLI on real stores: exact output, exit codes, help for every command, crash recovery."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from samsearch.cli import app

runner = CliRunner()


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        yield (*prefix, name), cmd
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))


def test_every_command_has_help():
    import typer.main

    root = typer.main.get_command(app)
    found = list(_commands(root))
    assert {("ingest",), ("stats",), ("db", "upgrade")} <= {p for p, _ in found}
    for path, cmd in found:
        assert cmd.help or cmd.short_help, f"{' '.join(path)} has no help"
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output


def _ingest_args(home, shapes, *extra):
    return ["--home", str(home), "ingest", str(shapes.root), "--model", "tiny-random", "--device", "cpu",
            "--prompts", "masks", "--annotations", str(shapes.annotations_path), "--quiet", *extra]


def test_ingest_then_stats_json(tmp_path, shapes):
    home = tmp_path / "h"
    result = runner.invoke(app, _ingest_args(home, shapes, "--dataset", "shapes", "--json"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["images_ingested"] == len(shapes.images)
    assert summary["segments"] == len(shapes.objects)
    assert set(summary["stage_seconds"]) == {"decode", "encode", "masks", "pooling", "transfer", "rle", "vectors",
                                             "sql", "wait_input", "wait_output", "drain"}

    result = runner.invoke(app, ["--home", str(home), "stats", "--json"])
    assert result.exit_code == 0
    stats = json.loads(result.stdout)
    assert stats["images"] == len(shapes.images) and stats["segments"] == stats["vectors"] == len(shapes.objects)
    assert stats["datasets"]["shapes"]["by_status"] == {"done": len(shapes.images)}
    assert stats["embedding_space"]["model"] == "tiny-random"

    again = runner.invoke(app, _ingest_args(home, shapes, "--dataset", "shapes"))
    assert again.exit_code == 0
    assert again.stdout.startswith(
        f"ingested 0 images (0 segments), skipped {len(shapes.images)} already stored, failed 0, in ")


def test_stats_counts_segments_per_label_and_source(tmp_path, shapes):
    """Labels set by a person show up in `stats` (text and --json), split by who set them."""
    from samsearch.bank.classify import set_manual_labels
    from samsearch.db import Segment
    from samsearch.home import Home

    home = tmp_path / "h"
    assert runner.invoke(app, _ingest_args(home, shapes)).exit_code == 0
    with Home(home) as h:
        with h.db.session() as s:
            ids = sorted(s.scalars(Segment.__table__.select().with_only_columns(Segment.id)))
        assert set_manual_labels(h, ids[:2], "red square") == 2
        assert set_manual_labels(h, ids[2:3], "blue <b>disc</b>") == 1

    data = json.loads(runner.invoke(app, ["--home", str(home), "stats", "--json"]).stdout)
    by_label = {e["label"]: e for e in data["labels"]}
    assert by_label["red square"]["count"] == 2 and by_label["red square"]["by_source"] == {"manual": 2}
    assert by_label["blue <b>disc</b>"]["count"] == 1
    assert by_label[None]["count"] == len(shapes.objects) - 3

    text = runner.invoke(app, ["--home", str(home), "stats"]).stdout
    assert "red square" in text and "manual 2" in text
    assert ["(unlabeled)", str(len(shapes.objects) - 3)] in [line.split() for line in text.splitlines()]
    short = runner.invoke(app, ["--home", str(home), "stats", "--labels", "1"]).stdout
    assert "red square" in short and "blue" not in short and "1 more labels" in short


def test_ingest_and_worker_drain_say_they_build_the_index_and_leave_it_complete(tmp_path, shapes, monkeypatch):
    """Without --quiet, ingest and worker --drain print the closing index build on stderr (it runs in a
    child process) and return with every vector indexed: search is at indexed speed at once."""
    from samsearch.home import SEGMENTS, Home

    monkeypatch.setenv("SAMSEARCH_INDEX_THRESHOLD", "8")  # the shapes have a few dozen segments
    n = len(shapes.objects)
    result = runner.invoke(app, [a for a in _ingest_args(tmp_path / "h", shapes) if a != "--quiet"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if "vector index" in line]
    assert lines[0] == f"building the vector index of 'segments' ({n:,} new of ~{n:,} points; in a child process)"
    assert lines[-1].startswith("built the vector index of 'segments' in ")
    assert lines[-1].endswith(f" s ({n:,} of {n:,} points indexed)")
    with Home(tmp_path / "h") as h:
        assert h.vectors.index_status(SEGMENTS) == (n, n)
        assert h.vectors.search(SEGMENTS, h.vectors.retrieve(SEGMENTS, [next(
            r.id for b in h.vectors.scroll(SEGMENTS) for r in b)], with_vectors=True)[0].vector, k=3)

    home = ["--home", str(tmp_path / "q")]
    queued = runner.invoke(app, [*home, "ingest", str(shapes.root), "--enqueue", "--model", "tiny-random",
                                 "--prompts", "masks", "--annotations", str(shapes.annotations_path), "--quiet"])
    assert queued.exit_code == 0, queued.output
    result = runner.invoke(app, [*home, "worker", "--drain", "--poll", "0.1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if "vector index" in line]
    assert lines[0] == f"building the vector index of 'segments' ({n:,} new of ~{n:,} points; in a child process)"
    assert lines[-1].endswith(f" s ({n:,} of {n:,} points indexed)")
    with Home(tmp_path / "q") as h:
        assert h.vectors.index_status(SEGMENTS) == (n, n)


def test_partial_failure_exit_code_and_message(tmp_path, shapes):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(shapes.images[0].path.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    result = runner.invoke(app, ["--home", str(tmp_path / "h"), "ingest", str(folder), "--model", "tiny-random",
                                 "--device", "cpu", "--quiet", "--points-per-side", "1",
                                 "--pred-iou-thresh", "0", "--stability-score-thresh", "0"])
    assert result.exit_code == 3
    assert f"failed: {folder / 'broken.png'}: " in result.stderr
    result = runner.invoke(app, ["--home", str(tmp_path / "h"), "stats"])
    assert "images:    2 (1 failed)" in result.stdout and "broken.png" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["ingest", "/nonexistent/dir", "--model", "tiny-random"],
         "Error: /nonexistent/dir: no such file, folder or matching glob\n"),
        (["ingest", ".", "--model", "vit_zz"], "Error: unknown model 'vit_zz'; choose one of vit_b, vit_l, "
                                               "vit_h, tiny-random\n"),
        (["ingest", ".", "--model", "tiny-random", "--prompts", "boxes"],
         "Error: --prompts boxes needs --annotations FILE (COCO JSON)\n"),
    ],
)
def test_bad_input_one_line_errors(tmp_path, args, message):
    result = runner.invoke(app, ["--home", str(tmp_path / "h"), *args])
    assert result.exit_code == 1
    assert result.stderr == message


def _run_cli(args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "samsearch", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_crash_between_vector_and_sql_write_then_clean_rerun(tmp_path, shapes):
    """A real process crash (os._exit) after the 3rd image's vectors were written but before its SQL
    commit; the re-run of the same command must leave exactly what a clean run leaves."""
    from samsearch.home import SEGMENTS, Home

    subset = tmp_path / "subset"
    subset.mkdir()
    for im in shapes.images[:5]:
        (subset / im.path.name).write_bytes(im.path.read_bytes())

    def args(home):
        return ["--home", str(home), "ingest", str(subset), "--model", "tiny-random", "--device", "cpu",
                "--prompts", "masks", "--annotations", str(shapes.annotations_path), "--quiet"]

    crashed = _run_cli(args(tmp_path / "crash"), {"SAMSEARCH_FAULT": "after_vectors:3"})
    assert crashed.returncode == 77, crashed.stderr
    with Home(tmp_path / "crash") as h:
        from samsearch.db import Image, Segment

        with h.db.session() as s:
            statuses = sorted(i.status for i in s.query(Image))
            n_sql = s.query(Segment).count()
        # images 1-2 are done; the 3rd (and any the loaders had claimed ahead of it) is still running
        assert statuses.count("done") == 2 and set(statuses) == {"done", "running"}
        assert h.vectors.count(SEGMENTS) > n_sql  # the crashed image's vectors are there, its rows are not

    assert _run_cli(args(tmp_path / "crash")).returncode == 0
    assert _run_cli(args(tmp_path / "clean")).returncode == 0

    def snapshot(home):
        with Home(home) as h:
            from samsearch.db import Image, Segment

            with h.db.session() as s:
                segs = sorted((x.id, x.area, x.rle_counts) for x in s.query(Segment))
                statuses = sorted(i.status for i in s.query(Image))
            vec_ids = sorted(r.id for b in h.vectors.scroll(SEGMENTS) for r in b)
        return segs, statuses, vec_ids

    crash_state, clean_state = snapshot(tmp_path / "crash"), snapshot(tmp_path / "clean")
    assert crash_state == clean_state
    assert crash_state[2] == [sid for sid, _, _ in crash_state[0]]
    assert crash_state[1] == ["done"] * 5
