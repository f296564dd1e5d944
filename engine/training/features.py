"""The frozen trunk's features, computed once: the trainer's cached-features path.

With a frozen trunk the heads see the same features of an image every epoch, so the trunk runs once over
the data (:func:`train_cached`, called by :class:`engine.training.trainer.Trainer`) and only the heads
train, on a :class:`FeatureTable` of the features and the targets.

Augmented views (``TrainConfig.augment_views = K``): the trunk's features of K augmented views of every
training image (the fine-tuning augmentation, :func:`engine.data.transforms._augmentation`, each view seeded
per image: :class:`AugmentedViews`) are computed once; each epoch the heads see one view per image, drawn
by :func:`view_choice` from the seed and the epoch (so a paused run resumes with the same draws). The
validation images keep their plain, unaugmented features. Caching costs K training passes instead of one;
the epochs cost the same.

More features than memory: a table larger than the RAM budget (``TrainConfig.feature_ram_budget_mb``, else
``$GRAFT_FEATURE_RAM_MB``, else :data:`DEFAULT_RAM_BUDGET_MB`) lives in a memory-mapped file in
``engine.files.cache_dir()/features`` instead, removed when training ends, however it ends. Pages written
are handed back to the system as the run goes (``madvise``), and those read after each budget's worth of
reads; the system maps neighbouring pages of the file along with each row read, so while an epoch runs the
resident memory can still grow by up to the file's size (clean file pages, which the system reclaims first).
"""
from __future__ import annotations

import contextlib
import math
import mmap
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import GraftError
from engine.training.losses import LossAccumulator, compute_losses
from engine.training.metrics import MetricSet
from engine.units import plural

ENV_BUDGET = "GRAFT_FEATURE_RAM_MB"
DEFAULT_RAM_BUDGET_MB = 1024.0
SPILL_FOLDER = "features"
SPILL_SUFFIX = ".f32"
MB = 1024 * 1024


def ram_budget_mb(setting: float | None = None) -> float:
    """The feature cache's RAM budget in MB: the setting, else ``$GRAFT_FEATURE_RAM_MB``, else the default."""
    if setting is not None:
        return float(setting)
    text = os.environ.get(ENV_BUDGET, "").strip()
    if not text:
        return DEFAULT_RAM_BUDGET_MB
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise GraftError(f"{ENV_BUDGET}={text!r}: the feature cache's RAM budget must be a positive number of MB.")
    return value


def spill_folder() -> Path:
    from engine.files import cache_dir

    return cache_dir() / SPILL_FOLDER


def _remove_stale_spills(folder: Path) -> None:
    """Files left by a process that was killed (its id in the name, no longer running; POSIX only)."""
    if os.name != "posix" or not folder.is_dir():
        return
    for path in folder.glob(f"features-*{SPILL_SUFFIX}"):
        try:
            pid = int(path.name.split("-")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                path.unlink()
        except (ValueError, IndexError, PermissionError, OSError):
            continue


class FeatureTable:
    """``rows`` feature vectors (float32) and their targets, filled batch by batch (:meth:`put`). A row
    may be a feature map too (the boundary cache's C×H×W, :func:`train_boundary_cached`): it is kept flat
    and handed back in its own shape (:attr:`row_shape`).

    The features live on ``device`` (a GPU when they fit there), in host memory, or, when host memory
    would go past ``budget_bytes``, in a memory-mapped file (:attr:`path`; :meth:`close` removes it).
    The storage is made at the first batch, when the features' width is known."""

    def __init__(self, rows: int, device: torch.device, budget_bytes: float) -> None:
        self.rows, self.device, self.budget_bytes = rows, device, budget_bytes
        self.features: torch.Tensor | None = None
        self.targets: dict[str, torch.Tensor] = {}
        self.path: Path | None = None
        self._map: np.memmap | None = None
        self._touched = 0  # bytes of the file mapping read or written since its pages were last handed back
        self.filled = 0
        self.row_shape: tuple[int, ...] = ()

    @property
    def nbytes(self) -> int:
        return 0 if self.features is None else self.features.numel() * 4

    @property
    def on_disk(self) -> bool:
        return self.path is not None

    def _allocate(self, dim: int, targets: dict[str, torch.Tensor]) -> None:
        need = self.rows * dim * 4
        if self.device.type != "cpu" or need <= self.budget_bytes:
            self.features = torch.empty((self.rows, dim), dtype=torch.float32, device=self.device)
        else:
            folder = spill_folder()
            try:
                folder.mkdir(parents=True, exist_ok=True)
                _remove_stale_spills(folder)
                fd, name = tempfile.mkstemp(prefix=f"features-{os.getpid()}-", suffix=SPILL_SUFFIX, dir=folder)
                os.close(fd)
                self.path = Path(name)
                self._map = np.memmap(self.path, dtype=np.float32, mode="w+", shape=(self.rows, dim))
            except OSError as exc:
                self.close()
                raise GraftError(f"The trunk's features ({need / MB:.0f} MB) exceed the RAM budget and cannot be "
                                 f"kept on disk in {folder}: {exc.strerror or exc}. Free disk space there, or raise "
                                 "the budget (feature RAM budget setting, --feature-ram-mb).") from None
            self.features = torch.from_numpy(self._map)
        self.targets = {k: torch.empty((self.rows, *v.shape[1:]), dtype=v.dtype, device=self.device)
                        for k, v in targets.items()}

    def put(self, features: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        """Append a batch (rows in the order they come)."""
        if self.features is None:
            self.row_shape = tuple(features.shape[1:])
            self._allocate(math.prod(self.row_shape), targets)
        features = features.reshape(features.shape[0], -1)
        n = features.shape[0]
        rows = slice(self.filled, self.filled + n)
        self.features[rows] = features.to(self.device, torch.float32, non_blocking=True)
        for k, v in targets.items():
            self.targets[k][rows] = v.to(self.device, non_blocking=True)
        self.filled += n
        self._account(features.numel() * 4)

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The rows ``index`` (a copy), features and targets."""
        x = self.features.index_select(0, index.to(self.features.device))
        t = {k: v.index_select(0, index.to(v.device)) for k, v in self.targets.items()}
        self._account(x.numel() * 4)
        return x.view(-1, *self.row_shape), t

    def slice(self, start: int, stop: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = self.features[start:stop]
        if self.on_disk:
            x = x.clone()
            self._account(x.numel() * 4)
        return x.view(-1, *self.row_shape), {k: v[start:stop] for k, v in self.targets.items()}

    def _account(self, nbytes: int) -> None:
        """Hand the file mapping's resident pages back to the system every budget's worth of traffic (they
        stay in the file and the system's cache; this process's memory stays bounded)."""
        if self._map is None:
            return
        self._touched += nbytes
        if self._touched >= max(self.budget_bytes / 2, 16 * MB):
            self._touched = 0
            self.release_pages()

    def release_pages(self) -> None:
        raw = getattr(self._map, "_mmap", None)
        if raw is not None and hasattr(raw, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            with contextlib.suppress(OSError, ValueError):
                raw.flush()
                raw.madvise(mmap.MADV_DONTNEED)

    def pin(self) -> None:
        """Pinned host memory for fast copies to a GPU (not for a file mapping: pinning would copy it all)."""
        if self.features is not None and self.features.device.type == "cpu" and not self.on_disk:
            self.features = self.features.pin_memory()
            self.targets = {k: v.pin_memory() for k, v in self.targets.items()}

    def close(self) -> None:
        """Drop the storage; remove the file. Safe to call more than once."""
        self.features, self.targets, self._map = None, {}, None
        if self.path is not None:
            path, self.path = self.path, None
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError:  # Windows: still mapped by a tensor somebody holds; remove it at exit
                import atexit

                atexit.register(lambda p=path: p.unlink(missing_ok=True))


# ------------------------------------------------------------------------------------------------
# augmented views
# ------------------------------------------------------------------------------------------------

def _mix(*values: int) -> int:
    """A seed from several integers (splitmix64-style), stable across processes and runs."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class AugmentedViews(torch.utils.data.Dataset):
    """``views`` augmented versions of every item of ``base`` (an augmenting image dataset): item
    ``v * len(base) + j`` is view ``v`` of image ``j``. Each item's random crop, flip and colour change come
    from a generator seeded by ``(seed, v, j)``, so they are the same whichever loader worker decodes it,
    and the global random state is left as it was."""

    def __init__(self, base: torch.utils.data.Dataset, views: int, seed: int) -> None:
        self.base, self.views, self.seed = base, int(views), int(seed)
        self.n = len(base)

    def __len__(self) -> int:
        return self.views * self.n

    def __getitem__(self, index: int):
        view, item = divmod(int(index), self.n)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix(self.seed, view, item))
            return self.base[item]


def view_choice(seed: int, epoch: int, n: int, views: int) -> torch.Tensor:
    """Which view of each of ``n`` images the heads see in ``epoch`` (1-based): ``(n,)`` int64 in
    ``[0, views)``, the same for the same seed and epoch."""
    generator = torch.Generator().manual_seed(_mix(seed, epoch, 0x5EED))
    return torch.randint(views, (n,), generator=generator)


# ------------------------------------------------------------------------------------------------
# the cached-features path of the trainer
# ------------------------------------------------------------------------------------------------

def feature_store(trainer: Any, n_images: int) -> torch.device:
    """Where cached features live: on the training device, unless they would take more than a quarter of
    the GPU's free memory (then in host memory, copied per batch)."""
    device = trainer.device
    if device.type != "cuda":
        return device
    dim = getattr(trainer.session, "feature_dim", None) or 4096
    need = n_images * dim * 4
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except Exception:  # noqa: BLE001 - unknown free memory: keep them on the GPU
        return device
    return device if need <= free // 4 else torch.device("cpu")


class _Budget:
    def __init__(self, mb: float) -> None:
        self.left = mb * MB

    def table(self, rows: int, device: torch.device) -> FeatureTable:
        return FeatureTable(rows, device, self.left)

    def spend(self, table: FeatureTable) -> None:
        if not table.on_disk and table.device.type == "cpu":
            self.left = max(0.0, self.left - table.nbytes)


def extract_features(trainer: Any, samples: Sequence[Any], table: FeatureTable, done_before: int, total: int,
                     views: int = 0, compute: Callable[[torch.Tensor], torch.Tensor] | None = None) -> FeatureTable:
    """Fill ``table`` with the frozen trunk's features of ``samples`` (plain; with ``views`` > 0 the
    ``views`` augmented views of each, view-major: row ``v * len(samples) + j``). ``compute``: what maps
    a batch of images to its rows (default: the trunk, or the trainer's onnxruntime runner)."""
    cfg = trainer.config
    model = trainer.session.model
    if views:
        dataset = AugmentedViews(trainer._image_dataset(samples, True), views, cfg.seed)
    else:
        dataset = trainer._image_dataset(samples, False)
    batch = cfg.batch_size * 2  # no gradients: twice the training batch fits (and halving the setting helps)
    trainer._phase = ("computing features", batch)
    loader = trainer._loader(dataset, batch)
    runner = trainer._runner
    ctx = trainer._dist  # several processes: each a shard, every batch gathered (in order) into every table
    done = done_before
    model.eval()
    try:
        with torch.no_grad(), trainer._autocast():
            for images, batch_targets in loader:
                trainer._check_stop()
                images, batch_targets = trainer._to(images, trainer._unreadable(batch_targets, samples))
                if compute is not None:
                    f = compute(images).float()
                else:
                    f = (model.trunk(images) if runner is None else runner(images)).float()
                if ctx is not None:
                    room = table.rows - table.filled  # the shards' padding is the last rows: left out
                    f = ctx.gather_rows(f, room)
                    batch_targets = {k: ctx.gather_rows(v, room) for k, v in batch_targets.items()}
                table.put(f, batch_targets)
                done += f.shape[0]
                trainer._progress(0, "features", fraction=trainer.feature_share * done / total)
                trainer._agree_stop()
    finally:
        del loader
    table.release_pages()
    return table


def train_cached(trainer: Any) -> str:
    """Compute the features once (K augmented views of the training images with ``trainer.views`` = K),
    then run the epochs on them; returns the run's ending (see ``Trainer._epochs``). The tables, and
    any file they spilled to, are gone when this returns or raises."""
    cfg = trainer.config
    model = trainer.session.model
    views = trainer.views
    n_train, n_val = len(trainer.train_samples), len(trainer.val_samples)
    total = max(1, views) * n_train + n_val
    if views:
        trainer._note(
            f"Computing the frozen trunk's features once for {plural(views, 'augmented view')} of each of the "
            f"{n_train} training images ({views * n_train} passes) and the {n_val} validation images as they are; "
            "then only the heads train, each epoch on one view per image.")
    else:
        trainer._note(f"Computing the frozen trunk's features once for {total} images; then only the heads train.")
    store = feature_store(trainer, total)
    trainer._frozen_trunk(total)
    budget = _Budget(ram_budget_mb(cfg.feature_ram_budget_mb))
    train_table = budget.table(max(1, views) * n_train, store)
    val_table = None
    tables = [train_table]
    try:
        extract_features(trainer, trainer.train_samples, train_table, 0, total, views)
        budget.spend(train_table)
        if trainer.val_samples:
            val_table = budget.table(n_val, store)
            tables.append(val_table)
            extract_features(trainer, trainer.val_samples, val_table, max(1, views) * n_train, total)
        spilled = [t for t in tables if t.on_disk]
        if spilled:
            size = sum(t.nbytes for t in tables) / MB
            trainer._note(
                f"The features ({size:.0f} MB) exceed the RAM budget of {budget_text(cfg.feature_ram_budget_mb)}: "
                f"{'they are' if len(spilled) == len(tables) else 'the training features are'} kept in a "
                f"memory-mapped file in {spill_folder()} (removed when training ends).")
            trainer.features_on_disk = True
        if trainer.device.type == "cuda":
            for t in tables:
                t.pin()
        return _epochs_on(trainer, train_table, val_table, n_train, views)
    finally:
        for t in tables:
            t.close()


def budget_text(setting: float | None) -> str:
    return f"{ram_budget_mb(setting):g} MB"


def validate_table(trainer: Any, table: FeatureTable, forward: Callable[[torch.Tensor], dict[str, torch.Tensor]]
                   ) -> tuple[LossAccumulator, MetricSet]:
    """Validation losses and metrics of ``forward`` (rows → head outputs) over a cached table's rows."""
    acc, metrics = LossAccumulator(trainer.heads), MetricSet(trainer.heads)
    with torch.no_grad(), trainer._autocast():
        for i in range(0, table.rows, trainer._val_batch):
            x, t = table.slice(i, i + trainer._val_batch)
            if x.device != trainer.device:
                x, t = trainer._to(x, t)
            outputs = forward(x)
            acc.add(compute_losses(trainer.heads, outputs, t, trainer.scales))
            metrics.update(outputs, t)
    table.release_pages()
    return acc, metrics


def _epochs_on(trainer: Any, train_table: FeatureTable, val_table: FeatureTable | None, n_train: int,
               views: int) -> str:
    cfg = trainer.config
    model = trainer.session.model
    trainer._t_train = time.perf_counter()
    sampler = trainer._train_sampler()
    bs = cfg.batch_size
    trainer._val_batch = bs * 8  # the heads alone, on features: small
    device = trainer.device

    def train_batches() -> Iterator[tuple[Callable, dict[str, torch.Tensor], int]]:
        order = sampler.next_order()
        if views:  # one view per image this epoch: row = view * n + image
            order = view_choice(cfg.seed, trainer.epochs_run + 1, n_train, views)[order] * n_train + order
        for i in range(len(sampler)):
            trainer._check_stop()
            x, t = train_table.take(order[i * bs:(i + 1) * bs])
            if x.device != device:  # features kept in host memory or on disk (too many for the GPU or RAM)
                x, t = trainer._to(x, t)
            yield (lambda x=x: model.forward_heads(x)), t, x.shape[0]

    def validate() -> tuple[LossAccumulator, MetricSet]:
        model.heads.eval()
        return validate_table(trainer, val_table, model.forward_heads)

    def set_train_mode() -> None:
        model.eval()
        model.heads.train()
        train_table.release_pages()

    with heads_threads(trainer):
        return trainer._epochs(train_batches, validate if val_table is not None else None, set_train_mode)


HEADS_THREADS = 1  # the heads' epochs on cached features run on this many CPU threads


@contextlib.contextmanager
def heads_threads(trainer: Any | None = None, device: torch.device | None = None) -> Iterator[None]:
    """On a CPU, the heads' steps on cached features run on :data:`HEADS_THREADS` thread(s), the thread count
    put back afterwards. Their operations are tiny (a batch of 32 feature vectors), and with more threads
    than the cores free each one waits for a thread another job holds: on this 2-core machine under load 5,
    an epoch of a Lite0 head on 1,560 images took 2.1-2.5 s with 2 threads, 0.12-0.14 s with 1 (idle, both
    about 0.1 s)."""
    device = device if device is not None else trainer.device
    before = torch.get_num_threads()
    if device.type != "cpu" or before <= HEADS_THREADS:
        yield
        return
    torch.set_num_threads(HEADS_THREADS)
    if trainer is not None:
        trainer._note(f"The heads train on {HEADS_THREADS} CPU thread (steps this small gain nothing from more, "
                      "and lose much when other jobs share the CPU).")
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------
# the boundary cache: only the top blocks train
# ------------------------------------------------------------------------------------------------

def boundary_views(trainer: Any) -> int:
    """How many augmented views of each training image the boundary cache holds: ``boundary_views`` when
    set, else (augmenting) as many as epochs up to :data:`BOUNDARY_VIEWS`; 1 plain view without augmentation."""
    cfg = trainer.config
    if not trainer.augment:
        return 1
    if cfg.boundary_views:
        return int(cfg.boundary_views)
    return max(1, min(cfg.epochs, BOUNDARY_VIEWS))


BOUNDARY_VIEWS = 4
CHANNELS_LAST_ON_CPU = True  # the boundary cache's layers train channels-last on a CPU (measured faster there)


def train_boundary_cached(trainer: Any, split: Any) -> str:
    """Train the blocks after ``split.boundary`` (a :class:`engine.training.boundary.TrunkSplit`) and the
    heads on the frozen layers' cached output at the boundary: the layers up to it run once per training
    image and augmented view (:func:`boundary_views`, drawn per epoch as with ``augment_views``) and once
    per validation image; each step runs only the layers after it, forward and backward. Exact: with the
    frozen layers in eval mode (as :meth:`GraftModel.train` keeps their BatchNorm) an uncached step on the
    same augmented image computes the same loss and gradients. On a CPU the lower half runs in
    onnxruntime when it converts and matches (:func:`engine.training.boundary.lower_runner`) and the
    model trains in channels-last memory format (measured faster on a CPU for these layers: see
    bench/train_speed.py, part (e)). Returns the run's ending (see ``Trainer._epochs``); the tables, and
    any file they spilled to, are gone when this returns or raises."""
    from engine.training.boundary import lower_runner

    cfg = trainer.config
    model = trainer.session.model
    views = boundary_views(trainer)
    augmented = trainer.augment
    n_train, n_val = len(trainer.train_samples), len(trainer.val_samples)
    total = views * n_train + n_val
    what = (f"{views} augmented view{'s' if views > 1 else ''} of each of the {n_train} training images"
            if augmented else f"the {n_train} training images")
    trainer._note(f"Only the layers after {split.boundary} train: the frozen layers up to it run once, for {what}"
                  f" and the {n_val} validation images, and their output is cached; each step runs the layers after "
                  f"{split.boundary} alone" + (", each epoch on one view per image." if augmented else "."))
    runner, note = lower_runner(split, model.input_spec, total, trainer.device)
    if note:
        trainer._note(note[0].upper() + note[1:] + ".")
    lower = runner if runner is not None else split.lower
    channels_last = trainer.device.type == "cpu" and CHANNELS_LAST_ON_CPU
    budget = _Budget(ram_budget_mb(cfg.feature_ram_budget_mb))
    store = trainer.device if trainer.device.type != "cuda" else torch.device("cpu")  # large maps: host memory
    train_table = budget.table(views * n_train, store)
    tables, val_table = [train_table], None
    try:
        extract_features(trainer, trainer.train_samples, train_table, 0, total, views if augmented else 0, lower)
        budget.spend(train_table)
        if trainer.val_samples:
            val_table = budget.table(n_val, store)
            tables.append(val_table)
            extract_features(trainer, trainer.val_samples, val_table, views * n_train, total, 0, lower)
        if any(t.on_disk for t in tables):
            size = sum(t.nbytes for t in tables) / MB
            trainer._note(f"The cached outputs at {split.boundary} ({size:.0f} MB) exceed the RAM budget of "
                          f"{budget_text(cfg.feature_ram_budget_mb)}: they are kept in a memory-mapped file in "
                          f"{spill_folder()} (removed when training ends).")
            trainer.features_on_disk = True
        if channels_last:
            model.to(memory_format=torch.channels_last)  # the same Parameter objects: the optimizer keeps them
        try:
            return _boundary_epochs(trainer, split, train_table, val_table, n_train, views if augmented else 0,
                                    channels_last)
        finally:
            if channels_last:
                model.to(memory_format=torch.contiguous_format)
    finally:
        for t in tables:
            t.close()


def _boundary_epochs(trainer: Any, split: Any, train_table: FeatureTable, val_table: FeatureTable | None,
                     n_train: int, views: int, channels_last: bool) -> str:
    cfg = trainer.config
    model = trainer.session.model
    trainer._t_train = time.perf_counter()
    sampler = trainer._train_sampler()
    bs = cfg.batch_size
    device = trainer.device
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def upper(z: torch.Tensor) -> dict[str, torch.Tensor]:
        return model.forward_heads(split.upper(z.contiguous(memory_format=fmt) if z.dim() == 4 else z))

    def train_batches() -> Iterator[tuple[Callable, dict[str, torch.Tensor], int]]:
        order = sampler.next_order()
        if views:
            order = view_choice(cfg.seed, trainer.epochs_run + 1, n_train, views)[order] * n_train + order
        for i in range(len(sampler)):
            trainer._check_stop()
            z, t = train_table.take(order[i * bs:(i + 1) * bs])
            if z.device != device:
                z, t = trainer._to(z, t)
            yield (lambda z=z: upper(z)), t, z.shape[0]

    def validate() -> tuple[LossAccumulator, MetricSet]:
        model.eval()
        return validate_table(trainer, val_table, upper)

    def set_train_mode() -> None:
        model.train()
        trainer._batchnorm_eval()
        split.lower_eval()  # frozen: as cached
        train_table.release_pages()

    return trainer._epochs(train_batches, validate if val_table is not None else None, set_train_mode)
