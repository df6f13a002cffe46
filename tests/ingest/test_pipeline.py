"""The overlapped ingest pipeline: same stored result as the sequential path, errors from any thread stop
the run cleanly, and the execution options are validated with one-line errors."""

import os
import shutil
import threading

import numpy as np
import pytest
import torch
from sqlalchemy import select
from typer.testing import CliRunner

from samsearch.cli import app
from samsearch.db import Image, Run, Segment
from samsearch.errors import InputError
from samsearch.home import SEGMENTS, Home
from samsearch.ingest.ingestor import Ingestor
from samsearch.ingest.options import IngestOptions
from samsearch.sam.accel import ExecutionOptions, fused_attention
from samsearch.sam.models import build_tiny_random


def _folder(tmp_path, shapes, n=3):
    """n images, a byte-identical copy of the first, and a broken file (sorted first)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for im in shapes.images[:n]:
        shutil.copyfile(im.path, folder / im.path.name)
    shutil.copyfile(shapes.images[0].path, folder / "zz_copy.png")
    (folder / "00000_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return folder


def _stored(home):
    with home.db.session() as s:
        segs = [(x.id, x.rle_counts, x.area, x.bbox_x, x.bbox_y, x.bbox_w, x.bbox_h, x.annotation_id)
                for x in s.execute(select(Segment).order_by(Segment.id)).scalars()]
        images = sorted((i.content_hash, i.status) for i in s.execute(select(Image)).scalars())
    vectors = {r.id: r.vector for b in home.vectors.scroll(SEGMENTS, with_vectors=True) for r in b}
    return segs, images, vectors


def test_pipeline_stores_what_the_sequential_path_stores(tmp_path, tiny_model, shapes):
    folder = _folder(tmp_path, shapes)
    results = {}
    for name, execution in [("pipeline", ExecutionOptions(encoder_batch=2, loaders=2)),
                            ("sequential", ExecutionOptions(pipeline=False))]:
        opts = IngestOptions(prompts="masks", annotations=shapes.annotations_path, execution=execution)
        with Home(tmp_path / name) as home:
            summary = Ingestor(home, tiny_model, opts).run([folder], progress=False)
            results[name] = (summary, _stored(home))
    (pipe, (p_segs, p_images, p_vecs)), (seq, (s_segs, s_images, s_vecs)) = results["pipeline"], results["sequential"]
    counts = ("images_seen", "images_ingested", "images_skipped", "images_failed", "segments")
    assert [getattr(pipe, c) for c in counts] == [getattr(seq, c) for c in counts] == [5, 3, 1, 1, len(p_segs)]
    assert [f.reason for f in pipe.failures] == [f.reason for f in seq.failures]
    assert p_segs == s_segs and p_images == s_images and set(p_vecs) == set(s_vecs) == {s[0] for s in p_segs}
    for sid, vec in p_vecs.items():  # a batch of two through the encoder: equal up to rounding
        assert np.allclose(vec, s_vecs[sid], atol=1e-5)
    assert {"wait_input", "wait_output", "drain"} <= set(pipe.stage_seconds)


class _Stop(Exception):
    pass


def _threads() -> int:
    """Live threads, less the embedded store's read server (it lives while the store is open)."""
    return sum(t.name != "samsearch-edge-reads" for t in threading.enumerate())


@pytest.mark.parametrize("raise_at, stored", [(1, 0), (3, 2)])  # 1: the broken file (model thread); 3: writer
def test_an_error_in_any_thread_stops_the_run_and_a_rerun_finishes(home, tiny_model, shapes, tmp_path,
                                                                   raise_at, stored):
    folder = _folder(tmp_path, shapes)
    opts = IngestOptions(prompts="masks", annotations=shapes.annotations_path)
    calls = []
    threads_before = _threads()

    def on_image(path):
        calls.append(path.name)
        if len(calls) == raise_at:
            raise _Stop(path.name)

    with pytest.raises(_Stop):
        Ingestor(home, tiny_model, opts).run([folder], progress=False, on_image=on_image)
    assert _threads() == threads_before  # loaders and writer are gone
    with home.db.session() as s:
        assert s.execute(select(Run.status)).scalar() == "failed"  # an exception: the same status for every job
        statuses = [i.status for i in s.execute(select(Image)).scalars()]
    assert statuses.count("done") == stored
    if stored == 0:
        return
    summary = Ingestor(home, tiny_model, opts).run([folder], progress=False)
    assert summary.images_ingested == 3 - stored and summary.images_failed == 1
    segs, images, vectors = _stored(home)
    assert sorted(s for _, s in images) == ["done"] * 3 + ["failed"] and set(vectors) == {s[0] for s in segs}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--precision", "fp16"], "Error: --precision fp16 needs a CUDA device (this run uses cpu); use fp32 or "
                                  "bf16\n"),
        (["--compile"], "Error: --compile needs a CUDA device (this run uses cpu): on CPU, compiling the encoder "
                        "costs minutes and gains little\n"),
    ],
)
def test_execution_options_are_checked_before_anything_runs(tmp_path, args, message):
    result = CliRunner().invoke(app, ["--home", str(tmp_path / "h"), "ingest", str(tmp_path), "--model",
                                      "tiny-random", "--device", "cpu", *args])
    assert result.exit_code == 1
    assert result.stderr == message


@pytest.mark.parametrize("args", [["--precision", "fp8"], ["--decoder", "turbo"], ["--prompts", "box"]])
def test_a_bad_option_value_is_a_usage_error_that_creates_nothing(tmp_path, args):
    home = tmp_path / "h"
    result = CliRunner().invoke(app, ["--home", str(home), "ingest", str(tmp_path), "--model", "tiny-random",
                                      "--device", "cpu", *args])
    assert result.exit_code == 2
    assert f"Invalid value for '{args[0]}'" in result.output
    assert not home.exists()


class _CpuModel:  # what resolved() reads from a LoadedModel
    device = torch.device("cpu")
    sam = None


def test_cpu_defaults(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    ex = ExecutionOptions().resolved(_CpuModel())
    assert (ex.precision, ex.decoder, ex.encoder_batch, ex.decoder_group, ex.loaders, ex.prefetch,
            ex.write_queue) == ("fp32", "fast", 1, 4, 2, 4, 4)


@pytest.mark.parametrize("cores, loaders, prefetch", [(None, 2, 4), (1, 2, 4), (2, 2, 4), (6, 6, 8), (16, 8, 10),
                                                      (128, 8, 10)])
def test_loader_defaults_follow_the_cores(monkeypatch, cores, loaders, prefetch):
    # os.cpu_count() may return None (unknown): then the floor of 2 applies.
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    ex = ExecutionOptions().resolved(_CpuModel())
    assert (ex.loaders, ex.prefetch) == (loaders, prefetch)
    # explicit values are kept whatever the machine
    ex = ExecutionOptions(loaders=3, prefetch=5).resolved(_CpuModel())
    assert (ex.loaders, ex.prefetch) == (3, 5)


def test_unresolved_loaders_validate(monkeypatch):
    with pytest.raises(InputError, match="--loaders"):
        ExecutionOptions(loaders=0).validate(torch.device("cpu"))
    ExecutionOptions(loaders=None).validate(torch.device("cpu"))


@torch.no_grad()
def test_fused_encoder_attention_matches_and_is_undone():
    sam = build_tiny_random()
    for module in sam.image_encoder.modules():  # the random build zero-initialises the relative positions
        if hasattr(module, "rel_pos_h"):
            torch.nn.init.normal_(module.rel_pos_h, std=0.5)
            torch.nn.init.normal_(module.rel_pos_w, std=0.5)
    x = torch.randn((1, 3, 1024, 1024), generator=torch.Generator().manual_seed(0))
    plain = sam.image_encoder(x)
    with fused_attention(sam):
        fused = sam.image_encoder(x)
    assert all("forward" not in m.__dict__ for m in sam.image_encoder.modules())
    assert torch.equal(sam.image_encoder(x), plain)
    assert torch.allclose(fused, plain, atol=1e-4 * plain.abs().max())
