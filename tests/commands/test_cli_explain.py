"""``main.py explain`` and ``main.py evaluate --errors / --report / --suggestions`` (in-process, main.main)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import main
from engine.data.loading import load_data
from engine.network.heads import HeadSpec
from engine.network.loading import load_network
from engine.network.preprocess import InputSpec
from engine.project.project_file import save_project
from engine.surgery.operations import AddHead, DeleteOutputLayer, freeze_preset
from engine.surgery.session import Session


@pytest.fixture(scope="module")
def demo_csv(demo_manifest) -> Path:
    return demo_manifest()


@pytest.fixture(scope="module")
def project(demo_csv, tmp_path_factory) -> Path:
    """The demo's three heads (shape, tags, size) on a random-weights mobilenet at 64 px."""
    torch.manual_seed(0)
    session = Session(load_network("mobilenet_v3_small", random_init=True))
    session.model.input_spec = InputSpec(size=64, resize=64)
    session.do(DeleteOutputLayer())
    for spec in load_data(demo_csv).heads:
        session.do(AddHead(spec, seed=0))
    session.do(freeze_preset("heads-only"))
    return save_project(session, tmp_path_factory.mktemp("project") / "demo.graft")


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    yield


def images(demo_csv: Path, n: int) -> list[str]:
    return [str(p) for p in sorted((demo_csv.parent / "images").iterdir())[:n]]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("graft: error: "), err
    return err[0]


def test_explain_writes_every_head_per_image(project, demo_csv, tmp_path, capsys):
    pictures = images(demo_csv, 2)
    out = tmp_path / "maps"
    assert main.main(["explain", str(project), *pictures, "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    stems = [Path(p).stem for p in pictures]
    assert names == sorted(f"{s}.{h}.{ext}" for s in stems for h in ("shape", "tags", "size") for ext in ("png", "npy"))
    for name in names:
        if name.endswith(".npy"):
            values = np.load(out / name)
            assert values.dtype == np.float32 and values.shape == (64, 64)
            assert values.min() >= 0 and values.max() <= 1
        else:
            assert Image.open(out / name).size == (64, 64)
    assert "shape: evidence for" in capsys.readouterr().out


def test_explain_one_head_and_class(project, demo_csv, tmp_path, capsys):
    out = tmp_path / "star"
    assert main.main(["explain", str(project), images(demo_csv, 1)[0], "--head", "shape", "--class", "star",
                      "--layer", "features.8", "--out", str(out)]) == 0
    assert sorted(p.suffix for p in out.iterdir()) == [".npy", ".png"]
    out_text = capsys.readouterr().out
    assert "shape: evidence for 'star'" in out_text and "at features.8" in out_text


@pytest.mark.parametrize("args, message", [
    (["--layer", "avgpool"], "'avgpool' has no spatial output"),
    (["--layer", "nowhere"], "no layer 'nowhere'"),
    (["--class", "dog"], "No head has a class, label or target 'dog'"),
    (["--head", "shape", "--class", "red"], "Head 'shape' has no class 'red'"),
    (["--head", "colour"], "no head 'colour'"),
])
def test_explain_bad_arguments_exit_with_one_line(project, demo_csv, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main.main(["explain", str(project), images(demo_csv, 1)[0], *args, "--out", str(out)]) == 1
    assert message in one_error_line(capsys)
    assert not out.exists()  # refused before anything was written


def test_explain_an_unreadable_image_is_one_line_and_the_others_are_done(project, demo_csv, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    good = images(demo_csv, 1)[0]
    out = tmp_path / "out"
    assert main.main(["explain", str(project), str(broken), good, "--head", "size", "--out", str(out)]) == 1
    assert "broken.jpg: not a readable image" in one_error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == [f"{Path(good).stem}.size.npy", f"{Path(good).stem}.size.png"]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_explain_a_torchscript_project(tmp_path, demo_csv, capsys):
    path = tmp_path / "net.pt"
    torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                   nn.Flatten())).save(str(path))
    network = load_network(str(path))
    network.input_spec = InputSpec(size=32, resize=32)
    session = Session(network)
    session.do(AddHead(HeadSpec("kind", labels=["a", "b"]), seed=0))
    saved = save_project(session, tmp_path / "ts.graft")
    assert main.main(["explain", str(saved), images(demo_csv, 1)[0], "--out", str(tmp_path / "o")]) == 1
    assert "TorchScript: its layers cannot be hooked" in one_error_line(capsys)


def test_evaluate_writes_errors_report_and_suggestions(project, demo_csv, tmp_path, capsys):
    before = demo_csv.read_bytes()
    errors, report, suggestions = tmp_path / "errors.csv", tmp_path / "report.html", tmp_path / "suggest.csv"
    code = main.main(["evaluate", str(project), "--data", str(demo_csv), "--split", "val", "--workers", "0",
                      "--errors", str(errors), "--report", str(report), "--suggestions", str(suggestions)])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = list(csv.reader(errors.open(encoding="utf-8")))
    assert rows[0] == ["image", "head", "truth", "prediction", "confidence", "loss"] and len(rows) > 1
    losses = [float(r[5]) for r in rows[1:]]
    assert losses == sorted(losses, reverse=True) and {r[1] for r in rows[1:]} <= {"shape", "tags", "size"}
    assert all(r[0].startswith("images/") for r in rows[1:])
    html = report.read_text(encoding="utf-8")
    for head in ("shape", "tags", "size"):
        assert f"data-head='{head}'" in html
    assert "Label audit" in html and "data:image/jpeg;base64," in html
    audit = list(csv.DictReader(suggestions.open(encoding="utf-8")))
    assert audit and {r["reason"] for r in audit} <= {"contradicted", "blank"}
    assert f"Wrote the report to {report}" in out
    assert demo_csv.read_bytes() == before


def test_evaluate_never_writes_over_the_data(project, demo_csv, capsys):
    before = demo_csv.read_bytes()
    code = main.main(["evaluate", str(project), "--data", str(demo_csv), "--suggestions", str(demo_csv)])
    assert code == 1 and "never changes the user's data" in one_error_line(capsys)
    assert demo_csv.read_bytes() == before
