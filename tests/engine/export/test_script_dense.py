"""The training script of a project with segment and detect heads (beside a single-label head): it carries
Graft's dense heads, reads masks and boxes as Graft reads them (CSV columns, masks/ and labels/ beside an image
folder, a COCO file), and a blank mask or boxes cell never reaches a loss. (That it trains as Graft trains, in a
process without Graft: tests/commands/test_cli_script.py.)"""
from __future__ import annotations

import csv
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data.demo_data import ensure_demo_data, load_recipe
from engine.data.loading import load_data
from engine.export.script import training_script, write_training_script
from engine.network.heads import HeadSpec
from engine.surgery.operations import freeze_preset
from engine.surgery.session import Session
from test_script import undefined_names

LAYERS = ["layer2", "layer3", "layer4"]  # resnet18 at 64 px: 8x8, 4x4, 2x2 maps
HEADS = [HeadSpec("shape", "single", columns=["shape"]),
         HeadSpec("seg", "segment", columns=["mask"], layers=LAYERS, hidden=[32], dice=0.5),
         HeadSpec("boxes", "detect", columns=["boxes"], layers=LAYERS, hidden=[32], score_threshold=0.2)]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def script_module(session: Session, path: Path) -> dict:
    """The script's module (its functions, HEADS …), run in this process under another name than __main__."""
    write_training_script(session, path, "dense.graft")
    return runpy.run_path(str(path), run_name="not_main")


@pytest.fixture(scope="module")
def project(tmp_path_factory, small_resnet):
    """16 demo images (about a third without a mask, a third without boxes), the three heads on resnet18 at
    64 px, and the script's module."""
    root = tmp_path_factory.mktemp("dense_script")
    manifest = ensure_demo_data(root / "data", recipe={**load_recipe(), "count": 16})
    data = load_data(manifest, HEADS, seed=0)
    session = small_resnet(data.heads)
    session.do(freeze_preset("heads-only"))
    return session, data, manifest, script_module(session, root / "train_model.py")


def by_path(samples) -> dict[str, dict]:
    return {str(s.path): dict(s.targets) for s in samples}


def test_the_script_carries_the_dense_heads_and_rebuilds_them(project):
    session, data, _, module = project
    text = training_script(session, "dense.graft")
    assert undefined_names(text) == set()
    assert "layers=['layer2', 'layer3', 'layer4'], dice=0.5)" in text and "score_threshold=0.2)" in text
    assert "class DetectHead(DenseHead)" in text and "from engine" not in text and "import engine" not in text
    model = module["build_model"](None, 0)
    assert model.trunk.map_taps == session.model.trunk.map_taps
    for name in ("seg", "boxes"):  # seeded as the project's: the same starting weights
        ours, theirs = model.heads[name].state_dict(), session.model.heads[name].state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    model.load_state_dict(session.model.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    session.model.eval()
    with torch.no_grad():
        ours, theirs = model.eval()(x), session.model(x)
    assert ours["seg"].shape == (2, 5, 64, 64) and ours["boxes"].shape[2] == 4 + 5
    for name in ("shape", "seg", "boxes"):
        assert torch.allclose(ours[name], theirs[name], atol=1e-5)


def test_a_classification_script_carries_no_dense_code(small_resnet):
    session = small_resnet([HeadSpec("shape", labels=["a", "b"], columns=["shape"])])
    text = training_script(session)
    assert undefined_names(text) == set()
    assert "torchmetrics" not in text and "DenseItem" not in text and "# <dense>" not in text
    assert "\n\n\n\n" not in text


def test_the_script_reads_masks_and_boxes_of_a_manifest_as_graft_does(project):
    _, data, manifest, module = project
    train, val, skipped = module["load_data"](manifest, 0.2, 0)
    assert [s.path for s in train] == [s.path for s in data.train]
    assert [s.path for s in val] == [s.path for s in data.val]
    assert by_path(train + val) == by_path(data.samples) and not skipped


def test_the_script_reads_masks_and_labels_beside_an_image_folder(project, tmp_path):
    """root/<shape>/<image>, masks/<shape>/<image>.png, labels/<shape>/<image>.txt (YOLO), from the demo."""
    _, data, manifest, module = project
    root = tmp_path / "folder"
    names = data.head("boxes").labels
    for row in csv.DictReader(manifest.open(encoding="utf-8")):
        if not row["shape"]:
            continue
        image = manifest.parent / row["image"]
        stem = Path(row["image"]).stem
        (root / row["shape"]).mkdir(parents=True, exist_ok=True)
        (root / row["shape"] / image.name).write_bytes(image.read_bytes())
        if row["mask"]:
            (root / "masks" / row["shape"]).mkdir(parents=True, exist_ok=True)
            (root / "masks" / row["shape"] / f"{stem}.png").write_bytes((manifest.parent / row["mask"]).read_bytes())
        if row["boxes"]:
            w, h = Image.open(image).size
            lines = [f"{names.index(c)} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}"
                     for x1, y1, x2, y2, c in json.loads(row["boxes"])]
            (root / "labels" / row["shape"]).mkdir(parents=True, exist_ok=True)
            (root / "labels" / row["shape"] / f"{stem}.txt").write_text("\n".join(lines))
    theirs = load_data(root, [HeadSpec("shape", "single", labels=data.head("shape").labels), *data.heads[1:]], seed=0)
    train, val, _ = module["load_data"](root, 0.2, 0)
    assert [s.path for s in train + val] == [s.path for s in theirs.samples]
    assert by_path(train + val) == by_path(theirs.samples)
    assert any("boxes" in s.targets for s in train) and any("seg" in s.targets for s in train)


def test_the_script_reads_a_coco_file_for_a_detect_head(project, tmp_path, small_resnet):
    _, data, manifest, _ = project
    names = data.head("boxes").labels
    images, annotations = [], []
    for i, row in enumerate(r for r in csv.DictReader(manifest.open(encoding="utf-8")) if r["boxes"]):
        images.append({"id": i, "file_name": str(manifest.parent / row["image"])})
        for x1, y1, x2, y2, c in json.loads(row["boxes"]):
            annotations.append({"id": len(annotations), "image_id": i, "category_id": names.index(c) + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1]})
    coco = tmp_path / "instances.json"
    coco.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names)]}))
    theirs = load_data(coco, [data.head("boxes")], seed=0)
    module = script_module(small_resnet(theirs.heads), tmp_path / "train_model.py")
    train, val, _ = module["load_data"](coco, 0.2, 0)
    assert [s.path for s in train] == [s.path for s in theirs.train] and by_path(train + val) == by_path(theirs.samples)
    with pytest.raises(module["GraftError"], match="categories are"):
        module["HEADS"][0].labels = list(reversed(names))
        module["load_data"](coco, 0.2, 0)


def batch(module: dict, samples) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    items = [module["ImageSet"](samples, False)[i] for i in range(len(samples))]
    return torch.stack([x for x, _ in items]), {k: torch.stack([t[k] for _, t in items]) for k in items[0][1]}


def test_a_blank_mask_or_boxes_cell_never_reaches_the_loss(project):
    """Images whose mask (boxes) cell is blank get a mask of the ignore value (rows of NaN): alone they give a
    segment (detect) loss of 0 / 0 and no gradient; beside labelled images they change nothing of the loss."""
    _, _, manifest, module = project
    train, val, _ = module["load_data"](manifest, 0.2, 0)
    samples = train + val
    cells = {Path(r["image"]).name: r for r in csv.DictReader(manifest.open(encoding="utf-8"))}
    model = module["build_model"](None, 0).eval()  # (the segment decoder's BatchNorm: per image, as validation)
    specs = {h.name: h for h in module["HEADS"]}
    for name, column in (("seg", "mask"), ("boxes", "boxes")):
        blank = [s for s in samples if name not in s.targets]
        labelled = [s for s in samples if name in s.targets][:3]
        assert blank and labelled and all(cells[s.path.name][column] == "" for s in blank)
        assert all(cells[s.path.name][column] for s in labelled)
        images, targets = batch(module, blank[:3])
        if name == "seg":
            assert (targets[name] == 255).all()
        else:
            assert torch.isnan(targets[name]).all()
        model.zero_grad(set_to_none=True)
        out = model(images)
        scale = model.heads[name] if name == "boxes" else None
        num, den = module["loss_terms"](specs[name], out[name], targets[name], scale)
        assert float(num.detach()) == 0 and float(den) == 0
        (num / den.clamp(min=1)).backward()
        assert all(p.grad is None or not p.grad.any() for p in model.heads[name].parameters())

        def loss(group):
            images, targets = batch(module, group)
            with torch.no_grad():
                out = model(images)
            num, den = module["loss_terms"](specs[name], out[name], targets[name], scale)
            return float(num), float(den)

        alone, mixed = loss(labelled), loss([blank[0], *labelled, *blank[1:3]])
        assert alone[1] > 0 and alone[0] > 0 and np.isfinite(alone[0])
        assert mixed == pytest.approx(alone, rel=1e-5)


def test_without_torchmetrics_the_script_leaves_out_the_dense_metrics(project, monkeypatch, capsys):
    """torchmetrics is the one thing a dense script needs beyond torch, torchvision, NumPy and Pillow, for the
    metrics only: without it the note says so once per head and the heads train without mIoU and mAP."""
    _, _, _, module = project
    for name in ("torchmetrics", "torchmetrics.classification", "torchmetrics.detection"):
        monkeypatch.setitem(sys.modules, name, None)
    module["MISSING_METRICS"].clear()
    model = module["build_model"](None, 0)
    assert module["dense_metrics"](model.heads) == {} and module["dense_metrics"](model.heads) == {}
    said = capsys.readouterr().out
    assert said.count("No mIoU for head 'seg'") == 1 and said.count("No mAP for head 'boxes'") == 1
    tally = module["Tally"](model.heads)
    assert tally.metrics()["seg"] == {} and tally.metrics()["boxes"] == {}
