"""The evented layer tree: node data from one dry run, and change events a view can replay exactly."""
from __future__ import annotations

import pytest
import torch

from engine.network.heads import HeadSpec
from engine.surgery.operations import AddHead, CutAt, DeleteOutputLayer, RemoveHead, SetTrainable


class Replica:
    """What a view does with the events: keep its own copy of (path, data) rows per parent."""

    def __init__(self, tree):
        self.tree = tree
        self.rows = {}
        self._copy(tree.root)
        self.pending = None
        for event in tree.EVENTS:
            tree.connect(event, getattr(self, f"on_{event}", lambda *a: None))

    def _copy(self, node):
        self.rows[node.path] = [c.path for c in node.children]
        for c in node.children:
            self._copy(c)

    def on_about_to_insert(self, parent, start, end):
        assert 0 <= start <= len(self.rows[parent.path]) and end >= start
        self.pending = ("insert", parent.path, start, end)

    def on_inserted(self, parent, start, end):
        assert self.pending == ("insert", parent.path, start, end)
        for i in range(start, end + 1):
            child = parent.children[i]
            self.rows[parent.path].insert(i, child.path)
            self._copy(child)

    def on_about_to_remove(self, parent, start, end):
        assert 0 <= start <= end < len(self.rows[parent.path])
        # before removal the engine still has the rows the view knows
        assert [c.path for c in parent.children[start:end + 1]] == self.rows[parent.path][start:end + 1]
        self.pending = ("remove", parent.path, start, end)

    def on_removed(self, parent, start, end):
        assert self.pending == ("remove", parent.path, start, end)
        del self.rows[parent.path][start:end + 1]

    def check(self):
        expected = {}

        def walk(node):
            expected[node.path] = [c.path for c in node.children]
            for c in node.children:
                walk(c)

        walk(self.tree.root)
        mine = {k: v for k, v in self.rows.items() if k in expected}
        assert mine == expected


def test_nodes_carry_shapes_params_and_the_output_layer(resnet_session):
    tree = resnet_session.tree
    assert [n.name for n in tree.root.children] == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2",
                                                    "layer3", "layer4", "avgpool", "fc", "grafted heads"]
    assert tree.node("conv1").out_shape == (64, 112, 112)
    assert tree.node("layer4").out_shape == (512, 7, 7)
    assert tree.node("layer2.0.downsample.0").type_name == "Conv2d"
    fc = tree.node("fc")
    assert fc.is_output and fc.params == 512 * 1000 + 1000 and fc.trainable_params == fc.params
    total = sum(p.numel() for p in resnet_session.model.parameters())
    assert sum(n.params for n in tree.root.children) == total
    assert tree.node("relu").frozen_state == "none"
    assert len(tree) == len([n for n, _ in resnet_session.model.trunk.body.named_modules() if n]) + 1


def test_events_let_a_view_follow_every_operation_and_undo(resnet_session):
    s = resnet_session
    replica = Replica(s.tree)
    changed = []
    s.tree.connect("changed", lambda node, fields: changed.append((node.path, fields)))
    ops = [DeleteOutputLayer(), AddHead(HeadSpec("a", "single", outputs=3)), AddHead(HeadSpec("b", "multi", outputs=2)),
           CutAt("layer2.1"), SetTrainable("up_to", ["layer1"]), RemoveHead("a")]
    for op in ops:
        s.do(op)
        replica.check()
    assert ("layer1", {"trainable_params"}) in changed
    for _ in ops:
        s.history.undo()
        replica.check()
    for _ in ops:
        s.history.redo()
        replica.check()


def test_cut_marks_the_cut_layer_and_heads_group_shows_feature_size(resnet_session):
    s = resnet_session
    s.do(CutAt("layer3"))
    assert "cut here" in s.tree.node("layer3").extra
    assert s.tree.node("layer3").out_shape == (256, 14, 14)  # the cut layer still reports its output
    assert s.tree.node("@heads").out_shape == (256,)


def test_freeze_events_report_only_the_trainable_counts(resnet_session):
    s = resnet_session
    changed = []
    s.tree.connect("changed", lambda node, fields: changed.append(fields))
    s.do(SetTrainable("layers", ["layer3"], trainable=False))
    assert changed and all(f == {"trainable_params"} for f in changed)


def test_a_network_that_fails_the_dry_run_still_shows_its_layers():
    from engine.network.loading import LoadedNetwork, ModelSource
    from engine.network.preprocess import InputSpec
    from engine.surgery.session import Session

    class NeedsOneChannel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    s = Session(LoadedNetwork(NeedsOneChannel(), InputSpec(), ModelSource("file", "x.pt")))
    assert s.tree.shape_error and "conv" in s.tree and s.tree.node("conv").out_shape is None
    assert s.feature_dim is None


def test_build_seconds_is_the_last_full_build_not_a_later_merge(resnet_session, monkeypatch):
    """After an operation the tree re-probes; a later sync without a dry run keeps that time."""
    import time

    from engine.network.graft_model import GraftModel

    s = resnet_session
    dummy = GraftModel.dummy_input

    def slow_dummy(self, batch=1):  # only dry runs ask for a dummy input
        time.sleep(0.2)
        return dummy(self, batch)

    monkeypatch.setattr(GraftModel, "dummy_input", slow_dummy)
    s.do(DeleteOutputLayer())  # the dry run happens inside the operation, before the tree syncs
    after_delete = s.tree.build_seconds
    assert after_delete >= 0.2
    s.do(SetTrainable("layers", ["layer1"], trainable=False))  # no dry run: the time stays
    assert s.tree.build_seconds == after_delete


def _tiny_session(body):
    from engine.network.loading import LoadedNetwork, ModelSource
    from engine.network.preprocess import InputSpec
    from engine.surgery.session import Session

    return Session(LoadedNetwork(body, InputSpec(size=32, resize=36), ModelSource("file", "x.pt")))


class Recorder(torch.nn.Module):
    """Notes whether it saw real numbers or fake (shape-only) tensors."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        from torch._subclasses.fake_tensor import FakeTensor

        self.seen.append("fake" if isinstance(x, FakeTensor) else "real")
        return x


def test_a_slow_network_dry_runs_on_fake_tensors_with_the_same_shapes():
    """The first dry run is real (and timed); when it was slow, surgery's dry runs compute shapes only."""
    from engine.network.layer_tree import FAKE_RUN_AFTER_S

    body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), Recorder(), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5))
    s = _tiny_session(body)
    real = (dict(s.tree.shapes), list(s.tree.order), s.tree.feature_dim)
    assert body[1].seen == ["real"] and real[2] == 5
    s.tree.real_run_seconds = FAKE_RUN_AFTER_S * 2  # as if the network were big
    s.do(CutAt("3"))
    assert body[1].seen[-1] == "fake"
    assert s.tree.shapes["3"] == (8, 1, 1) and s.feature_dim == 8 and s.tree.shape_error is None
    s.history.undo()
    assert (dict(s.tree.shapes), list(s.tree.order), s.tree.feature_dim) == real
    assert body[1].seen[-1] == "fake"


class NumpyStep(torch.nn.Module):
    def forward(self, x):  # .numpy() has no fake version: the dry run falls back to real numbers
        return torch.from_numpy(x.detach().numpy() * 2)


def test_an_op_without_a_shape_rule_falls_back_to_a_real_dry_run():
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), NumpyStep(), Recorder(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 3))
    s = _tiny_session(body)
    order = list(s.tree.order)
    s.tree.real_run_seconds = 10.0
    s.do(DeleteOutputLayer())
    assert body[2].seen == ["real", "real"]
    assert s.feature_dim == 4 and s.tree.shapes["1"] == (4, 30, 30) and s.tree.shape_error is None
    assert s.tree.order == order


def test_a_real_shape_error_is_still_found_when_dry_runs_are_fake():
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    s = _tiny_session(body)
    body[4] = torch.nn.Linear(5, 2)  # 3 features in, 5 expected
    s.tree.probe(s.model)
    real_error = s.tree.shape_error
    assert real_error and "3" in real_error and "5" in real_error
    s.tree.real_run_seconds = 10.0
    s.tree.probe(s.model)
    assert s.tree.shape_error == real_error and s.tree.feature_dim is None
