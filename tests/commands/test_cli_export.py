"""``main.py export`` and ``main.py predict``: the same image gives the same prediction everywhere, and
``predict`` never imports torch."""
from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_runner import run_child, run_cli
from engine.network.heads import HeadSpec
from engine.export.inference import predict_files
from engine.export.onnx_export import allowed_diff, max_abs_diff, output_scale
from engine.network.loading import load_network
from engine.surgery.operations import AddHead, DeleteOutputLayer
from engine.project.project_file import open_project, save_project
from engine.surgery.session import Session

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Runs main.py in-process and reports whether torch got imported on the way.
WRAPPER = """
import runpy, sys
sys.argv = [{main!r}] + sys.argv[1:]
code = 0
try:
    runpy.run_path({main!r}, run_name="__main__")
except SystemExit as exc:
    code = exc.code
sys.stderr.write("TORCH_IMPORTED\\n" if "torch" in sys.modules else "")
sys.exit(code)
"""


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # see _one_torch_thread


def graft(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``main.py ARGS`` in this process (cli_runner: as a child gives it, without its 4 s of imports)."""
    return run_cli(*args, timeout=timeout, env=ENV)


def graft_child(*args: str) -> subprocess.CompletedProcess:
    """``main.py ARGS`` in a real process."""
    return run_child(*args, timeout=300, env=ENV)


def predict(*args: str) -> subprocess.CompletedProcess:
    code = WRAPPER.format(main=str(ROOT / "main.py"))
    result = subprocess.run([sys.executable, "-c", code, "predict", *map(str, args)], capture_output=True, text=True,
                            cwd=ROOT, timeout=120, env=ENV)
    assert "TORCH_IMPORTED" not in result.stderr, "main.py predict imported torch"
    return result


def default_session() -> Session:
    return Session(load_network("default"))


def mode_images(folder: Path) -> list[Path]:
    """RGB, RGBA with transparency, grey, grey+alpha, palette (with and without transparency), 16-bit,
    CMYK and 1-bit images at odd sizes; a phone photo stored sideways with an EXIF orientation tag, an
    image under 17 px, a very wide one (2000x50) and a dark 16-bit one."""
    rng = np.random.default_rng(11)
    folder.mkdir(parents=True, exist_ok=True)

    def rgb(h: int, w: int) -> np.ndarray:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx * yy) % 256], -1)
        return np.clip(base + rng.integers(0, 50, (h, w, 3)), 0, 255).astype(np.uint8)

    items: list[tuple[Image.Image, str, dict]] = []
    items.append((Image.fromarray(rgb(101, 37)), "rgb_37x101.png", {}))
    items.append((Image.fromarray(rgb(23, 411)), "rgb_411x23.jpg", {"quality": 92}))
    alpha = np.zeros((61, 53), np.uint8)
    alpha[:, 20:] = np.linspace(0, 255, 33).astype(np.uint8)
    items.append((Image.fromarray(np.dstack([rgb(61, 53), alpha])), "rgba_53x61.png", {}))
    items.append((Image.fromarray(rgb(65, 64)[..., 0]), "grey_64x65.png", {}))
    items.append((Image.fromarray(np.dstack([rgb(80, 33)[..., 1], alpha[:80, :33].repeat(2, 0)[:80]])),
                  "la_33x80.png", {}))
    items.append((Image.fromarray(rgb(80, 50)).quantize(16), "palette_alpha_50x80.png", {"transparency": 3}))
    items.append((Image.fromarray(rgb(45, 45)).quantize(8), "palette_45.png", {}))
    items.append((Image.fromarray(rgb(30, 40)[..., 2].astype(np.uint16) * 257), "deep_40x30.png", {}))
    items.append((Image.fromarray(rgb(43, 41)).convert("CMYK"), "cmyk_41x43.jpg", {}))
    items.append((Image.fromarray(rgb(25, 20)).convert("1"), "bits_20x25.png", {}))
    phone = Image.fromarray(rgb(48, 90))
    exif = phone.getexif()
    exif[0x0112] = 8  # stored rotated: turned 90 degrees back to stand upright
    items.append((phone, "exif_rotated_90x48.jpg", {"exif": exif, "quality": 92}))
    items.append((Image.fromarray(rgb(9, 14)), "tiny_14x9.png", {}))
    items.append((Image.fromarray(rgb(50, 2000)), "wide_2000x50.jpg", {"quality": 90}))
    items.append((Image.fromarray(rgb(31, 26)[..., 0].astype(np.uint16)), "dark16_26x31.png", {}))
    paths = []
    for img, name, kw in items:
        paths.append(folder / name)
        img.save(paths[-1], **kw)
    return paths


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A project with two heads, exported through the CLI with two verification images."""
    folder = tmp_path_factory.mktemp("cli")
    session = default_session()
    session.do(DeleteOutputLayer())
    session.do(AddHead(HeadSpec("species", labels=["cat", "dog", "bird", "fish"]), seed=5))
    session.do(AddHead(HeadSpec("tags", kind="multi", labels=["sunny", "indoor", "blurry"], hidden=[16],
                                dropout=0.25), seed=6))
    project = save_project(session, folder / "pets.graft")
    images = mode_images(folder / "images")
    onnx_path = folder / "pets.onnx"
    result = graft("export", project, "--onnx", onnx_path, "--image", images[0], "--image", images[2])
    assert result.returncode == 0, result.stderr
    return session, project, onnx_path, images, result.stdout


@pytest.mark.slow
def test_export_prints_time_differences_and_size(exported):
    _, _, onnx_path, _, stdout = exported
    assert onnx_path.is_file()
    first = stdout.splitlines()[0]
    assert first.startswith(f"exported {onnx_path}") and " MB, opset 18" in first and " s" in first
    rows = {line.split()[0]: line for line in stdout.splitlines() if line.startswith("  ")}
    assert set(rows) == {"species", "tags"}
    for row in rows.values():
        diffs = [float(v) for v in row.split()[2::2]]  # "species  random 1.2e-06  images 3.4e-07"
        assert len(diffs) == 2 and max(diffs) <= TOL
    assert "2 images" in stdout


def test_predict_prints_class_names_without_importing_torch(exported):
    _, _, onnx_path, images, _ = exported
    result = predict(onnx_path, images[0], images[3])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == str(images[0]) and lines[3] == str(images[3])
    species = lines[1].strip()
    assert species.startswith("species: ") and species.split()[1] in ("cat", "dog", "bird", "fish")
    assert lines[2].strip().startswith("tags: ")


@pytest.mark.slow
def test_the_same_image_gives_the_same_prediction_everywhere(exported):
    session, project, onnx_path, images, _ = exported
    result = predict(onnx_path, "--json", *images)
    assert result.returncode == 0, result.stderr
    from_onnx = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["image"]).name for r in from_onnx] == [p.name for p in images]
    reopened = open_project(project)
    for ours in (predict_files(session, images), predict_files(reopened, images)):
        worst = 0.0
        for theirs, mine in zip(from_onnx, ours):
            for head, pred in mine.items():
                values = theirs["outputs"][head]["values"]
                assert list(values) == pred.names
                worst = max(worst, float(np.abs(np.array(list(values.values())) - pred.values).max()))
                if pred.kind == "single" and pred.score - sorted(pred.values)[-2] > 1e-3:
                    assert theirs["outputs"][head]["label"] == pred.label
        assert worst <= TOL, f"{worst} between predict and predict_files"


def test_bad_files_end_with_one_line(exported, tmp_path):
    _, _, onnx_path, images, _ = exported
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_text("hello")
    not_image = tmp_path / "photo.jpg"
    not_image.write_bytes(b"\x00\x01garbage")
    for args, message in [((not_onnx, images[0]), "not an ONNX model"),
                          ((onnx_path, not_image), "photo.jpg: not a readable image"),
                          ((onnx_path, tmp_path / "missing.png"), "missing.png: no such file"),
                          ((tmp_path / "none.onnx", images[0]), "none.onnx: no such file"),
                          ((tmp_path, images[0]), f"{tmp_path}: a folder, not a file")]:
        result = predict(*args)
        assert result.returncode == 1, result.stdout
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_one_bad_image_does_not_lose_the_good_ones(exported, tmp_path):
    _, _, onnx_path, images, _ = exported
    bad = tmp_path / "NOT_AN_IMAGE"
    bad.write_text("hello")
    result = predict(onnx_path, images[0], bad, tmp_path / "gone.png", images[3])
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == str(images[0]) and lines[3] == str(images[3]) and len(lines) == 6
    assert lines[1].strip().startswith("species: ") and lines[4].strip().startswith("species: ")
    errors = result.stderr.splitlines()
    assert len(errors) == 2 and "Traceback" not in result.stderr
    assert errors[0] == f"graft: error: {bad}: not a readable image (UnidentifiedImageError)."
    assert errors[1] == f"graft: error: {tmp_path / 'gone.png'}: no such file."
    as_json = predict(onnx_path, "--json", bad, images[1])
    assert as_json.returncode == 1 and as_json.stderr.count("\n") == 1
    assert [json.loads(line)["image"] for line in as_json.stdout.splitlines()] == [str(images[1])]


@pytest.mark.slow
def test_export_verifies_on_the_training_images_by_default(exported, tmp_path):
    session, _, _, images, _ = exported
    data = tmp_path / "photos"
    for i, path in enumerate(images[:6]):
        (data / ("cat", "dog")[i % 2]).mkdir(parents=True, exist_ok=True)
        (data / ("cat", "dog")[i % 2] / path.name).write_bytes(path.read_bytes())
    project = save_project(session, tmp_path / "trained.graft", extra={"training": {"data": str(data)}})
    result = graft("export", project, "--onnx", tmp_path / "trained.onnx")
    assert result.returncode == 0, result.stderr
    assert "a random batch of 3 and 4 images" in result.stdout
    assert f"verification images: 4 from its training data {data}" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("  ")]
    assert len(rows) == 2 and all("images" in row for row in rows)


@pytest.mark.slow
def test_export_without_real_images_says_so(exported, tmp_path):
    _, project, _, _, _ = exported  # a project that records no training data
    result = graft("export", project, "--onnx", tmp_path / "random.onnx")
    assert result.returncode == 0, result.stderr
    assert not re.search(r"and \d+ images?", result.stdout)  # verified on no image
    assert ("note: only random inputs were checked, no real images: the project does not record the data it "
            "was trained on. Add --image IMG (repeatable) to verify on real pictures too.") in result.stdout


@pytest.mark.parametrize("opset", ["30", "12"])
@pytest.mark.slow
def test_an_unsupported_opset_ends_with_one_line(exported, tmp_path, opset):
    _, project, _, _, _ = exported
    result = graft("export", project, "--onnx", tmp_path / "x.onnx", "--opset", opset)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert f"ONNX opset {opset} is not supported: choose one from 13 to" in result.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("tolerance", ["-1", "nan", "inf"])
@pytest.mark.slow
def test_a_meaningless_tolerance_ends_with_one_line_before_exporting(exported, tmp_path, tolerance):
    _, project, _, _, _ = exported
    result = graft("export", project, "--onnx", tmp_path / "x.onnx", "--tolerance", tolerance)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "The tolerance must be a number of at least 0" in result.stderr
    assert os.listdir(tmp_path) == []


def test_negative_predict_threads_end_with_one_line(exported):
    _, _, onnx_path, images, _ = exported
    result = predict(onnx_path, images[0], "--threads", "-1")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "number of threads" in result.stderr, result.stderr


def test_a_torchvision_export_predicts_the_same_through_main_py(tmp_path):
    import torch

    from engine.export.onnx_export import export_onnx

    torch.manual_seed(0)
    network = load_network("mobilenet_v3_small", random_init=True)
    bns = [m for m in network.module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:  # random-init statistics make the outputs vanish: set them from one random batch
        m.reset_running_stats()
        m.momentum = None
    network.module.train()
    with torch.no_grad():
        network.module(torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    network.module.eval()
    session = Session(network)
    session.do(DeleteOutputLayer())
    session.do(AddHead(HeadSpec("species", labels=["cat", "dog", "bird"]), seed=2))
    session.do(AddHead(HeadSpec("size", kind="regression", labels=["w", "h"]), seed=3))
    images = mode_images(tmp_path / "images")
    report = export_onnx(session, tmp_path / "mobilenet.onnx", images=images[:3])
    assert report.max_diff <= TOL
    result = predict(tmp_path / "mobilenet.onnx", "--json", *images)
    assert result.returncode == 0, result.stderr
    from_onnx = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in from_onnx] == [str(p) for p in images]
    spread = 0.0
    for theirs, mine in zip(from_onnx, predict_files(session, images)):
        for head, pred in mine.items():
            values = np.array(list(theirs["outputs"][head]["values"].values()))
            # within 1e-4, relative beyond ±1 as the export's own verification (float32 rounding)
            assert max_abs_diff(pred.values, values) <= allowed_diff(TOL, output_scale(pred.values)), \
                (theirs["image"], head)
        spread = max(spread, float(np.ptp(mine["size"].values)))
    assert spread > 1e-3, "the outputs must not be trivially equal"


@pytest.mark.slow
def test_export_to_a_missing_folder_ends_with_one_line(exported, tmp_path):
    """In a real process: one line, with nothing of the interpreter's after it."""
    _, project, _, _, _ = exported
    result = graft_child("export", project, "--onnx", tmp_path / "no" / "such" / "x.onnx")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "does not exist" in result.stderr
    assert not (tmp_path / "no").exists()
