"""Stronger augmentation for small data: torchvision's automatic policies on top of the standard crop and flip.

``TrainConfig.augment_policy`` picks what an augmenting :class:`~engine.data.image_dataset.ImageDataset` does to a
training image before it is normalised: "standard" is the dataset's own (random resized crop, horizontal flip,
light colour jitter); "trivial" adds ``transforms.v2.TrivialAugmentWide`` (Müller & Hutter 2021: one random
operation of random strength per image, no tuning) and "augmix" ``transforms.v2.AugMix`` (Hendrycks et al.
2020: a mix of augmentation chains, made for robustness to a change of image style). Both act on the RGB or
greyscale image; inputs of four or more bands keep the standard augmentation (the policies know colours only).
"""
from __future__ import annotations

from typing import Any

POLICIES = ("standard", "trivial", "augmix")


def policy_transform(spec: Any, policy: str):
    """The transform for ``policy`` on images of ``spec`` (an InputSpec), or None for "standard" and for
    inputs with more than three bands (the dataset's own augmentation applies)."""
    if policy == "standard" or spec.channels > 3:
        return None
    from torchvision.transforms import v2

    modes = {"nearest": v2.InterpolationMode.NEAREST, "bilinear": v2.InterpolationMode.BILINEAR,
             "bicubic": v2.InterpolationMode.BICUBIC, "lanczos": v2.InterpolationMode.LANCZOS}
    mode = modes.get(spec.interpolation, v2.InterpolationMode.BILINEAR)
    automatic = v2.TrivialAugmentWide() if policy == "trivial" else v2.AugMix()
    return v2.Compose([v2.RandomResizedCrop(spec.size, scale=(0.6, 1.0), interpolation=mode, antialias=True),
                       v2.RandomHorizontalFlip(), automatic])


def apply_policy(dataset: Any, policy: str) -> Any:
    """Give an augmenting ImageDataset the policy's transform (in place; returned for chaining)."""
    if getattr(dataset, "augment", False):
        transform = policy_transform(dataset.spec, policy)
        if transform is not None:
            dataset._transform = transform
    return dataset
