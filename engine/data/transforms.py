"""The training augmentation (torchvision transforms.v2), the same for the trainer, the feature cache's augmented
views and the standalone training script (which copies :func:`_augmentation`'s source, so it keeps its name)."""
from __future__ import annotations

from engine.network.preprocess import InputSpec


def _augmentation(spec: InputSpec):
    from torchvision.transforms import v2

    modes = {"nearest": v2.InterpolationMode.NEAREST, "bilinear": v2.InterpolationMode.BILINEAR,
             "bicubic": v2.InterpolationMode.BICUBIC, "lanczos": v2.InterpolationMode.LANCZOS}
    steps = [
        v2.RandomResizedCrop(spec.size, scale=(0.6, 1.0),
                             interpolation=modes.get(spec.interpolation, v2.InterpolationMode.BILINEAR),
                             antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if spec.channels <= 3:  # colour jitter knows grey and RGB only: extra bands are not colours
        steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02))
    return v2.Compose(steps)
