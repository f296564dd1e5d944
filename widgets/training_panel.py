"""Training settings, Start / Pause / Resume / Stop, the learning rate finder's button, and progress
("epoch 3/10 · 40% · ETA 0:42").

How much of the network trains and how fast (fastai's fine-tuning recipe): a Discriminative rates preset
(an undoable surgery the window applies: ``discriminativeRequested(low)``), gradual unfreezing
(``TrainConfig.unfreeze_every``) and the tree's live layer telemetry (``TrainConfig.telemetry``)."""
from __future__ import annotations

import math
from dataclasses import fields, replace
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QStandardItemModel, QValidator
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
                               QProgressBar, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from engine.errors import GraftError
from engine.training.config import TrainConfig

DEVICES = (("auto", "Auto"), ("cuda", "CUDA GPU"), ("mps", "Apple GPU"), ("cpu", "CPU"))
START_TIP = "Train on the loaded data (F5)"
BUDGET_TIP = ("Measure this computer, plan stages that fit the time (the heads on cached features, then the top "
              "blocks), show the plan and train it, keeping the best validation result")
READY = "Ready when the data and heads are."
READY_NOW = "Ready to train on the loaded data."
FIND_TIP = ("A short test run whose rate grows step by step: plots the loss against the rate and suggests one "
            "(nothing is learnt: the weights are put back)")
AUGMENT = (("auto", "Auto", "On while layers of the network train; off while only the heads train"),
           (True, "On", "Always augment (with a frozen network every epoch then runs it on every image)"),
           (False, "Off", "Never augment"))


ALL_GPUS = "all-gpus"  # the device choice that trains on every GPU of this machine


def _gpu_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # noqa: BLE001 - no torch, no GPU
        return 0


def format_eta(seconds: float | None) -> str:
    """``42`` -> ``0:42``; ``3725`` -> ``1:02:05``."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return ""
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _default_ram_budget() -> int:
    """The engine's budget for features in memory ($GRAFT_FEATURE_RAM_MB, else its default), in whole MB."""
    from engine.training.features import DEFAULT_RAM_BUDGET_MB, ram_budget_mb

    try:
        return max(16, int(round(ram_budget_mb())))
    except GraftError:  # a bad variable: the engine says so when training starts
        return int(DEFAULT_RAM_BUDGET_MB)


PAUSE_TIP = ("Pause at the end of this epoch: Resume continues the run (its optimizer and schedule too), also "
             "after saving and reopening the project")
PAUSE_ALL_GPUS_TIP = ("A run on all the GPUs cannot pause (its processes end with it); Stop keeps its best "
                      "weights so far, and training again goes on from them")


def progress_text(done: int, total: int, eta_seconds: float | None, epoch: int | None, epochs: int | None) -> str:
    """``"epoch 3/10 · 40% · ETA 0:42"`` (parts left out when unknown)."""
    parts = []
    if epoch:
        parts.append(f"epoch {epoch}/{epochs}" if epochs else f"epoch {epoch}")
    if total:
        parts.append(f"{done / total:.0%}")
    eta = format_eta(eta_seconds)
    if eta and done < total:
        parts.append(f"ETA {eta}")
    return " · ".join(parts)


class LearningRateBox(QDoubleSpinBox):
    """A learning rate: typed as ``0.001`` or ``1e-3``, stepped along 1, 2, 5, 10 …"""

    LADDER = (1.0, 2.0, 5.0)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setDecimals(10)
        self.setRange(1e-8, 10.0)
        self.setKeyboardTracking(False)

    def textFromValue(self, value: float) -> str:
        return f"{value:g}"

    def valueFromText(self, text: str) -> float:
        try:
            return float(text.strip())
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int) -> object:
        t = text.strip()
        try:
            v = float(t)
        except ValueError:
            ok = t == "" or all(c in "0123456789.eE-+" for c in t)
            return QValidator.State.Intermediate if ok else QValidator.State.Invalid, text, pos
        state = QValidator.State.Acceptable if self.minimum() <= v <= self.maximum() else QValidator.State.Intermediate
        return state, text, pos

    def stepBy(self, steps: int) -> None:
        value = self.value()
        for _ in range(abs(steps)):
            exp = math.floor(math.log10(value) + 1e-9)
            ladder = [m * 10.0 ** e for e in (exp - 1, exp, exp + 1) for m in self.LADDER]
            if steps > 0:
                value = min((v for v in ladder if v > value * (1 + 1e-9)), default=value)
            else:
                value = max((v for v in ladder if v < value * (1 - 1e-9)), default=value)
        self.setValue(float(f"{value:.6g}"))


class TrainingPanel(QWidget):
    """The knobs of :class:`~engine.training.TrainConfig` that matter most, and the run's progress.
    ``config()`` returns a TrainConfig (the other fields as in the config given to :meth:`set_config`)."""

    startRequested = Signal()
    stopRequested = Signal()
    pauseRequested = Signal()
    resumeRequested = Signal()
    findRateRequested = Signal()
    budgetRequested = Signal(float)  # "Best model in N minutes": the budget in seconds
    discriminativeRequested = Signal(float)  # the lowest factor (bottom block)

    def __init__(self, parent: QWidget | None = None, *, cuda_available: bool | None = None,
                 mps_available: bool | None = None) -> None:
        super().__init__(parent)
        self._base = TrainConfig()
        self._running = False
        self._can_start = True
        cuda, mps = self._accelerators(cuda_available, mps_available)

        self.device_combo = QComboBox(self)
        for key, title in DEVICES:
            if key == "mps" and not mps:
                continue
            self.device_combo.addItem(title, key)
        self.gpu_count = _gpu_count() if cuda else 0
        if self.gpu_count > 1:  # DDP in child processes (app/distributed.py)
            self.device_combo.addItem(f"All {self.gpu_count} GPUs", ALL_GPUS)
        cuda_row = self.device_combo.findData("cuda")
        if not cuda:
            item = self.device_combo.model().item(cuda_row) if isinstance(self.device_combo.model(),
                                                                          QStandardItemModel) else None
            if item is not None:
                item.setEnabled(False)
                item.setToolTip("No CUDA GPU is available on this computer (or PyTorch was installed without "
                                "CUDA support)")
        self.device_combo.setToolTip("Where to train. Auto uses a GPU when there is one, else the CPU."
                                     + ("" if cuda else "\nNo CUDA GPU was found on this computer."))
        self.cuda_available = cuda

        self.epochs_spin = QSpinBox(self)
        self.epochs_spin.setRange(1, 10_000)
        self.epochs_spin.setToolTip("Passes over the training images")
        self.batch_spin = QSpinBox(self)
        self.batch_spin.setRange(1, 4096)
        self.batch_spin.setToolTip("Images per step; lower it if the GPU runs out of memory")
        self.lr_heads_box = LearningRateBox(self)
        self.lr_heads_box.setToolTip("Learning rate of the new heads (e.g. 0.001)")
        self.lr_trunk_box = LearningRateBox(self)
        self.lr_trunk_box.setToolTip("Learning rate of the unfrozen layers of the pretrained network; usually "
                                     "about 10× smaller than the heads' so it does not forget what it knows")
        self.augment_combo = QComboBox(self)
        for value, title, tip in AUGMENT:
            self.augment_combo.addItem(title, value)
            self.augment_combo.setItemData(self.augment_combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.augment_combo.setToolTip(
            "Random crops, flips and colour changes: the network sees slightly different versions of each "
            "image, which helps against overfitting.\nAuto: on while layers of the network train. With the "
            "network frozen, Graft instead computes its features once and trains only the heads on them, "
            "many times faster.")
        self.patience_spin = self._epochs_box("Stop when the validation result (the heads' metric, a tie broken by "
                                              "the loss) has not improved for this many epochs (the best epoch's "
                                              "weights are kept); 0 = never stop early")

        self.views_spin = QSpinBox(self)
        self.views_spin.setRange(0, 16)
        self.views_spin.setSpecialValueText("off")
        self.views_spin.setSuffix(" views")
        self.views_spin.setToolTip(
            "With the network frozen and augmentation on: compute its features of this many augmented views of "
            "every training image once, and train the heads each epoch on one of them, at cached speed "
            "(caching costs about this many plain passes); off = one plain view")

        self.ram_spin = QSpinBox(self)
        self.ram_spin.setRange(16, 1 << 20)
        self.ram_spin.setSingleStep(256)
        self.ram_spin.setSuffix(" MB")
        self.ram_spin.setValue(_default_ram_budget())
        self.ram_spin.setToolTip(
            "With the network frozen, its features of every image are kept for the heads to train on: up to this "
            "much memory, beyond it in a file on disk (removed after training). Lower it when the computer runs "
            "short of memory; this computer keeps the setting")

        self.find_rate_button = QPushButton("Find learning rate", self)
        self.find_rate_button.setObjectName("findRate")
        self.find_rate_button.setToolTip(FIND_TIP)
        self.unfreeze_spin = self._epochs_box(
            "Gradual unfreezing: the heads train alone for N epochs, then one more block of the network joins from "
            "the top every N epochs (for this run only: the layers' freeze settings are put back afterwards); 0 = off")
        self.low_factor_box = QDoubleSpinBox(self)
        self.low_factor_box.setRange(0.001, 1.0)
        self.low_factor_box.setDecimals(3)
        self.low_factor_box.setSingleStep(0.05)
        self.low_factor_box.setValue(0.1)
        self.low_factor_box.setPrefix("×")
        self.low_factor_box.setToolTip("The learning-rate factor of the bottom block; the factors rise "
                                       "geometrically to ×1 on the top block")
        self.discriminative_button = QPushButton("Discriminative rates", self)
        self.discriminative_button.setObjectName("discriminative")
        self.discriminative_button.setToolTip("Lower learning rates for earlier blocks (the factor on the left at "
                                              "the bottom rising to ×1 at the top), set as learning-rate factors "
                                              "in the tree; undoable. They act on the layers that train.")
        self.telemetry_check = QCheckBox("Show layer telemetry in the tree", self)
        self.telemetry_check.setToolTip("While training, the tree's Training column shows how far each trainable "
                                        "block's weights have moved since the run started, and its gradient "
                                        "(sampled twice a second; costs a few percent of training time)")

        for box in (self.epochs_spin, self.batch_spin, self.lr_heads_box, self.lr_trunk_box, self.patience_spin,
                    self.unfreeze_spin):
            box.setMinimumWidth(110)
            box.setAlignment(Qt.AlignmentFlag.AlignRight)

        settings = QGroupBox("Settings", self)
        form = self._form(settings)
        form.addRow("Device", self.device_combo)
        form.addRow("Epochs", self.epochs_spin)
        form.addRow("Batch size", self.batch_spin)
        form.addRow("Heads learning rate", self.lr_heads_box)
        form.addRow("Network learning rate", self.lr_trunk_box)
        form.addRow("Early stopping", self.patience_spin)
        form.addRow("Augmentation", self.augment_combo)
        form.addRow("Augmented views (frozen network)", self.views_spin)
        form.addRow("Features in memory, at most", self.ram_spin)
        form.addRow("", self.find_rate_button)

        control = QGroupBox("How the network trains", self)
        control_form = self._form(control)
        preset = QHBoxLayout()
        preset.addWidget(self.discriminative_button)
        preset.addWidget(QLabel("from", self))
        preset.addWidget(self.low_factor_box)
        preset.addStretch(1)
        control_form.addRow(preset)
        control_form.addRow("Unfreeze a block every", self.unfreeze_spin)
        control_form.addRow(self.telemetry_check)

        self.start_button = QPushButton("Start training", self)
        self.start_button.setObjectName("primary")
        self.start_button.setToolTip(START_TIP)
        self.stop_button = QPushButton("Stop", self)
        self.stop_button.setToolTip("Stop after the current batch; the best weights so far are kept")
        self.pause_button = QPushButton("Pause", self)
        self.pause_button.setToolTip(PAUSE_TIP)
        self.resume_button = QPushButton("Resume", self)
        self.resume_button.setToolTip("Continue the paused run where it stopped")
        self.progress_bar = QProgressBar(self)
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(False)
        self.progress_label = QLabel("", self)
        self.progress_label.setObjectName("progressText")
        self.plan_label = QLabel("", self)  # a time-budgeted run's plan
        self.plan_label.setObjectName("planText")
        self.plan_label.setWordWrap(True)
        self.plan_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.plan_label.setVisible(False)
        self.status_label = QLabel(READY, self)
        self.status_label.setObjectName("hint")
        self.status_label.setWordWrap(True)

        self.budget_button = QPushButton("Best model in", self)
        self.budget_button.setToolTip(BUDGET_TIP)
        self.budget_spin = QSpinBox(self)
        self.budget_spin.setRange(1, 24 * 60)
        self.budget_spin.setValue(10)
        self.budget_spin.setSuffix(" minutes")
        self.budget_spin.setToolTip("The time the plan may spend, loading and measuring included")

        run = QGroupBox("Run", self)
        run_layout = QVBoxLayout(run)
        run_layout.setSpacing(8)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.pause_button)
        buttons.addWidget(self.resume_button)
        buttons.addWidget(self.stop_button)
        buttons.addStretch(1)
        run_layout.addLayout(buttons)
        best = QHBoxLayout()
        best.addWidget(self.budget_button)
        best.addWidget(self.budget_spin)
        best.addStretch(1)
        run_layout.addLayout(best)
        run_layout.addWidget(self.plan_label)
        run_layout.addWidget(self.progress_bar)
        run_layout.addWidget(self.progress_label)
        run_layout.addWidget(self.status_label)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 8)
        layout.setSpacing(10)
        layout.addWidget(settings)
        layout.addWidget(control)
        layout.addWidget(run)
        layout.addStretch(1)

        self._last_progress: tuple | None = None
        self._readiness = True  # the status line says whether a run can start (no run has reported yet)
        self._can_resume = False
        self._can_find = True
        self.start_button.clicked.connect(self.startRequested)
        self.stop_button.clicked.connect(self.stopRequested)
        self.pause_button.clicked.connect(self.pauseRequested)
        self.resume_button.clicked.connect(self.resumeRequested)
        self.find_rate_button.clicked.connect(self.findRateRequested)
        self.budget_button.clicked.connect(lambda: self.budgetRequested.emit(60.0 * self.budget_spin.value()))
        self.discriminative_button.clicked.connect(lambda: self.discriminativeRequested.emit(self.low_factor_box.value()))
        self.set_config(self._base)
        self.set_running(False)

    def _epochs_box(self, tip: str) -> QSpinBox:
        """A number of epochs where 0 reads "off"."""
        box = QSpinBox(self)
        box.setRange(0, 1000)
        box.setSpecialValueText("off")
        box.setSuffix(" epochs")
        box.setToolTip(tip)
        return box

    @staticmethod
    def _form(box: QGroupBox) -> QFormLayout:
        form = QFormLayout(box)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
        form.setHorizontalSpacing(12)
        form.setVerticalSpacing(8)
        return form

    @staticmethod
    def _accelerators(cuda: bool | None, mps: bool | None) -> tuple[bool, bool]:
        if cuda is None or mps is None:
            try:
                import torch

                cuda = torch.cuda.is_available() if cuda is None else cuda
                mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()) \
                    if mps is None else mps
            except Exception:  # noqa: BLE001 - no torch, no accelerator
                cuda, mps = bool(cuda), bool(mps)
        return bool(cuda), bool(mps)

    # -- public API ---------------------------------------------------------------------------------------
    def set_config(self, config: TrainConfig) -> None:
        """Fill the fields from ``config`` (its other fields are kept for :meth:`config`). The features'
        memory budget stays: it belongs to this computer, not to the project or run that brought it."""
        self._base = config
        device = str(config.device).split(":")[0]
        index = self.device_combo.findData(ALL_GPUS if getattr(config, "devices", 1) > 1 else device)
        if index < 0 or (device == "cuda" and not self.cuda_available):
            index = self.device_combo.findData("auto")
        self.device_combo.setCurrentIndex(index)
        self.epochs_spin.setValue(int(config.epochs))
        self.batch_spin.setValue(int(config.batch_size))
        self.lr_heads_box.setValue(float(config.lr_heads))
        self.lr_trunk_box.setValue(float(config.lr_trunk))
        self.augment_combo.setCurrentIndex(next(i for i, (value, *_) in enumerate(AUGMENT)
                                                if value == config.augment and type(value) is type(config.augment)))
        self.patience_spin.setValue(int(config.patience or 0))
        self.views_spin.setValue(int(getattr(config, "augment_views", 0) or 0))
        self.unfreeze_spin.setValue(int(config.unfreeze_every or 0))
        self.telemetry_check.setChecked(bool(config.telemetry))

    def config(self) -> TrainConfig:
        """A TrainConfig from the fields."""
        values: dict[str, Any] = {
            "device": self.device_combo.currentData(), "epochs": self.epochs_spin.value(),
            "batch_size": self.batch_spin.value(), "lr_heads": self.lr_heads_box.value(),
            "lr_trunk": self.lr_trunk_box.value(), "augment": self.augment_combo.currentData(),
            "patience": self.patience_spin.value() or None, "unfreeze_every": self.unfreeze_spin.value() or None,
            "telemetry": self.telemetry_check.isChecked(), "augment_views": self.views_spin.value(),
            # the engine's own budget ($GRAFT_FEATURE_RAM_MB or its default) stays None: the engine decides
            "feature_ram_budget_mb": (None if self.ram_spin.value() == _default_ram_budget()
                                      else float(self.ram_spin.value()))}
        values["devices"] = self.gpu_count if values["device"] == ALL_GPUS else 1
        values["device"] = "cuda" if values["device"] == ALL_GPUS else values["device"]
        known = {f.name for f in fields(TrainConfig)}
        return replace(self._base, **{k: v for k, v in values.items() if k in known})

    def set_running(self, running: bool) -> None:
        """While training: settings, Start, Resume and the finder disabled, Pause and Stop enabled."""
        self._running = bool(running)
        for widget in (self.device_combo, self.epochs_spin, self.batch_spin, self.lr_heads_box, self.lr_trunk_box,
                       self.augment_combo, self.views_spin, self.ram_spin, self.patience_spin, self.unfreeze_spin,
                       self.telemetry_check, self.discriminative_button, self.low_factor_box):
            widget.setEnabled(not running)
        self.start_button.setEnabled(not running and self._can_start)
        self.budget_button.setEnabled(not running and self._can_start)
        self.budget_spin.setEnabled(not running)
        self.stop_button.setEnabled(running)
        everywhere = self.device_combo.currentData() == ALL_GPUS  # child processes: Stop, not Pause
        self.pause_button.setEnabled(running and not everywhere)
        self.pause_button.setToolTip(PAUSE_ALL_GPUS_TIP if running and everywhere else PAUSE_TIP)
        self.resume_button.setEnabled(not running and self._can_resume)
        self.find_rate_button.setEnabled(not running and self._can_find)
        if running:
            self.progress_bar.setRange(0, 0)  # busy until the first progress report
            self.progress_label.setText("")
            self._last_progress = None
        else:
            if self.progress_bar.maximum() == 0:
                self.progress_bar.setRange(0, 1000)
            if self._last_progress is not None:  # no time left once the run has ended
                self.progress_label.setText(progress_text(*self._last_progress[:2], None, *self._last_progress[3:]))

    def is_running(self) -> bool:
        return self._running

    def set_can_start(self, can_start: bool, reason: str = "") -> None:
        """Whether Start may be pressed when no run is going (e.g. not while other work runs, or without
        heads or data), and why not: the button's tooltip."""
        self._can_start = bool(can_start)
        self.start_button.setEnabled(self._can_start and not self._running)
        self.start_button.setToolTip(reason if reason and not self._can_start else START_TIP)
        self.budget_button.setEnabled(self._can_start and not self._running)
        self.budget_button.setToolTip(reason if reason and not self._can_start else BUDGET_TIP)
        if self._readiness and not self._running:  # no run has said anything yet: whether one can start
            why = reason.rstrip(".") + "." if reason else READY
            self.status_label.setText(READY_NOW if self._can_start else why)

    def set_can_resume(self, can_resume: bool, tip: str = "") -> None:
        """Whether a paused run can be resumed now (``tip``: what Resume would continue, or why not)."""
        self._can_resume = bool(can_resume)
        self.resume_button.setEnabled(self._can_resume and not self._running)
        self.resume_button.setToolTip(tip or "Continue the paused run where it stopped")

    def set_can_find(self, can_find: bool, reason: str = "") -> None:
        """Whether the learning rate finder may start now, and why not (its tooltip)."""
        self._can_find = bool(can_find)
        self.find_rate_button.setEnabled(self._can_find and not self._running)
        if reason and not can_find:
            self.find_rate_button.setToolTip(reason)
        else:
            self.find_rate_button.setToolTip(FIND_TIP)

    def apply_rate(self, rate: float, heads: bool = True, keep_ratio: bool = False) -> None:
        """Put a learning rate in the heads' field (or the network's, ``heads=False``); ``keep_ratio``: the
        network's rate follows the heads' by the ratio they had (the finder sweeps both that way)."""
        if heads:
            ratio = self.lr_trunk_box.value() / self.lr_heads_box.value()
            self.lr_heads_box.setValue(float(f"{rate:.3g}"))
            if keep_ratio:
                self.lr_trunk_box.setValue(float(f"{rate * ratio:.3g}"))
        else:
            self.lr_trunk_box.setValue(float(f"{rate:.3g}"))

    def set_stopping(self) -> None:
        """Stop was pressed: the run ends after the current batch, Stop and Pause cannot be pressed again."""
        if self._running:
            self.stop_button.setEnabled(False)
            self.pause_button.setEnabled(False)

    def set_pausing(self) -> None:
        """Pause was pressed: the run pauses after the current epoch, Pause cannot be pressed again."""
        if self._running:
            self.pause_button.setEnabled(False)

    def clear_progress(self) -> None:
        """Forget the last run (another model was opened): no progress, the first status line."""
        self._last_progress = None
        self.progress_bar.setRange(0, 0 if self._running else 1000)
        self.progress_bar.setValue(0)
        self.progress_label.setText("")
        self.status_label.setText(READY)
        self._readiness = True

    def set_progress(self, done: int, total: int, eta_seconds: float | None = None, epoch: int | None = None,
                     epochs: int | None = None) -> None:
        """Steps ``done`` of ``total``, the time left, and the epoch (1-based) of ``epochs``."""
        self._last_progress = (done, total, eta_seconds, epoch, epochs)
        if total and total > 0:
            self.progress_bar.setRange(0, 1000)
            self.progress_bar.setValue(int(round(1000 * min(1.0, max(0.0, done / total)))))
        self.progress_label.setText(progress_text(done, total, eta_seconds, epoch, epochs))

    def set_plan(self, text: str) -> None:
        """Show a time-budgeted run's plan (its stages, times, what is frozen, the rates; lines that wrap to the
        panel's width: a table's right columns, the estimates, were cut off there); "" hides it."""
        self.plan_label.setText(text)
        self.plan_label.setVisible(bool(text))

    def set_status(self, text: str) -> None:
        self._readiness = False
        self.status_label.setText(text)

    def status(self) -> str:
        return self.status_label.text()
