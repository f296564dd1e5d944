"""``main.py export --precision`` and ``main.py predict --csv``: a reduced file with its table, read back by
predict; many images into one CSV, broken ones listed and skipped."""
from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.data.loading import load_data
from engine.data.demo_data import ensure_demo_data
from engine.export.metadata import OnnxPredictor, read_metadata
from engine.export.onnx_export import export_onnx
from engine.network.heads import HeadSpec
from engine.project.project_file import save_project
from engine.training.record import TrainingRecord

from commands.predict import ProgressBar
from main import main
from test_cli_export import predict

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HEADS = [HeadSpec("shape", labels=["circle", "square", "star", "triangle"], columns=["shape"]),
         HeadSpec("tags", kind="multi", labels=["red", "striped", "outlined"], columns=["red", "striped", "outlined"]),
         HeadSpec("size", kind="regression", labels=["size"], columns=["size"])]


@pytest.fixture(scope="module")
def project(tmp_path_factory, small_resnet) -> tuple[Path, Path]:
    """A project that records the demo data as its training data (as ``main.py train`` does)."""
    folder = tmp_path_factory.mktemp("precision")
    manifest = ensure_demo_data()
    data = load_data(manifest, HEADS)
    record = TrainingRecord(data=str(manifest.resolve()), seed=data.seed, val_fraction=data.val_fraction,
                            split=data.split_from, n_train=len(data.train), n_val=len(data.val))
    path = folder / "small.graft"
    save_project(small_resnet(HEADS), path, extra=record.store({}))
    return path, manifest


@pytest.mark.slow
def test_int8_export_prints_the_table_and_predict_reads_the_file(project, tmp_path, capsys):
    path, manifest = project
    out = tmp_path / "small_int8.onnx"
    code = main(["export", str(path), "--onnx", str(out), "--precision", "int8", "--runs", "1"])
    text = capsys.readouterr().out
    assert code == 0
    assert read_metadata(out).precision == "int8"
    val = load_data(manifest, HEADS).val
    labelled = sum(1 for s in val if s.targets["shape"] >= 0)
    assert "static quantization (QDQ, per-channel int8 weights" in text and "calibrated on 64 images" in text
    assert f"compared on {len(val)} images from the validation split of labels.csv" in text
    assert f"shape: accuracy ({labelled} labelled)" in text and "tags: per-label agreement" in text
    assert "latency, batch 16" in text and "file size" in text
    header = next(line for line in text.splitlines() if line.split()[-2:] == ["fp32", "int8"])
    assert header
    predicted = predict(out, val[0].path)
    assert predicted.returncode == 0 and predicted.stdout.splitlines()[1].strip().startswith("shape: ")


@pytest.mark.slow
def test_fp16_export_without_recorded_data_compares_on_the_given_images(tmp_path, small_resnet, capsys):
    session = small_resnet(HEADS)
    save_project(session, tmp_path / "bare.graft")
    images = sorted(ensure_demo_data().parent.glob("images/*.jpg"))[:6]
    args = [str(a) for img in images for a in ("--image", img)]
    code = main(["export", str(tmp_path / "bare.graft"), "--onnx", str(tmp_path / "bare16.onnx"), "--precision",
                 "fp16", "--runs", "1", *args])
    text = capsys.readouterr().out
    assert code == 0
    assert "compared on 6 images given with --image" in text and "accuracy" not in text
    assert read_metadata(tmp_path / "bare16.onnx").precision == "fp16"


@pytest.mark.parametrize("extra, message", [
    (["--calibration", "BROKEN"], "1 calibration image cannot be read: "),
    (["--keep-float", "many"], "Layers to keep in float: 'auto' or a whole number"),
    (["--calibration", "EMPTY"], "No image files in"),
    (["--data", "NOWHERE"], "no such file or folder"),
])
def test_bad_int8_input_ends_with_one_line_and_writes_nothing(project, tmp_path, capsys, extra, message):
    """In the same process (main.main), to spare a start-up per case."""
    path, _ = project
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    (tmp_path / "empty").mkdir()
    subs = {"BROKEN": str(broken), "EMPTY": str(tmp_path / "empty"), "NOWHERE": str(tmp_path / "nowhere")}
    out = tmp_path / "m.onnx"
    code = main(["export", str(path), "--onnx", str(out), "--precision", "int8", *[subs.get(a, a) for a in extra]])
    stderr = capsys.readouterr().err
    assert code == 1
    errors = [line for line in stderr.splitlines() if line.startswith("graft: error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in stderr, stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["broken.jpg", "empty"]


# -- predict --csv ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_and_tree(tmp_path_factory, small_resnet) -> tuple[Path, Path, list[Path], list[Path]]:
    folder = tmp_path_factory.mktemp("csv")
    onnx_path = folder / "small.onnx"
    export_onnx(small_resnet(HEADS), onnx_path)
    demo = sorted(ensure_demo_data().parent.glob("images/*.jpg"))[:5]
    tree = folder / "tree"
    (tree / "a" / "deep").mkdir(parents=True)
    (tree / "b").mkdir()
    (tree / ".hidden").mkdir()
    good = [tree / "a" / "one.jpg", tree / "a" / "deep" / "two.jpg", tree / "b" / "three.jpg", tree / "b" / "four.jpg"]
    for src, dst in zip(demo, good):
        shutil.copy(src, dst)
    shutil.copy(demo[4], tree / ".hidden" / "skip.jpg")  # hidden folders are not searched
    (tree / "b" / "notes.txt").write_text("not an image, and not an image name: not searched")
    broken = [tree / "a" / "broken.png", tree / "b" / "truncated.jpg"]
    broken[0].write_text("hello")
    broken[1].write_bytes((ensure_demo_data().parent / "images").joinpath(demo[0].name).read_bytes()[:200])
    return onnx_path, tree, good, broken


def test_predict_csv_writes_one_row_per_readable_image_and_lists_the_broken(model_and_tree, tmp_path):
    onnx_path, tree, good, broken = model_and_tree
    out = tmp_path / "predictions.csv"
    result = predict(onnx_path, tree, "--csv", out, "--batch-size", "3")
    assert result.returncode == 1, result.stderr  # some failed
    assert result.stdout == ""
    skipped = [line for line in result.stderr.splitlines() if line.startswith("graft: skipped:")]
    assert sorted(skipped) == sorted(f"graft: skipped: {p}: not a readable image ({why})."
                                     for p, why in zip(broken, ("UnidentifiedImageError", "OSError")))
    assert f"4 images predicted into {out}; 2 unreadable files skipped" in result.stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["image"] for r in rows) == sorted(map(str, good))
    header = list(rows[0])
    assert header == ["image", "shape", "shape:circle", "shape:square", "shape:star", "shape:triangle",
                      "tags", "tags:red", "tags:striped", "tags:outlined", "size:size"]
    expected = OnnxPredictor(onnx_path).predict_files([Path(r["image"]) for r in rows])
    for row, preds in zip(rows, expected):
        assert row["shape"] == preds["shape"].label
        assert np.allclose([float(row[f"shape:{c}"]) for c in HEADS[0].labels], preds["shape"].values, rtol=1e-5)
        assert row["tags"] == ";".join(l for l in HEADS[1].labels if l in preds["tags"].labels)
        assert np.allclose([float(row[f"tags:{c}"]) for c in HEADS[1].labels], preds["tags"].values, rtol=1e-5)
        assert float(row["size:size"]) == pytest.approx(float(preds["size"].values[0]), rel=1e-5)

    only_good = predict(onnx_path, good[0], tree / "a" / "deep", "--csv", tmp_path / "good.csv")
    assert only_good.returncode == 0 and "2 images predicted" in only_good.stderr


def test_predict_csv_refuses_an_unwritable_target_before_predicting(model_and_tree, tmp_path):
    onnx_path, tree, _, _ = model_and_tree
    result = predict(onnx_path, tree, "--csv", tmp_path / "missing" / "out.csv")
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "does not exist" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = predict(onnx_path, empty, "--csv", tmp_path / "out.csv")
    assert result.returncode == 1 and "No image files in" in result.stderr and not (tmp_path / "out.csv").exists()


def test_the_progress_bar_draws_on_a_terminal_only():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, log = Terminal(), io.StringIO()
    for stream in (tty, log):
        bar = ProgressBar(3, stream)
        for done in (1, 2, 3):
            bar.update(done)
        bar.clear()
    assert log.getvalue() == ""
    text = tty.getvalue()
    assert "3/3 images" in text and "100%" in text and "#" * ProgressBar.WIDTH in text
    assert text.endswith("\r\033[K")
