"""Masked per-head losses and accumulating metrics, checked against hand computations."""
from __future__ import annotations

import math

import pytest
import torch

from engine.network.heads import HeadSpec
from engine.training.losses import LossAccumulator, compute_losses, head_loss
from engine.training.metrics import (MetricSet, MultiLabelMetrics, RegressionMetrics, SingleLabelMetrics, better_epoch,
                                     headline, selection_score)

NAN = float("nan")


def bce(z: float, y: float) -> float:
    p = 1 / (1 + math.exp(-z))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def ce(logits: list[float], y: int) -> float:
    return -logits[y] + math.log(sum(math.exp(v) for v in logits))


def test_single_label_loss_averages_over_labelled_examples_only():
    logits = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.5], [0.0, 3.0, 1.0], [9.0, -9.0, 0.0]]
    target = [0, -1, 2, -1]
    got = head_loss("single", torch.tensor(logits), torch.tensor(target))
    want = (ce(logits[0], 0) + ce(logits[2], 2)) / 2
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_multi_label_loss_sums_labelled_entries_and_divides_by_batch_size():
    z = [[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [-1.0, 2.0, 3.0]]
    y = [[1.0, NAN, 0.0], [NAN, NAN, NAN], [0.0, 1.0, NAN]]  # the middle example has nothing labelled
    got = head_loss("multi", torch.tensor(z), torch.tensor(y))
    want = (bce(1.0, 1) + bce(0.5, 0) + bce(-1.0, 0) + bce(2.0, 1)) / 3  # N = 3 examples
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_regression_loss_is_mse_over_labelled_entries():
    x = [[1.0, 2.0], [0.0, 5.0], [3.0, -1.0]]
    y = [[2.0, NAN], [NAN, NAN], [1.0, 0.0]]
    got = head_loss("regression", torch.tensor(x), torch.tensor(y))
    want = ((1 - 2) ** 2 + (3 - 1) ** 2 + (-1 - 0) ** 2) / 3
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_a_batch_with_nothing_labelled_gives_zero_loss_and_no_gradient():
    for kind, out, target in (("single", torch.randn(3, 4), torch.tensor([-1, -1, -1])),
                              ("multi", torch.randn(3, 2), torch.full((3, 2), NAN)),
                              ("regression", torch.randn(3, 1), torch.full((3, 1), NAN))):
        out.requires_grad_(True)
        loss = head_loss(kind, out, target)
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(loss)
        assert torch.all(out.grad == 0), kind


def test_unlabelled_examples_get_no_gradient_but_still_train_other_heads():
    heads = [HeadSpec("a", "single", outputs=3), HeadSpec("b", "regression", outputs=1)]
    out_a = torch.randn(2, 3, requires_grad=True)
    out_b = torch.randn(2, 1, requires_grad=True)
    targets = {"a": torch.tensor([1, -1]), "b": torch.tensor([[0.5], [2.0]])}
    compute_losses(heads, {"a": out_a, "b": out_b}, targets).total.backward()
    assert torch.all(out_a.grad[1] == 0) and torch.any(out_a.grad[0] != 0)
    assert torch.all(out_b.grad != 0)  # the second example still trains head b


def test_loss_weights_and_per_head_values():
    heads = [HeadSpec("a", "single", outputs=2, loss_weight=2.0), HeadSpec("b", "multi", outputs=1, loss_weight=0.5)]
    outputs = {"a": torch.tensor([[1.0, 0.0]]), "b": torch.tensor([[0.3]])}
    targets = {"a": torch.tensor([1]), "b": torch.tensor([[1.0]])}
    result = compute_losses(heads, outputs, targets)
    la, lb = ce([1.0, 0.0], 1), bce(0.3, 1)
    assert result.per_head["a"].item() == pytest.approx(la, rel=1e-6)
    assert result.per_head["b"].item() == pytest.approx(lb, rel=1e-6)
    assert result.total.item() == pytest.approx(2.0 * la + 0.5 * lb, rel=1e-6)


def test_accumulator_gives_the_exact_epoch_loss_across_batches():
    heads = [HeadSpec("a", "single", outputs=2)]
    acc = LossAccumulator(heads)
    # batch 1: one labelled example; batch 2: three labelled examples -> mean over the four
    l1 = [[0.0, 1.0]]
    l2 = [[2.0, 0.0], [0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]
    acc.add(compute_losses(heads, {"a": torch.tensor(l1)}, {"a": torch.tensor([0])}))
    acc.add(compute_losses(heads, {"a": torch.tensor(l2)}, {"a": torch.tensor([0, 1, -1, 1])}))
    total, per_head = acc.values()
    want = (ce(l1[0], 0) + ce(l2[0], 0) + ce(l2[1], 1) + ce(l2[3], 1)) / 4
    assert per_head["a"] == pytest.approx(want, rel=1e-6) and total == pytest.approx(want, rel=1e-6)
    assert LossAccumulator(heads).values() == (None, {})


def test_single_label_metrics_accuracy_and_confusion():
    m = SingleLabelMetrics(HeadSpec("s", "single", labels=["cat", "dog", "fox"]))
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0], [0, 5.0, 0]])
    m.update(logits[:3], torch.tensor([0, 1, 0]))  # third: true cat, predicted fox
    m.update(logits[3:], torch.tensor([-1, 2]))  # missing is left out; true fox predicted dog
    d = m.details()
    assert d["confusion"] == [[1, 0, 1], [0, 1, 0], [0, 1, 0]]
    assert d["n"] == 4 and d["accuracy"] == pytest.approx(2 / 4)
    assert d["classes"] == ["cat", "dog", "fox"]
    assert m.summary() == {"accuracy": pytest.approx(0.5)}
    assert SingleLabelMetrics(HeadSpec("s", "single", outputs=2)).summary() == {}


def test_multi_label_f1_leaves_missing_entries_out():
    m = MultiLabelMetrics(HeadSpec("t", "multi", labels=["red", "big", "odd"]))
    logits = torch.tensor([[3.0, 3.0, -3.0], [3.0, -3.0, -3.0], [-3.0, 3.0, -3.0], [-3.0, -3.0, -3.0]])
    truth = torch.tensor([[1.0, NAN, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, NAN], [NAN, 0.0, 0.0]])
    m.update(logits, truth)
    d = m.details()
    # red: labelled rows 0,1,2: TP=1 (row0) FP=1 (row1) FN=1 (row2) -> F1 = 2/(2+1+1) = 0.5
    # big: labelled rows 1,2,3: TP=1 (row2) FN=1 (row1) -> 2/3 ; row 0 predicted 1 but unlabelled: ignored
    # odd: nothing positive, nothing predicted -> undefined
    assert d["f1"][0] == pytest.approx(0.5) and d["f1"][1] == pytest.approx(2 / 3) and d["f1"][2] is None
    assert d["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert d["n"] == [3, 3, 3] and d["support"] == [2, 2, 0]
    s = m.summary()
    assert s["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2) and "f1/odd" not in s and "f1/red" in s


def test_regression_mae_per_output_and_mean():
    m = RegressionMetrics(HeadSpec("r", "regression", labels=["w", "h"]))
    m.update(torch.tensor([[1.0, 2.0], [3.0, 0.0]]), torch.tensor([[2.0, NAN], [1.0, 1.0]]))
    m.update(torch.tensor([[0.0, 0.0]]), torch.tensor([[NAN, 4.0]]))
    d = m.details()
    assert d["mae_per_output"] == [pytest.approx(1.5), pytest.approx(2.5)]
    assert d["mae"] == pytest.approx(2.0) and d["n"] == [2, 2]
    assert m.summary() == {"mae": pytest.approx(2.0), "mae/w": pytest.approx(1.5), "mae/h": pytest.approx(2.5)}


def test_metric_set_and_headline():
    heads = [HeadSpec("s", "single", outputs=2), HeadSpec("r", "regression", outputs=1)]
    ms = MetricSet(heads)
    ms.update({"s": torch.tensor([[1.0, 0.0]]), "r": torch.tensor([[1.0]])},
              {"s": torch.tensor([0]), "r": torch.tensor([[1.5]])})
    summary = ms.summary()
    assert summary == {"s": {"accuracy": 1.0}, "r": {"mae": 0.5}}
    assert headline("single", summary["s"]) == "acc 1.000" and headline("multi", {}) == "F1 -"
    assert isinstance(ms.details()["s"]["confusion"][0][0], int)


def test_counts_read_as_words():
    from engine.units import plural

    assert [plural(1, "epoch"), plural(3, "epoch"), plural(0, "file"), plural(1200, "image")] == \
        ["1 epoch", "3 epochs", "0 files", "1,200 images"]
    assert plural(2, "class", "classes") == "2 classes"


def test_the_selection_score_is_each_head_s_metric_higher_better_averaged():
    single = HeadSpec("kind", labels=["a", "b"])
    multi = HeadSpec("tags", kind="multi", labels=["x", "y"])
    size = HeadSpec("size", kind="regression", labels=["w"], target_mean=[0.0], target_std=[4.0])
    assert selection_score([single], {"kind": {"accuracy": 0.97}}) == pytest.approx(0.97)
    assert selection_score([multi], {"tags": {"macro_f1": 0.6, "f1/x": 0.2}}) == pytest.approx(0.6)
    assert selection_score([size], {"size": {"mae": 2.0}}) == pytest.approx(-0.5)  # in units of the std
    both = selection_score([single, size], {"kind": {"accuracy": 0.9}, "size": {"mae": 0.4}})
    assert both == pytest.approx((0.9 - 0.1) / 2)
    assert selection_score([single, size], {"kind": {"accuracy": 0.9}}) == pytest.approx(0.9)  # the heads that have one
    seg = HeadSpec("seg", kind="segment", labels=["bg", "a"])
    assert selection_score([single, seg], {"kind": {"accuracy": 0.9}, "seg": {"miou": 0.5}}) is None  # the loss decides
    assert selection_score([single], {"kind": {}}) is None


def test_a_better_epoch_has_the_higher_metric_and_on_a_tie_the_lower_loss():
    assert better_epoch(0.99, 0.12, 0.971, 0.0913)  # accuracy up, loss up (label smoothing, EMA): better
    assert not better_epoch(0.97, 0.05, 0.99, 0.12)  # loss down, accuracy down: worse
    assert better_epoch(0.99, 0.10, 0.99, 0.12) and not better_epoch(0.99, 0.12, 0.99, 0.10)  # a tie: the loss
    assert better_epoch(None, 0.1, None, 0.2) and not better_epoch(None, 0.3, None, 0.2)  # no metric: the loss
    assert better_epoch(0.5, 0.3, None, None)  # the first validated epoch
    assert not better_epoch(None, None, 0.5, 0.3)
