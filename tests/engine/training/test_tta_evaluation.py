"""Evaluation with test-time augmentation: each image's answer is the mean of its views' answers."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.data.image_dataset import ImageDataset
from engine.errors import GraftError
from engine.training.evaluation import evaluate


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def plain_images(session, samples) -> torch.Tensor:
    dataset = ImageDataset(samples, session.heads, session.input_spec, augment=False)
    return torch.stack([dataset[i][0] for i in range(len(samples))])


def test_flip_tta_equals_the_mean_of_the_plain_and_flipped_predictions(demo_data, small_session):
    session = small_session(demo_data.heads, arch="resnet18", freeze="heads-only", size=32)
    data = replace(demo_data, train=demo_data.train[:10], val=demo_data.val[:14])
    report = evaluate(session, data, batch_size=8, device="cpu", split="val", tta="flip")
    plain = evaluate(session, data, batch_size=8, device="cpu", split="val")
    assert report.tta == "flip" and plain.tta is None and "mirror image" in report.format()
    x = plain_images(session, data.val)
    model = session.model.eval()
    with torch.no_grad():
        straight, flipped = model(x), model(torch.flip(x, dims=[3]))
    for spec in session.heads:
        a, b = straight[spec.name], flipped[spec.name]
        if spec.kind == "single":
            a, b = torch.softmax(a, 1), torch.softmax(b, 1)
        elif spec.kind == "multi":
            a, b = torch.sigmoid(a), torch.sigmoid(b)
        expected = ((a + b) / 2).numpy()
        got = report.outputs[spec.name].values
        assert np.abs(got - expected).max() <= 1e-5, spec.name
        assert np.abs(plain.outputs[spec.name].values - a.numpy()).max() <= 1e-5, spec.name
        assert float((a - b).abs().max()) > 1e-4, f"{spec.name}: flipping must change this model's answer"
    # the metrics count the averaged answers: single-label predictions are the averaged arg-max
    shape = report.outputs["shape"]
    assert (shape.predicted == shape.values.argmax(axis=1)).all()
    assert report.heads["shape"].n == plain.heads["shape"].n


def test_flip_and_crops_views_are_averaged_too(demo_data, small_session):
    session = small_session(demo_data.heads, arch="resnet18", freeze="heads-only", size=32)
    data = replace(demo_data, train=demo_data.train[:4], val=demo_data.val[:6])
    crops = evaluate(session, data, batch_size=4, device="cpu", split="val", tta="flip+crops")
    flip = evaluate(session, data, batch_size=4, device="cpu", split="val", tta="flip")
    probs = crops.outputs["shape"].values
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.abs(probs - flip.outputs["shape"].values).max() > 1e-5  # the crops add views of their own


def test_unknown_tta_is_refused(demo_data, small_session):
    session = small_session(demo_data.heads, arch="resnet18", size=32)
    with pytest.raises(GraftError, match="flip"):
        evaluate(session, demo_data.val[:2], device="cpu", tta="rotate")
