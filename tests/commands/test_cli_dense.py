"""Dense heads from the command line, as a user runs them: ``main.py train`` a classifier, a segment head
and a detect head together, ``main.py export``, then ``main.py predict --json`` on the ONNX file writes
each image's mask as a PNG of class indices (named in the JSON) and its boxes as
``[x1, y1, x2, y2, score, label]`` lists in the image's pixels, and those are the project's own
predictions (:func:`engine.export.inference.predict_files`) within the export's tolerance:

* masks — at least 99.9 % of each image's pixels the same class (the arg-max of logits that agree to
  ~1e-5; a pixel can only flip where two classes tie),
* boxes — the same boxes in the same order with the same labels, IoU at least 0.999 with the project's
  box, scores within 1e-4.

(On the full demo after 5 epochs, 360 images: 100.0000 % of mask pixels, worst image 99.998 %; 2,677
boxes, none missing or extra, IoU >= 0.999998, scores within 7e-7.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from cli_runner import run_cli
from engine.data.demo_data import ensure_demo_data, load_recipe
from engine.export.dense_decode import to_image_frame
from engine.export.inference import predict_files
from engine.project.project_file import open_project

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
MASK_AGREEMENT, BOX_IOU, SCORE_DIFF = 0.999, 0.999, 1e-4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def graft(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    """``main.py ARGS`` in this process (cli_runner: as a child gives it, without its 4 s of imports)."""
    return run_cli(*args, cwd=cwd, timeout=timeout, env=ENV)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """24 demo images (masks and boxes), Lite0 at a 64 px input, four epochs: trained, saved, exported."""
    root = tmp_path_factory.mktemp("dense_cli")
    manifest = ensure_demo_data(root / "data", recipe={**load_recipe(), "count": 24})
    project, onnx = root / "p.graft", root / "p.onnx"
    trained = graft("train", "--data", manifest, "--input-size", "64", "--epochs", "4", "--batch-size", "8",
                    "--head", "shape:single:shape", "--head", "seg:segment:mask@features.3,features.5,features.8",
                    "--head", "boxes:detect:boxes", "--seed", "0", "--workers", "0", "--out", project)
    assert trained.returncode == 0, trained.stderr
    assert "seg: mIoU" in trained.stdout and "boxes: mAP50" in trained.stdout
    done = graft("export", project, "--onnx", onnx)
    assert done.returncode == 0, done.stderr
    images = sorted((manifest.parent / "images").iterdir())[:6]
    return root, project, onnx, images


@pytest.mark.slow
def test_predict_json_writes_masks_and_boxes_the_project_gives(exported):
    root, project, onnx, images = exported
    run = graft("predict", onnx, *images, "--json", cwd=root)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in images]
    session = open_project(project)
    ours = predict_files(session, images)
    spec = session.input_spec
    for line, mine, path in zip(lines, ours, images):
        seg, boxes = line["outputs"]["seg"], line["outputs"]["boxes"]
        # the mask: a PNG of class indices in ./masks, named in the JSON, the project's mask
        assert seg["mask"] == f"masks/{path.stem}.seg.png" and seg["mask_size"] == [64, 64]
        with Image.open(root / seg["mask"]) as png:
            assert png.mode == "P" and png.size == (64, 64)
            mask = np.asarray(png)
        assert mask.max() < 5  # background + the demo's 4 shapes
        assert (mask == mine["seg"].mask).mean() >= MASK_AGREEMENT
        with Image.open(path) as img:
            size = img.size
        assert seg["mask_box"] == pytest.approx(to_image_frame([{"box": [0, 0, 64, 64]}], size, spec)[0]["box"], abs=1e-3)
        # the boxes: [x1, y1, x2, y2, score, label] in the image's pixels, the project's boxes
        assert boxes["boxes_frame"] == "image"
        expected = to_image_frame(mine["boxes"].boxes, size, spec)
        assert [b[5] for b in boxes["boxes"]] == [b["label"] for b in expected]
        if expected:
            iou = box_iou(torch.tensor([b[:4] for b in boxes["boxes"]]), torch.tensor([b["box"] for b in expected]))
            assert iou.diagonal().min() >= BOX_IOU
            assert np.abs(np.array([b[4] for b in boxes["boxes"]]) - [b["score"] for b in expected]).max() <= SCORE_DIFF
        assert line["outputs"]["shape"]["label"] == mine["shape"].label
    assert any(line["outputs"]["boxes"]["boxes"] for line in lines)


@pytest.mark.slow
def test_predict_csv_and_text_name_the_mask_files(exported, tmp_path):
    root, _, onnx, images = exported
    out = tmp_path / "preds.csv"
    run = graft("predict", onnx, *images[:2], "--csv", out)
    assert run.returncode == 0, run.stderr
    assert f"masks into {tmp_path / 'preds_masks'}" in run.stderr
    import csv

    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [Path(r["seg"]).name for r in rows] == [f"{p.stem}.seg.png" for p in images[:2]]
    assert all(Path(r["seg"]).is_file() for r in rows)
    assert all(isinstance(json.loads(r["boxes"]), list) for r in rows)
    # plain text with --masks, and still without torch (the masks and the boxes' NMS need none)
    wrapper = ("import runpy, sys\nsys.argv = [{main!r}] + sys.argv[1:]\ntry:\n    runpy.run_path({main!r}, "
               "run_name='__main__')\nexcept SystemExit as exc:\n    code = exc.code\n"
               "sys.stderr.write('TORCH_IMPORTED' if 'torch' in sys.modules else '')\nsys.exit(code)\n")
    text = subprocess.run([sys.executable, "-c", wrapper.format(main=str(ROOT / "main.py")), "predict", str(onnx),
                           str(images[0]), "--masks", str(tmp_path / "m")], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env=ENV)
    assert text.returncode == 0 and f"-> {tmp_path / 'm' / images[0].stem}.seg.png" in text.stdout
    assert "TORCH_IMPORTED" not in text.stderr
    missing = graft("predict", onnx, images[0], "--masks", tmp_path / "no" / "such")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "does not exist" in missing.stderr
