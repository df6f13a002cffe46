"""``--model`` defaults to the model of the home's vectors, and a model other than the home's is refused
before any weights are loaded or downloaded (issue 12: ``ingest``/``bank build`` defaulted to vit_b and
downloaded its 375 MB checkpoint before the "cannot be mixed" check)."""

from __future__ import annotations

import json
import urllib.request

from typer.testing import CliRunner

from samsearch.cli import app
from samsearch.data.synthetic import make_dataset

runner = CliRunner()


def test_model_defaults_to_the_homes_and_a_mismatch_fails_before_any_download(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data", n_images=2, seed=5)
    first, second = (str(im.path) for im in data.images)
    cache = tmp_path / "cache"  # SAMSEARCH_CACHE (tests/conftest.py): where a checkpoint would be downloaded
    fetched: list[str] = []

    def no_network(url, *args, **kwargs):
        fetched.append(str(url))
        raise OSError("no network in this test")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    home = ["--home", str(tmp_path / "h")]
    masks = ["--prompts", "masks", "--annotations", str(data.annotations_path), "--device", "cpu", "--quiet"]

    made = runner.invoke(app, [*home, "ingest", first, "--model", "tiny-random", *masks])
    assert made.exit_code == 0, made.output
    # No --model: the home's tiny-random (before, vit_b: a download, then "cannot be mixed").
    again = runner.invoke(app, [*home, "ingest", second, *masks, "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["images_ingested"] == 1
    bank = runner.invoke(app, [*home, "bank", "build", "--annotations", str(data.annotations_path), "--images",
                               str(data.root), "--name", "b", "--prompts", "masks", "--device", "cpu", "--quiet"])
    assert bank.exit_code == 0, bank.output
    assert "model tiny-random:" in bank.output

    for args in (["ingest", second, *masks, "--model", "vit_b"],
                 ["ingest", second, *masks, "--model", "vit_b", "--enqueue"],
                 ["bank", "build", "--annotations", str(data.annotations_path), "--images", str(data.root),
                  "--name", "c", "--model", "vit_b", "--device", "cpu", "--quiet"]):
        result = runner.invoke(app, [*home, *args])
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ")
        assert "this home holds vectors from tiny-random" in lines[0] and "uses vit_b" in lines[0]
        assert "cannot be mixed" in lines[0]
    assert fetched == [] and not cache.exists()  # nothing was downloaded, or even tried
