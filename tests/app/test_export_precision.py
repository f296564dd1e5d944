"""File ▸ Export ONNX in fp16/int8 (the precision dialog, the table against fp32, keeping layers in float)
and File ▸ Export training script, driven through the window on a small random resnet18 (64 px)."""
from __future__ import annotations

import ast
import py_compile
from dataclasses import replace
from pathlib import Path

import pytest
from PySide6.QtWidgets import QFileDialog

import app.export
from engine.export.metadata import read_metadata
from engine.export.precision import DYNAMIC_METHOD
from engine.surgery.operations import AddHead
from engine.units import human_bytes
from test_main_window import LOAD_TIMEOUT, load_data
from widgets.precision_dialogs import PrecisionDialog

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def few_timed_runs(monkeypatch):
    monkeypatch.setattr(app.export, "TIMED_RUNS", 2)


def with_session(window, small_resnet, heads=()):
    session = small_resnet([])
    window.workspace.set_session(session, project_path=None)
    for spec in heads:
        window.surgery.apply_op(AddHead(spec, seed=0))
    return session


def ready(qtbot, window, small_resnet, csv_path):
    """A random resnet18 with the data's shape and tags heads, the data loaded."""
    data = load_data(qtbot, window, csv_path)
    session = with_session(window, small_resnet, data.heads[:2])
    assert [h.kind for h in session.heads] == ["single", "multi"]
    return session, data


def save_as(monkeypatch, path: Path, chosen: str) -> None:
    """The next save dialog answers ``path`` with the file type ``chosen``; later ones are cancelled (the
    window asks where to save the project when it closes)."""
    answers = [(str(path), chosen)]
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: answers.pop() if answers else ("", "")))


def answer_precision(monkeypatch, **choose):
    """The precision dialog accepts itself, after ``choose(...)`` when given; returns the dialogs seen."""
    seen = []

    def exec_(self):
        seen.append(self)
        if choose:
            self.choose(**choose)
        self.accept()
        return self.result()

    monkeypatch.setattr(PrecisionDialog, "exec", exec_)
    return seen


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.slow
def test_int8_from_the_window_writes_an_int8_file_and_shows_the_table_for_every_head(
        qtbot, window, monkeypatch, boxes, small_resnet, small_csv, tmp_path):
    session, data = ready(qtbot, window, small_resnet, small_csv)
    path = tmp_path / "small.onnx"
    save_as(monkeypatch, path, app.export.PRECISION_FILTERS["int8"])
    seen = answer_precision(monkeypatch)
    with qtbot.waitSignal(window.exported, timeout=LOAD_TIMEOUT) as exported:
        window.actions.export_onnx.trigger()
    dialog = seen[0]
    assert dialog.precision() == "int8" and dialog.calibration() == "data"  # the loaded data comes first
    assert not dialog.source_buttons["recorded"].isEnabled()  # nothing recorded: greyed out, saying why
    report = exported.args[0]
    meta = read_metadata(path)
    assert meta.precision == "int8" and meta.data["reduced"]["calibration_images"] == len(data.train)
    assert meta.data["reduced"]["quantized_layers"] > 10
    shown = window.export.report_dialog
    assert shown.isVisible() and "int8" in shown.windowTitle()
    table = shown.table.toPlainText()
    assert table == report.table()
    for head in session.heads:
        assert f"{head.name}: largest difference" in table
    assert "shape: top-1 agreement" in table and "tags: per-label agreement" in table
    assert f"compared on {len(data.val)} images from the validation split of {small_csv.name}" in table
    assert human_bytes(path.stat().st_size) in table.splitlines()[2]  # the file size row, int8 column
    metrics = shown.table.fontMetrics()  # fixed width: the columns line up
    assert metrics.horizontalAdvance("i" * 12) == metrics.horizontalAdvance("M" * 12) == metrics.horizontalAdvance("%" * 12)
    summary = shown.summary.text()
    assert summary.startswith(f"Exported {path.name}: int8, {human_bytes(path.stat().st_size)}")
    assert f"calibrated on {len(data.train)} training images" in summary
    assert window.settings.value("export/precision") == "int8"
    assert leftovers(tmp_path) == ["small.onnx"]  # no temporary or reference file beside it


@pytest.mark.slow
def test_a_head_that_loses_accuracy_offers_to_keep_layers_in_float(qtbot, window, monkeypatch, boxes,
                                                                   small_resnet, small_csv, tmp_path):
    import engine.export.precision as precision

    ready(qtbot, window, small_resnet, small_csv)
    calls = []
    real = precision.export_precision

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(precision, "export_precision", spy)
    # The random network's int8 file may keep every answer; the first export is told it lost 3 points.
    monkeypatch.setattr(precision.PrecisionReport, "losses",
                        property(lambda self: [("shape", 3.0)] if len(calls) == 1 else []))
    path = tmp_path / "m.onnx"
    answer_precision(monkeypatch)
    with qtbot.waitSignal(window.exported, timeout=LOAD_TIMEOUT):
        window.export.export_reduced_dialog(str(path), "int8")
    shown = window.export.report_dialog
    assert shown.warning.isVisible() and "3.0 points of accuracy on head 'shape'" in shown.warning.text()
    assert shown.keep_float.isVisible() and shown.keep_float.isEnabled()
    assert calls[0]["keep_float"] is None
    with qtbot.waitSignal(window.exported, timeout=LOAD_TIMEOUT) as exported:
        shown.keep_float.click()
        assert not shown.keep_float.isEnabled()  # once is enough while it runs
    assert len(calls) == 2 and calls[1]["keep_float"] == "auto"
    assert calls[1]["calibration"] == calls[0]["calibration"] and calls[1]["images"] == calls[0]["images"]
    assert exported.args[0].path == path and read_metadata(path).precision == "int8"
    assert not shown.warning.isVisible() and not shown.keep_float.isVisible()  # the new report lost nothing


def test_fp32_chosen_in_the_save_dialog_exports_as_before(qtbot, window, monkeypatch, boxes, small_resnet,
                                                          tmp_path):
    from engine.network.heads import HeadSpec

    with_session(window, small_resnet, [HeadSpec("shape", labels=["a", "b"])])
    path = tmp_path / "plain.onnx"
    save_as(monkeypatch, path, app.export.PRECISION_FILTERS["fp32"])
    seen = answer_precision(monkeypatch)
    with qtbot.waitSignal(window.exported, timeout=LOAD_TIMEOUT):
        window.actions.export_onnx.trigger()
    assert not seen and read_metadata(path).precision == "fp32"  # no precision dialog for fp32
    assert "plain.onnx" in boxes.texts("information")[-1] and window.export.report_dialog is None


def test_bad_input_gives_a_message_and_writes_nothing(qtbot, window, monkeypatch, boxes, small_resnet, small_csv,
                                                      tmp_path):
    from engine.network.heads import HeadSpec

    with_session(window, small_resnet, [HeadSpec("shape", labels=["a", "b"])])
    if Path("/proc/self").is_dir():  # a folder nobody, not even root, can create files in
        window.export.export_reduced("/proc/graft-test.onnx", "int8")
        assert "Cannot write to /proc" in boxes.texts("warning")[-1] and not window.jobs.busy

    # A folder of calibration images with one that cannot be read.
    folder = tmp_path / "calibration"
    folder.mkdir()
    for image in read_rows(small_csv)[:2]:
        (folder / Path(image).name).write_bytes(Path(image).read_bytes())
    (folder / "a.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    out.mkdir()
    answer_precision(monkeypatch, precision="int8", calibration="folder", folder=str(folder))
    with qtbot.waitSignal(window.errorShown, timeout=LOAD_TIMEOUT) as shown:
        window.export.export_reduced_dialog(str(out / "m.onnx"), "int8")
    assert "1 calibration image cannot be read" in shown.args[0] and "a.png" in shown.args[0], shown.args[0]
    assert "Nothing was written" in shown.args[0] and leftovers(out) == []

    # No calibration images: dynamic quantization of the linear layers, said in the summary.
    answer_precision(monkeypatch, precision="int8", calibration="none")
    with qtbot.waitSignal(window.exported, timeout=LOAD_TIMEOUT) as exported:
        window.export.export_reduced_dialog(str(out / "m.onnx"), "int8")
    assert exported.args[0].reduction.method == DYNAMIC_METHOD
    assert read_metadata(out / "m.onnx").data["reduced"]["method"] == DYNAMIC_METHOD
    assert "no calibration images" in window.export.report_dialog.summary.text().lower()
    assert "not compared with fp32" in window.export.report_dialog.table.toPlainText()  # no images, no table
    assert "Traceback" not in " ".join(boxes.texts())


def test_a_model_whose_layers_do_not_quantize_is_refused_and_leaves_nothing(qtbot, window, monkeypatch, boxes,
                                                                            small_csv, tmp_path):
    """A network of pooling only: nothing int8 could quantize."""
    import warnings

    import torch

    from engine.network.loading import load_network
    from engine.network.preprocess import InputSpec
    from engine.surgery.session import Session

    class Pool(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)

    scripted = tmp_path / "pool.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(Pool()).save(str(scripted))
    session = Session(load_network(str(scripted)))
    session.model.input_spec = InputSpec(size=32, resize=36)
    window.workspace.set_session(session, project_path=None)
    load_data(qtbot, window, small_csv)
    out = tmp_path / "out"
    out.mkdir()
    answer_precision(monkeypatch, precision="int8", calibration="data")
    with qtbot.waitSignal(window.errorShown, timeout=LOAD_TIMEOUT) as shown:
        window.export.export_reduced_dialog(str(out / "pool.onnx"), "int8")
    assert "None of the model's layers can be quantized to int8" in shown.args[0] and leftovers(out) == []
    assert "Traceback" not in " ".join(boxes.texts())


def read_rows(csv_path: Path) -> list[str]:
    import csv

    rows = list(csv.DictReader(csv_path.open(newline="")))
    return [row["image"] for row in rows]


def test_the_training_script_compiles_and_names_no_graft_import(qtbot, window, monkeypatch, boxes, small_resnet,
                                                                tmp_path):
    from engine.network.heads import HeadSpec

    session = with_session(window, small_resnet, [HeadSpec("shape", labels=["a", "b"])])
    assert window.actions.export_script.isEnabled()
    path = tmp_path / "train_model.py"
    save_as(monkeypatch, path, "")
    with qtbot.waitSignal(window.export.script_written, timeout=LOAD_TIMEOUT):
        window.actions.export_script.trigger()
    py_compile.compile(str(path), doraise=True)
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported and not imported & {"graft", "engine", "app", "widgets", "commands"}, imported
    assert imported <= {"torch", "torchvision", "numpy", "PIL", "argparse", "csv", "json", "math", "os", "random",
                        "sys", "time", "pathlib", "collections", "dataclasses", "typing", "__future__", "io",
                        "warnings", "itertools", "functools", "hashlib", "re", "struct", "copy"}, imported
    text = boxes.texts("information")[-1]
    assert "python train_model.py --data PATH --epochs N --out DIR" in text and str(path) in text

    # What the script cannot rebuild: a TorchScript model; said plainly, nothing written.
    session.source = replace(session.source, kind="file", name=str(tmp_path / "m.pt"), format="torchscript")
    other = tmp_path / "other.py"
    with qtbot.waitSignal(window.errorShown, timeout=LOAD_TIMEOUT) as shown:
        window.export.export_script(str(other))
    assert "TorchScript model" in shown.args[0] and not other.exists()
    window.export.export_script(str(tmp_path / "no" / "such" / "s.py"))
    assert "does not exist" in boxes.texts("warning")[-1]


@pytest.mark.slow
def test_fp16_with_a_head_the_data_lacks_is_compared_by_agreement(qtbot, window, monkeypatch, boxes, small_resnet,
                                                                  small_csv, tmp_path):
    from engine.network.heads import HeadSpec

    data = load_data(qtbot, window, small_csv)
    with_session(window, small_resnet, [data.heads[0], HeadSpec("colour", labels=["light", "dark"])])
    path = tmp_path / "half.onnx"
    save_as(monkeypatch, path, app.export.PRECISION_FILTERS["fp16"])
    seen = answer_precision(monkeypatch)
    with qtbot.waitSignal(window.exported, timeout=LOAD_TIMEOUT):
        window.actions.export_onnx.trigger()
    assert seen[0].precision() == "fp16" and not seen[0].calibration_box.isEnabled()  # int8's choice only
    assert read_metadata(path).precision == "fp16"
    table = window.export.report_dialog.table.toPlainText()
    assert f"compared on {len(data.val)} images from the validation split of {small_csv.name} (agreement only" in table
    assert "colour: top-1 agreement" in table and "shape: top-1 agreement" in table and "accuracy" not in table
