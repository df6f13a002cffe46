"""The whole chain with tiny-random SAM on a synthetic train/test split (SQLite + Qdrant Edge, via the CLI
where it matters): bank from the train half through the COCO, YOLO and BDD100K readers, label the test
half, eval, export, demo. One ingest of the test half for the module."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from typer.testing import CliRunner

from samsearch.bank.build import BankBuildOptions, build_bank
from samsearch.bank.classify import LabelOptions, label_segments
from samsearch.bank.store import create_bank, load_bank_vectors
from samsearch.cli import app
from samsearch.data.coco import load_coco
from samsearch.data.datasets import read_dataset
from samsearch.data.masks import annotation_to_mask, mask_to_rle
from samsearch.data.synthetic import coco_to_bdd100k, coco_to_yolo, make_splits
from samsearch.home import Home
from samsearch.ingest.ingestor import ingest
from samsearch.ingest.options import IngestOptions
from samsearch.reports.evaluate import evaluate

runner = CliRunner()
TEST = "test"


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return make_splits(tmp_path_factory.mktemp("splits"), n_train=8, n_test=8, seed=0)


@pytest.fixture(scope="module")
def home_dir(tmp_path_factory, tiny_model, splits):
    """A home holding the test half, ingested with its masks (each segment is one ground-truth object)."""
    root = tmp_path_factory.mktemp("e2e") / "home"
    with Home(root) as home:
        test = splits["test"]
        ingest(home, [test.root], tiny_model,
               IngestOptions(dataset=TEST, prompts="masks", annotations=test.annotations_path), progress=False)
    return root


def cli(home_dir, *args):
    return runner.invoke(app, ["--home", str(home_dir), *args])


@pytest.fixture(scope="module")
def coco_bank(home_dir, splits):
    """`bank build` through the CLI from the train half's COCO file, then `label`; returns their output."""
    train = splits["train"]
    built = cli(home_dir, "bank", "build", "--annotations", str(train.annotations_path), "--images", str(train.root),
                "--name", "coco", "--prompts", "masks", "--model", "tiny-random", "--device", "cpu", "--quiet")
    labeled = cli(home_dir, "label", "--bank", "coco", "--dataset", TEST, "--quiet")
    return built, labeled


def _eval_json(home_dir, splits):
    result = cli(home_dir, "eval", "--annotations", str(splits["test"].annotations_path), "--dataset", TEST, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_coco_bank_labels_the_test_half_accurately(home_dir, splits, coco_bank):
    built, labeled = coco_bank
    n_train = len(splits["train"].objects)
    n_test = len(splits["test"].objects)
    assert built.exit_code == 0, built.output
    assert built.stdout.startswith(f"bank coco: 6 classes, {n_train} instances -> ")
    assert f"embedded {n_train} of {n_train} selected instances from 8 images in " in built.stdout
    assert labeled.exit_code == 0, labeled.output
    assert labeled.stdout.startswith(f"{'label':<32} {'segments':>10}\n")
    assert f"labeled {n_test} segments with bank coco in " in labeled.stdout

    report = _eval_json(home_dir, splits)
    chance = 1 / 6
    assert report["coverage"] == 1.0 and report["matched"] == n_test
    assert report["accuracy"] >= 0.9 > 3 * chance
    assert report["segm_map"]["map"] is None and "ground-truth masks" in report["segm_map"]["reason"]
    conf = report["confusion"]
    assert sum(map(sum, conf["matrix"])) == n_test and conf["rows"] == list(splits["test"].classes)
    assert all(c["recall"] is not None for c in report["per_class"].values())

    text = cli(home_dir, "eval", "--annotations", str(splits["test"].annotations_path), "--dataset", TEST)
    want = f"accuracy: {100 * report['accuracy']:.1f}% ({report['correct']} of {n_test} matched segments)"
    assert want in text.stdout

    again = cli(home_dir, "label", "--bank", "coco", "--dataset", TEST, "--quiet")  # re-running changes nothing
    assert again.stdout == (f"labeled 0 segments with bank coco in {again.stdout.split(' in ')[1].split('s')[0]}s\n"
                            f"left {n_test} already-labeled segments alone (--relabel re-classifies them)\n")
    assert _eval_json(home_dir, splits) == report


def test_bank_show_list_and_rebuild_via_cli(home_dir, splits, coco_bank):
    shown = cli(home_dir, "bank", "show", "coco", "--json")
    info = json.loads(shown.stdout)
    assert info["settings"]["built_from"]["format"] == "coco" and info["per_class"] == 8
    train = splits["train"]
    assert info["source"] == {"kind": "dataset", "format": "coco", "annotations": str(train.annotations_path),
                              "images": str(train.root), "prompts": "masks"}
    text = cli(home_dir, "bank", "show", "coco").stdout.splitlines()
    assert text[1] == f"built from {train.annotations_path} (coco), images {train.root}, prompts masks"
    assert info["collection"] == "bank.coco" and info["n_classes"] == 6
    rebuilt = cli(home_dir, "bank", "rebuild", "coco", "--per-class", "1", "--as", "coco-k1", "--json")
    assert rebuilt.exit_code == 0, rebuilt.output
    k1 = json.loads(rebuilt.stdout)
    assert k1["n_centroids"] == 6 and k1["n_instances"] == info["n_instances"]
    listed = cli(home_dir, "bank", "list")
    assert listed.stdout.splitlines()[0].split() == ["name", "classes", "instances", "centroids", "model"]
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:]][:2] == ["coco", "coco-k1"]
    deleted = cli(home_dir, "bank", "delete", "coco-k1")
    assert deleted.stdout == "deleted bank coco-k1 (6 classes, 6 centroids)\n"


def test_a_bank_of_near_identical_classes_is_flagged(home_dir, splits, coco_bank):
    """tiny-random's box masks do not follow the box (they cover 20-50 % of the image), so a boxes bank's
    classes all look alike; bank build says so (stderr, and in --json), and a masks bank is not flagged."""
    built, _ = coco_bank
    assert built.exit_code == 0 and "warning" not in built.output
    train = splits["train"]
    boxes = cli(home_dir, "bank", "build", "--annotations", str(train.annotations_path), "--images", str(train.root),
                "--name", "boxes", "--prompts", "boxes", "--model", "tiny-random", "--device", "cpu", "--quiet",
                "--json")
    assert boxes.exit_code == 0, boxes.output
    summary = json.loads(boxes.stdout)
    sim = summary["class_similarity"]
    assert sim["near_identical"] and sim["mean_cosine"] > sim["threshold"] == 0.7
    [warning] = summary["warnings"]
    assert warning.startswith(f"instances of different classes are near-identical (mean cosine "
                              f"{sim['mean_cosine']:.2f} between class centroids, above 0.7; closest: ")
    assert warning.endswith("tiny-random's masks do not follow the box); try --prompts masks")
    assert boxes.stderr == f"warning: {warning}\n"
    masks = cli(home_dir, "bank", "build", "--annotations", str(train.annotations_path), "--images", str(train.root),
                "--name", "masks", "--prompts", "masks", "--model", "tiny-random", "--device", "cpu", "--quiet",
                "--json")
    sim = json.loads(masks.stdout)["class_similarity"]
    assert masks.stderr == "" and not sim["near_identical"] and sim["mean_cosine"] < 0.5
    cli(home_dir, "bank", "delete", "boxes")
    cli(home_dir, "bank", "delete", "masks")


# -- the same split through the other readers (masks carried as YOLO polygons and BDD100K RLE) ----------------


def _mask_polygon(mask: np.ndarray) -> list[float]:
    """One polygon for a mask, holes bridged in (Ultralytics' way): even-odd filling keeps them."""
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    outer = max((c for c, h in zip(contours, hierarchy[0], strict=True) if h[3] < 0), key=len)[:, 0, :]
    points = outer.tolist()
    for c, h in zip(contours, hierarchy[0], strict=True):
        if h[3] >= 0:  # a hole: walk to it along the shortest bridge and back
            hole = c[:, 0, :]
            d = ((np.asarray(points)[:, None, :] - hole[None]) ** 2).sum(-1)
            i, j = np.unravel_index(d.argmin(), d.shape)
            points = points[:i + 1] + hole[j:].tolist() + hole[:j + 1].tolist() + points[i:]
    return [float(v) for p in points for v in p]


def _yolo_with_polygons(coco_json: Path, out: Path) -> Path:
    data_yaml = coco_to_yolo(coco_json, out)
    coco = load_coco(coco_json)
    index = {cid: i for i, cid in enumerate(sorted(coco.categories))}
    for image in coco.images.values():
        lines = []
        for ann in image.annotations:
            poly = _mask_polygon(annotation_to_mask(ann.segmentation, image.height, image.width))
            norm = [v / (image.width if k % 2 == 0 else image.height) for k, v in enumerate(poly)]
            lines.append(f"{index[ann.category_id]} " + " ".join(f"{v:.6f}" for v in norm))
        (out / "labels" / Path(image.file_name).relative_to("images")).with_suffix(".txt").write_text(
            "\n".join(lines) + "\n")
    return data_yaml


def _bdd_with_rle(coco_json: Path, out: Path) -> Path:
    path = coco_to_bdd100k(coco_json, out)
    coco = load_coco(coco_json)
    masks = {str(a.id): mask_to_rle(annotation_to_mask(a.segmentation, im.height, im.width))
             for im in coco.images.values() for a in im.annotations}
    frames = json.loads(path.read_text())
    for frame in frames:
        for label in frame["labels"]:
            label["rle"] = masks[label["id"]]
    path.write_text(json.dumps(frames))
    return path


@pytest.mark.parametrize("fmt", ["yolo", "bdd100k"])
def test_yolo_and_bdd100k_readers_make_an_equally_good_bank(home_dir, splits, tiny_model, tmp_path, fmt, coco_bank):
    train = splits["train"]
    if fmt == "yolo":
        annotations = _yolo_with_polygons(train.annotations_path, tmp_path / "yolo")
        images = tmp_path / "yolo" / "images"
    else:
        annotations, images = _bdd_with_rle(train.annotations_path, tmp_path / "bdd.json"), train.root
    dataset = read_dataset(annotations, images)
    assert dataset.format == fmt and dataset.num_instances == len(train.objects) and dataset.has_masks
    with Home(home_dir) as home:
        summary = build_bank(home, tiny_model, dataset, BankBuildOptions(name=fmt, prompts="masks"), progress=False)
        assert summary.instances_embedded == len(train.objects) and summary.images_failed == 0
        label_segments(home, LabelOptions(bank=fmt, dataset=TEST, relabel=True), progress=False)
        report = evaluate(home, splits["test"].annotations_path, dataset=TEST)
    assert report.coverage == 1.0 and report.accuracy >= 0.9


def test_unknown_when_a_class_is_missing_from_the_bank(home_dir, splits, coco_bank):
    with Home(home_dir) as home:
        inst = load_bank_vectors(home, "coco", "instance")  # the train half's embeddings, reused: no SAM
        labels = np.asarray(inst.labels)
        create_bank(home, "no-checker", {c: inst.vectors[labels == c] for c in set(labels) - {"cyan_checker"}},
                    replace=True)
        label_segments(home, LabelOptions(bank="no-checker", dataset=TEST, relabel=True, min_score=0.8),
                       progress=False)
        report = evaluate(home, splits["test"].annotations_path, dataset=TEST)
        label_segments(home, LabelOptions(bank="coco", dataset=TEST, relabel=True), progress=False)  # restore
    conf = report.confusion
    row = conf["matrix"][conf["rows"].index("cyan_checker")]
    n_checker = sum(o.category == "cyan_checker" for o in splits["test"].objects)
    assert n_checker and "unknown" in conf["columns"] and row[conf["columns"].index("unknown")] == n_checker
    others = [c for name, c in report.per_class.items() if name != "cyan_checker"]
    assert sum(c["correct"] for c in others) / sum(c["matched"] for c in others) >= 0.9


# -- export ---------------------------------------------------------------------------------------------------


def test_export_coco_round_trips_through_pycocotools(home_dir, splits, coco_bank, tmp_path):
    out = tmp_path / "labels.json"
    result = cli(home_dir, "export", "coco", str(out), "--dataset", TEST, "--relative-to", str(splits["test"].root),
                 "--quiet")
    n_test = len(splits["test"].objects)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {out}: 8 images, {n_test} annotations, ")
    gt = COCO(str(out))
    anns = gt.dataset["annotations"]
    files = sorted(im["file_name"] for im in gt.dataset["images"])
    assert files == sorted(im.file_name for im in splits["test"].images)
    truth = {o.id: o.category for o in splits["test"].objects}
    assert sorted(a["source_annotation_id"] for a in anns) == sorted(truth)  # each segment names its source object
    names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    assert np.mean([names[a["category_id"]] == truth[a["source_annotation_id"]] for a in anns]) >= 0.9
    assert all(a["segmentation"]["size"] == [192, 256] and 0 < a["score"] <= 1 for a in anns)

    dt = gt.loadRes(anns)  # the same file, loaded as detection results
    ev = COCOeval(gt, dt, "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)  # every segment matches itself: the RLE, boxes and ids are sound

    only = tmp_path / "confident.json"
    summary = json.loads(cli(home_dir, "export", "coco", str(only), "--dataset", TEST, "--labeled-only",
                             "--min-score", "0.95", "--json", "--quiet").stdout)
    kept = [a for a in anns if a["score"] >= 0.95]
    assert summary["annotations"] == len(kept) < n_test


def test_eval_reports_segm_map_for_sam_segments(home_dir, splits, tiny_model, coco_bank):
    test = splits["test"]
    with Home(home_dir) as home:
        # the same image again, segmented by SAM from box prompts (a second segment set of that image)
        ingest(home, [test.images[0].path], tiny_model,
               IngestOptions(dataset=TEST, prompts="boxes", annotations=test.annotations_path), progress=False)
        assert label_segments(home, LabelOptions(bank="coco", dataset=TEST), progress=False).labeled == \
            len(test.images[0].objects)  # only the new, unlabeled segments
        report = evaluate(home, test.annotations_path, dataset=TEST, source="box")
        masks_only = evaluate(home, test.annotations_path, dataset=TEST, source="mask")
    assert report.images_matched == 1 and report.gt_images_missing == 7 and masks_only.images_matched == 8
    assert masks_only.coverage == 1.0 and masks_only.segm_map["map"] is None
    m = report.segm_map
    assert m["sources"] == {"box": report.segments} and 0.0 <= m["map"] <= 1.0 and m["detections"] > 0


# -- demo and CLI errors --------------------------------------------------------------------------------------


def test_demo_runs_offline(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--train", "2", "--test", "1", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["evaluation"]["coverage"] == 1.0 and summary["evaluation"]["matched"] > 0
    assert summary["bank"]["name"] == "demo" and sum(summary["labeled"].values()) == summary["evaluation"]["matched"]
    page = (out / "gallery" / "index.html").read_text()
    rows = page.count("<h2>")  # one section per query: the query, then its neighbours (search's own hits)
    assert rows >= 1 and page.count("<figure") > 2 * rows
    assert page.count('src="data:image/jpeg;base64,') == page.count("<figure")  # self-contained page
    assert len(COCO(str(out / "labels.coco.json")).getAnnIds()) == summary["evaluation"]["segments"]


def test_cli_errors_are_one_line(tmp_path, splits):
    empty = tmp_path / "empty"
    train = splits["train"]
    bdd = coco_to_bdd100k(train.annotations_path, tmp_path / "bdd.json")
    bad_yolo = tmp_path / "yolo"
    (bad_yolo / "labels").mkdir(parents=True)
    (bad_yolo / "labels" / "00001.txt").write_text("0 0.5 0.5\n")
    (bad_yolo / "data.yaml").write_text("names: [a]\n")
    (bad_yolo / "00001.png").write_bytes(train.images[0].path.read_bytes())
    cases = [
        (["label", "--bank", "nope"],
         "Error: no bank named 'nope'; this home has no banks (see `samsearch bank build`)\n"),
        (["bank", "show", "nope"],
         "Error: no bank named 'nope'; this home has no banks (see `samsearch bank build`)\n"),
        (["bank", "build", "--annotations", str(bdd), "--images", str(train.root), "--name", "x", "--prompts", "masks",
          "--model", "tiny-random", "--device", "cpu"],
         f"Error: {bdd}: no annotation carries a mask (bdd100k boxes only); --prompts masks needs polygons or RLE: "
         "use --prompts boxes\n"),
        (["bank", "build", "--annotations", str(train.annotations_path), "--images", str(train.root), "--name",
          "a/b", "--model", "tiny-random", "--device", "cpu"],
         "Error: invalid bank name 'a/b': use 1-100 letters, digits, '_', '-' or '.', starting with a letter or "
         "digit\n"),
        (["bank", "build", "--annotations", str(bad_yolo / "data.yaml"), "--images", str(bad_yolo), "--name", "y",
          "--model", "tiny-random"],
         f"Error: {bad_yolo / 'labels' / '00001.txt'} line 1: expected 'class cx cy w h' or 'class x1 y1 x2 y2 x3 "
         "y3 ...', got 3 fields\n"),
        (["export", "coco", str(tmp_path)],
         f"Error: {tmp_path}: is a folder; give the path of the JSON file to write\n"),
        (["export", "coco", str(tmp_path / "o.json"), "--dataset", "nope"],
         "Error: no dataset 'nope' in this home (datasets: none)\n"),
    ]
    for args, message in cases:
        result = cli(empty, *args)
        assert (result.exit_code, result.stderr) == (1, message), args
