"""Dataset folders given as relative paths (issue 12): ``bank build --images images`` with a YOLO dataset
crashed with ``ValueError: ... is not in the subpath of ...`` (the image files are absolute)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from samsearch.cli import app
from samsearch.data.datasets import read_dataset
from samsearch.data.synthetic import coco_to_yolo, make_dataset


def test_yolo_bank_build_with_relative_images_folder(tmp_path, monkeypatch):
    src = make_dataset(tmp_path / "src", n_images=1, seed=3)
    yaml_path = coco_to_yolo(src.annotations_path, tmp_path / "yolo")
    (tmp_path / "linked").symlink_to(tmp_path / "yolo")  # a folder reached through a symlink, too
    monkeypatch.chdir(tmp_path)
    for images in (Path("yolo/images"), Path("linked/images"), Path("./yolo/../yolo/images")):
        dataset = read_dataset(Path("yolo/data.yaml"), images, "yolo")
        assert [im.entry.file_name for im in dataset.images] == ["00001.png"]
        assert dataset.num_instances == len(src.objects) and not dataset.skipped

    result = CliRunner().invoke(app, ["--home", "h", "bank", "build", "--annotations", "yolo/data.yaml",
                                      "--images", "yolo/images", "--name", "rel", "--model", "tiny-random",
                                      "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"embedded {len(src.objects)} of {len(src.objects)} selected instances from 1 images" in result.output
    assert yaml_path.is_file()
