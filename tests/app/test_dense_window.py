"""Dense heads through the window: the head dialog offers feature-map layers and the default ones, "Add head
here" ticks the layer for a segment head, and the demo task grafts a classification, a segmentation and a
box head in one undoable step once the model and the data are in."""
from __future__ import annotations

from types import SimpleNamespace

from engine.network.heads import HeadSpec
from engine.surgery.operations import DeleteOutputLayer
from tests.app.test_main_window import LOAD_TIMEOUT, give_session, load_data
from tests.app.test_surgery_anywhere import accept, context_action

SUGGESTED = [HeadSpec("shape", "single", labels=["circle", "square"], columns=["shape"]),
             HeadSpec("tags", "multi", labels=["red", "striped"], columns=["red", "striped"]),
             HeadSpec("seg", "segment", labels=["background", "circle", "square"], columns=["mask"]),
             HeadSpec("boxes", "detect", labels=["circle", "square"], columns=["boxes"])]


def test_add_a_segment_head_here_reads_that_layers_map(qtbot, window, monkeypatch, default_network):
    from widgets.head_dialog import HeadDialog

    s = give_session(window, default_network)
    window.surgery.apply_op(DeleteOutputLayer())

    def choose(d):
        d.kind_combo.setCurrentIndex(d.kind_combo.findData("segment"))
        d.name_edit.setText("seg")
        d.labels_edit.setPlainText("background, thing")

    dialogs = accept(monkeypatch, HeadDialog, choose)
    context_action(window, "features.4", "add_head_here").trigger()
    fields = dialogs[-1].dense_fields
    offered = [fields.layers_list.item(i).text() for i in range(fields.layers_list.count())]
    assert "features.3" in offered and "features.8" in offered and "classifier" not in offered
    assert fields.default_layers == ["features.3", "features.5", "features.8"]  # Lite0's strides 8, 16, 32
    assert fields.checked_layers() == ["features.4"] and dialogs[-1].kind() == "segment"
    assert [(h.name, h.kind, h.layers) for h in s.heads] == [("seg", "segment", ["features.4"])]
    assert window.undo_stack.undoText() == "Add head 'seg' at features.4"


def test_the_demo_task_grafts_three_kinds_once_the_model_and_data_are_in(qtbot, window, default_network):
    window.surgery.arm_demo_task()
    s = give_session(window, default_network)
    assert not s.heads  # the data is not in yet
    window.workspace.set_data(SimpleNamespace(heads=SUGGESTED), "demo")
    assert [(h.name, h.kind) for h in s.heads] == [("shape", "single"), ("seg", "segment"), ("boxes", "detect")]
    assert s.output_layer is None
    assert window.undo_stack.undoText() == "Set up the demo task"
    assert window.message_label.text() == ("Demo task: shape (single-label), seg (segmentation), boxes (detection) on "
                                           "the frozen trunk — press Train (F5) to train them together.")
    assert all(not p.requires_grad for p in s.model.trunk.parameters())
    # the window as launched, not the user's work: nothing to save (closing or restoring asks nothing)
    assert window.undo_stack.isClean() and not window.isWindowModified()
    window.undo_stack.undo()  # one step takes it all back
    assert not s.heads and s.output_layer is not None
    assert window.isWindowModified()  # the network as loaded is no longer the saved state
    window.workspace.set_data(SimpleNamespace(heads=SUGGESTED), "demo")
    assert not s.heads  # armed once: a second data set does not graft again


def test_no_demo_task_without_dense_suggestions(qtbot, window, default_network):
    window.surgery.arm_demo_task()
    s = give_session(window, default_network)
    window.workspace.set_data(SimpleNamespace(heads=SUGGESTED[:2]), "labels.csv")
    assert not s.heads and s.output_layer is not None


def test_the_demo_task_fires_on_the_real_demo_data(qtbot, window, default_network, demo_csv, monkeypatch):
    """The window opening with the demo data (its own load path, the real demo manifest): its mask and boxes
    columns give the segment and detect heads, bound to those columns, so the demo task sets up all three."""
    import engine.data.demo_data as demo_data

    monkeypatch.setattr(demo_data, "ensure_demo_data", lambda *a, **k: demo_csv)
    window.surgery.arm_demo_task()
    s = give_session(window, default_network)
    with qtbot.waitSignal(window.dataLoaded, timeout=LOAD_TIMEOUT):
        window.datasets.load_demo_data()
    data = window.data
    assert [(h.name, h.kind, h.columns) for h in s.heads] == [
        ("shape", "single", ["shape"]), ("mask", "segment", ["mask"]), ("boxes", "detect", ["boxes"])]
    mask, boxes = (next(h for h in data.heads if h.name == n) for n in ("mask", "boxes"))
    assert mask.labels[0] == "background" and set(mask.labels[1:]) == {"circle", "square", "star", "triangle"}
    assert sorted(boxes.labels) == ["circle", "square", "star", "triangle"]
    sample = next(x for x in data.train if x.targets["boxes"])
    assert sample.targets["mask"].endswith(".png") and len(sample.targets["boxes"][0]) == 5
    assert s.output_layer is None and window.undo_stack.undoText() == "Set up the demo task"
    # The Data tab's thumbnails say each image's mask file and its boxes per class.
    tips = [tip for _, _, tip in window.data_panel.thumbs._items]
    assert tips and all("\nmask: " in t and "\nboxes: " in t for t in tips)
    assert any(line.startswith("mask: ") and line.endswith(".png") for t in tips for line in t.splitlines())
    box_lines = [line[len("boxes: "):] for t in tips for line in t.splitlines() if line.startswith("boxes: ")]
    named = [part.split(" x")[0] for line in box_lines if line != "no boxes" for part in line.split(", ")]
    assert named and set(named) <= set(boxes.labels)  # "circle", "square x2", …


def test_a_demo_csv_opened_in_the_window_keeps_its_dense_heads(qtbot, window, demo_csv):
    """File ▸ Open data on a manifest with mask and boxes columns: the window's data has their heads (main.py
    train leaves them out unless --head names them)."""
    from engine.data.loading import load_data as engine_load

    data = load_data(qtbot, window, demo_csv)
    assert [(h.name, h.kind) for h in data.heads if h.dense] == [("mask", "segment"), ("boxes", "detect")]
    assert not any(h.dense for h in engine_load(demo_csv).heads)
