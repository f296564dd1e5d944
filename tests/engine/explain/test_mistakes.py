"""engine.explain.mistakes: confusion cells hold exactly their images, mistakes worst first, label audit."""
from __future__ import annotations

import csv
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.errors import GraftError
from engine.explain.mistakes import (cell_examples, confusion_members, errors_table, label_audit, label_errors,
                                     largest_errors, mistakes, write_errors, write_suggestions)
from engine.network.preprocess import preprocess_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # 2 shared cores: one thread each


def test_each_cell_lists_exactly_the_images_it_counts(evaluated):
    session, data, report = evaluated
    head = report.heads["shape"]
    members = confusion_members(report, "shape")
    truth = {str(s.path): s.targets["shape"] for s in data.samples}
    model = session.model.eval()
    seen = []
    for t, row in enumerate(head.confusion):
        for p, count in enumerate(row):
            cell = cell_examples(report, "shape", head.classes[t], head.classes[p])
            assert len(cell) == count == len(members[t][p])
            assert sorted(e.index for e in cell) == members[t][p]
            for e in cell:
                assert truth[e.image] == t and e.truth == head.classes[t] and e.prediction == head.classes[p]
                with torch.no_grad():  # the image's own answer, predicted again on its own
                    logits = model(torch.from_numpy(preprocess_file(e.image, session.input_spec))[None])["shape"]
                assert int(logits.argmax()) == p
                assert e.confidence == pytest.approx(float(torch.softmax(logits, 1)[0, p]), abs=1e-5)
            assert [e.loss for e in cell] == sorted((e.loss for e in cell), reverse=True)
            seen += [e.image for e in cell]
    labelled = [str(s.path) for s in data.samples if s.targets["shape"] >= 0]
    assert sorted(seen) == sorted(labelled) and sum(map(sum, head.confusion)) == len(labelled)
    with pytest.raises(GraftError, match="No true class 'dog'"):
        cell_examples(report, "shape", "dog", 0)


def test_mistakes_worst_first_per_kind(evaluated):
    _, _, report = evaluated
    wrong = mistakes(report, "shape")
    assert wrong and all(e.truth != e.prediction for e in wrong)
    assert [e.loss for e in wrong] == sorted((e.loss for e in wrong), reverse=True)
    assert len(wrong) == sum(v for t, row in enumerate(report.heads["shape"].confusion) for p, v in enumerate(row)
                             if t != p)
    # Multi-label: per label, the false positives and negatives the metrics counted.
    tags = report.heads["tags"].details
    for j, label in enumerate(tags["labels"]):
        fp, fn = label_errors(report, "tags", label)
        assert (len(fp), len(fn)) == (tags["fp"][j], tags["fn"][j])
        assert all(e.prediction == label and e.truth == f"not {label}" for e in fp)
        assert all(e.prediction == f"not {label}" for e in fn)
    assert len(mistakes(report, "tags")) == sum(tags["fp"]) + sum(tags["fn"])
    # Regression: every labelled value, largest error first; their mean is the MAE.
    errors = largest_errors(report, "size")
    assert len(errors) == report.heads["size"].details["n"][0]
    assert np.mean([abs(e.error) for e in errors]) == pytest.approx(report.heads["size"].details["mae"], rel=1e-4)
    assert [abs(e.error) for e in errors] == sorted((abs(e.error) for e in errors), reverse=True)
    table = errors_table(report)
    assert len(table) == len(wrong) + len(mistakes(report, "tags")) + len(errors)
    assert [e.loss for e in table] == sorted((e.loss for e in table), reverse=True)


def test_label_audit_fills_blanks_and_flags_confident_contradictions(evaluated):
    _, data, report = evaluated
    blanks = [s for s in label_audit(report, confidence=0.0) if s.reason == "blank"]
    expected = sum(1 for s in data.samples if s.targets["shape"] < 0)
    expected += sum(math.isnan(v) for s in data.samples for key in ("tags", "size") for v in s.targets[key])
    assert len(blanks) == expected > 0
    assert {s.column for s in blanks} <= {"shape", "red", "striped", "outlined", "size"}
    every = label_audit(report, confidence=0.0)
    contradicted = [s for s in every if s.reason == "contradicted"]
    assert len([s for s in contradicted if s.head == "shape"]) == len(mistakes(report, "shape"))
    strict = label_audit(report, confidence=0.99)
    assert all(s.confidence >= 0.99 for s in strict if s.reason == "contradicted")
    confidences = [s.confidence for s in contradicted]
    assert confidences == sorted(confidences, reverse=True) and every[:len(contradicted)] == contradicted


def test_suggestions_go_to_a_new_file_never_over_the_data(evaluated, demo, tmp_path):
    csv_path, _ = demo
    _, data, report = evaluated
    before = csv_path.read_bytes()
    audit = label_audit(report)
    out = write_suggestions(tmp_path / "suggestions.csv", audit, root=data.root, protected=[csv_path])
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == len(audit) and rows[0].keys() == {"image", "head", "column", "current", "suggested",
                                                           "confidence", "reason"}
    assert all(r["image"].startswith("images/") for r in rows)  # as the manifest names them
    with pytest.raises(GraftError, match="part of the data: Graft never changes the user's data"):
        write_suggestions(csv_path, audit, root=data.root, protected=[csv_path])
    with pytest.raises(GraftError, match="part of the data"):
        write_errors(report.images[0], errors_table(report))
    assert csv_path.read_bytes() == before
    errors = write_errors(tmp_path / "errors.csv", errors_table(report), root=data.root)
    lines = list(csv.reader(errors.open(encoding="utf-8")))
    assert lines[0] == ["image", "head", "truth", "prediction", "confidence", "loss"]
    losses = [float(r[5]) for r in lines[1:]]
    assert losses == sorted(losses, reverse=True)


def test_a_report_without_per_image_results(evaluated):
    _, _, report = evaluated
    old = replace(report, images=[], outputs={})
    with pytest.raises(GraftError, match="kept no per-image results"):
        mistakes(old, "shape")
    with pytest.raises(GraftError, match="no head 'colour'"):
        mistakes(report, "colour")
