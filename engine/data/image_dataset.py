"""The torch side of the data: :class:`ImageDataset`, decoding (and augmenting) each sample when it is read, so in
DataLoader workers."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from engine.data.decoding import check_bands
from engine.data.dense_targets import DenseItem, missing_target
from engine.data.samples import Sample, _target
from engine.data.transforms import _augmentation
from engine.errors import GraftError
from engine.network.heads import HeadSpec
from engine.network.preprocess import InputSpec, normalise, open_image, preprocess_file, read_bands, to_grey, to_rgb

UNREADABLE = "__unreadable__"  # ImageDataset's extra target: -1, or the index of an image that did not decode


class ImageDataset(torch.utils.data.Dataset):
    """``(CHW float32 image, {head: target})`` per sample; decoding happens in ``__getitem__`` (so in
    DataLoader workers). Without augmentation the image is exactly :func:`engine.network.preprocess.preprocess_file`;
    with it: RandomResizedCrop(size, scale 0.6–1), horizontal flip and light colour jitter on the RGB
    (or greyscale) image, then the same normalisation; a 4+-channel input gets the crop and flip on all
    its bands alike, and no colour jitter. Targets: single -> int64 scalar (-1 missing); multi and
    regression -> float32 vector (NaN missing); segment -> int64 mask, detect -> padded boxes
    (:class:`engine.data.dense_targets.DenseItem`, the mask and boxes through the same crop and flip).

    A 4+-channel input checks every image's band count up front (headers only), so an RGB image in the
    data stops training before it starts, with the files named.

    Samples only quick-checked when the data was loaded (``Sample.checked`` False) are decoded here: one that
    fails gives a blank image with every label missing (so it teaches nothing), and the targets of such a
    dataset carry :data:`UNREADABLE` (int64: -1, or the failed sample's index) for the trainer to report."""

    def __init__(self, samples: Sequence[Sample], heads: Sequence[HeadSpec], spec: InputSpec,
                 augment: bool = False) -> None:
        self.samples = list(samples)
        self.heads = list(heads)
        self.spec = spec
        self.augment = bool(augment)
        self._transform = _augmentation(spec) if self.augment else None
        self.lazy = not all(s.checked for s in self.samples)
        # segment / detect heads: masks and boxes follow the image through the same geometry (dense_targets)
        self._dense = DenseItem(self.heads, spec, self._transform) if any(h.dense for h in self.heads) else None
        if spec.channels > 3:
            check_bands([s.path for s in self.samples], spec.channels)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sample = self.samples[index]
        failed = -1
        dense: dict[str, torch.Tensor] = {}
        try:
            if self._dense is not None:
                array, dense = self._dense(sample.path, sample.targets)
            else:
                array = self._pixels(sample)
        except GraftError:
            if sample.checked:
                raise
            spec = self.spec
            array, failed, sample = np.zeros((spec.channels, spec.size, spec.size), np.float32), index, Sample(sample.path)
            dense = {h.name: missing_target(h, spec.size) for h in self.heads if h.dense}
        targets: dict[str, torch.Tensor] = {}
        for head in self.heads:
            if head.dense:
                targets[head.name] = dense[head.name]
                continue
            value = _target(sample, head)
            if head.kind == "single":
                targets[head.name] = torch.tensor(value, dtype=torch.int64)
            else:
                targets[head.name] = torch.tensor(value, dtype=torch.float32)
        if self.lazy:
            targets[UNREADABLE] = torch.tensor(failed, dtype=torch.int64)
        return torch.from_numpy(array), targets

    def _pixels(self, sample: Sample) -> np.ndarray:
        spec = self.spec
        if self._transform is None:
            array = preprocess_file(sample.path, spec)
        elif spec.channels > 3:
            bands = torch.from_numpy(np.array(read_bands(sample.path, spec.channels))).permute(2, 0, 1)
            array = normalise(self._transform(bands).permute(1, 2, 0).numpy(), spec)
        else:
            image = open_image(sample.path)
            image = to_grey(image, spec.alpha_background) if spec.channels == 1 else to_rgb(image, spec.alpha_background)
            array = normalise(self._transform(image), spec)
        return array

    def __repr__(self) -> str:
        return (f"ImageDataset({len(self.samples)} samples, heads={[h.name for h in self.heads]}, "
                f"augment={self.augment})")
