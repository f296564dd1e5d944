"""Feeding the loop: the dataset with targets mapped for the heads, the seeded epoch batch order shared by the
image and cached-feature paths, how many decoding processes to start, and the DataLoader itself."""
from __future__ import annotations

import math
import os
import signal
from collections.abc import Iterator
from typing import Any

import torch

from engine.data.image_dataset import UNREADABLE
from engine.training.binding import TargetMap


class MappedDataset(torch.utils.data.Dataset):
    """An ImageDataset whose targets are renamed/remapped for the session's heads (in the workers); an image
    found unreadable only now (:data:`engine.data.image_dataset.UNREADABLE`) stays marked."""

    def __init__(self, base: torch.utils.data.Dataset, target_map: TargetMap) -> None:
        self.base = base
        self.target_map = target_map

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, targets = self.base[index]
        mapped = self.target_map(targets)
        if UNREADABLE in targets:
            mapped[UNREADABLE] = targets[UNREADABLE]
        return image, mapped


class EpochBatchSampler(torch.utils.data.Sampler):
    """Seeded shuffled batches: epoch e uses the e-th ``randperm`` of its own generator, so the
    image loader and the cached-feature path visit the examples in the same order."""

    def __init__(self, n: int, batch_size: int, drop_last: bool, seed: int, shuffle: bool = True) -> None:
        self.n, self.batch_size, self.drop_last, self.shuffle = n, batch_size, drop_last, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def next_order(self) -> torch.Tensor:
        return torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.next_order().tolist()
        for i in range(len(self)):
            yield order[i * self.batch_size:(i + 1) * self.batch_size]


def auto_num_workers(n_images: int, batch_size: int, requested: int | None = None,
                     device: torch.device | str | None = None) -> int:
    """Decoding processes: as asked, else ``min(4, cpus - 1)`` when a GPU computes. None for small
    datasets (starting workers costs more than decoding a few batches in the main process), and on the
    CPU only from 8 cores up (then 1-2): there torch's threads already use every core and decoding is a
    small part of a step, so workers only compete with them (measured on 2 cores: a worker made full
    fine-tuning 1.5x slower)."""
    if requested is not None:
        return int(requested)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(4, cpus - 1)
    if device is not None and torch.device(device).type == "cpu":
        workers = min(2, cpus // 8)
    if workers < 1 or n_images < max(4 * batch_size, 128):
        return 0
    return workers


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not compete with the main process's threads
    # Ctrl-C reaches the whole process group: the main process decides (stop after this batch), so a
    # worker must not die of it and break the loader mid-epoch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset: torch.utils.data.Dataset, *, batch_size: int, device: torch.device,
                num_workers: int, batch_sampler: torch.utils.data.Sampler | None = None,
                seed: int = 0) -> torch.utils.data.DataLoader:
    kwargs: dict[str, Any] = {"num_workers": num_workers, "pin_memory": device.type == "cuda",
                              "generator": torch.Generator().manual_seed(seed + 1)}
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=_worker_init)
    if batch_sampler is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)
