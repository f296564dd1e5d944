"""``main.py train``: add heads for the data, train, and save a ``.graft`` project."""
from __future__ import annotations

import argparse
import contextlib
import signal
import threading
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from engine.units import plural

from .common import DATA_HELP, add_input_arguments, add_model_arguments, apply_input_arguments, data_path, load_session

HELP = "train new heads (and optionally the trunk) on an image folder or a CSV manifest; saves a .graft project"

DEFAULT_OUT = "graft-model.graft"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR_OR_CSV",
                        help=DATA_HELP)
    add_model_arguments(parser)
    add_input_arguments(parser)
    parser.epilog = "--model may also be a .graft project, to continue training it."
    parser.add_argument("--head", action="append", default=[], metavar="NAME:KIND[:COLUMNS[:WEIGHT]][@LAYER]",
                        help="a head to add, e.g. shape:single:shape or tags:multi:red,striped (repeatable; "
                             "default: one head from the folder's classes, or the CSV's suggested heads). "
                             "KIND is single, multi or regression; COLUMNS (comma-separated) default to NAME. "
                             "An optional fourth field sets the head's loss weight (default 1): "
                             "age:regression:age:0.5, or age:regression::0.5 for the column named after the head. "
                             "@LAYER puts the head on that layer's output, pooled to a vector (shape:single@features.4; "
                             "'main.py layers' lists the layers): heads on several layers make a multi-exit model")
    parser.add_argument("--freeze", default=None, metavar="PRESET",
                        help="heads-only (default for a new model), none (train everything) or up-to:LAYER; "
                             "a project keeps its own setting unless this is given")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the training data (default 10)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    parser.add_argument("--lr-heads", type=float, default=1e-3, help="learning rate of the heads (default 1e-3)")
    parser.add_argument("--lr-trunk", type=float, default=1e-4,
                        help="learning rate of unfrozen trunk layers (default 1e-4)")
    parser.add_argument("--patience", type=int, default=5,
                        help="stop when the validation loss has not improved for this many epochs (0: never)")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of the images held out for validation when the data does not say (default 0.2)")
    parser.add_argument("--augment", choices=("auto", "on", "off"), default="auto",
                        help="random crops/flips/colour changes: auto (default) = on while layers of the network "
                             "train, off with a frozen network, whose features are then computed only once")
    parser.add_argument("--no-augment", dest="augment", action="store_const", const="off",
                        help="the same as --augment off")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                        help="where to train (default: a GPU when there is one)")
    parser.add_argument("--workers", type=int, default=None, help="image decoding processes (default: automatic)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (split, head initialisation, order)")
    parser.add_argument("--tensorboard", default=None, metavar="DIR",
                        help="also write the curves as TensorBoard event files under DIR (one folder per run)")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="FILE.graft",
                        help=f"where to save the trained project (default ./{DEFAULT_OUT})")


def _out_path(text: str) -> Path:
    """Where the project goes: ``.graft`` added when missing, checked before any training starts."""
    from engine.files import check_target

    path = Path(text).expanduser()
    if path.suffix.lower() != ".graft":
        path = path.with_name(path.name + ".graft")
    return check_target(path)


class _Printer:
    """Turns trainer events into terminal output: one line per epoch on stdout, a progress bar updated
    in place on stderr when stderr is a terminal."""

    BAR = 28

    def __init__(self, heads, stream_out=None, stream_err=None) -> None:
        self.kinds = {h.name: h.kind for h in heads}
        self.out = stream_out or sys.stdout
        self.err = stream_err or sys.stderr
        self.tty = bool(getattr(self.err, "isatty", lambda: False)())
        self.bar_shown = False
        self.epochs = 0
        self.last_loss: float | None = None
        self.last_bar = 0.0

    def _clear_bar(self) -> None:
        if self.bar_shown:
            self.err.write("\r\033[K")
            self.err.flush()
            self.bar_shown = False

    def line(self, text: str, err: bool = False) -> None:
        self._clear_bar()
        stream = self.err if err else self.out
        print(text, file=stream, flush=True)

    def __call__(self, event) -> None:
        from engine.training import trainer as t
        from engine.training.metrics import headline

        if isinstance(event, t.TrainStarted):
            self.epochs = event.epochs
            how = ("cached trunk features (heads only)" if event.cached_features
                   else "augmented images" if event.augmented else "images")
            self.line(f"Training on {event.device_name}: {event.n_train} train / {event.n_val} validation images, "
                      f"{plural(event.epochs, 'epoch')} x {plural(event.steps_per_epoch, 'step')}, on {how}")
        elif isinstance(event, t.MessageEvent):
            self.line(("warning: " if event.level == "warning" else "") + event.text, err=event.level == "warning")
        elif isinstance(event, t.StepEvent):
            self.last_loss = event.loss
        elif isinstance(event, t.ProgressEvent):
            if self.tty:
                now = time.monotonic()
                if now - self.last_bar < 0.1 and event.fraction < 1.0:
                    return
                self.last_bar = now
                filled = int(round(self.BAR * event.fraction))
                bar = "#" * filled + "." * (self.BAR - filled)
                what = ("features" if event.phase == "features"
                        else f"step {event.done_steps}/{event.total_steps}")
                eta = f"  ETA {_clock(event.eta_seconds)}" if event.eta_seconds is not None else ""
                loss = f"  loss {self.last_loss:.4f}" if self.last_loss is not None and event.phase == "train" else ""
                self.err.write(f"\r\033[K[{bar}] {event.fraction * 100:3.0f}%  {what}{eta}{loss}")
                self.err.flush()
                self.bar_shown = True
        elif isinstance(event, t.EpochEvent):
            width = len(str(self.epochs))
            parts = [f"epoch {event.epoch:>{width}}/{self.epochs}",
                     f"train {_loss(event.train_loss)}", f"val {_loss(event.val_loss)}{' *' if event.best else '  '}"]
            for name, kind in self.kinds.items():
                parts.append(f"{name}: {headline(kind, event.metrics.get(name, {}))}")
            parts.append(f"({event.seconds:.1f} s)")
            self.line("  ".join(parts))
        elif isinstance(event, t.TrainFinished):
            self._clear_bar()


def _loss(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _clock(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def run(args: argparse.Namespace) -> int:
    from engine.data.datasets import load_data, parse_head_arg
    from engine.errors import GraftError
    from engine.surgery.operations import AddHead, DeleteOutputLayer, freeze_preset
    from engine.project.project_file import save_project
    from engine.training.record import TrainingRecord
    from engine.training.trainer import TrainConfig, Trainer

    new_specs = [parse_head_arg(text) for text in args.head]
    names = [s.name for s in new_specs]
    if len(set(names)) != len(names):
        raise GraftError("Two --head options share a name.")
    freeze = freeze_preset(args.freeze) if args.freeze else None
    out = _out_path(args.out)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr_heads=args.lr_heads,
                         lr_trunk=args.lr_trunk, augment={"on": True, "off": False}.get(args.augment, "auto"), device=args.device,
                         patience=args.patience, num_workers=args.workers, seed=args.seed)
    config.validate()
    data_file = data_path(args.data)
    if not data_file.exists():
        raise GraftError(f"{data_file}: no such file or folder.")

    session = load_session(args)
    apply_input_arguments(session, args)
    from_project = str(args.model).endswith(".graft")
    existing = session.heads
    clash = [n for n in names if n in {h.name for h in existing}]
    if clash:
        raise GraftError(f"The model already has a head named {clash[0]!r}.")
    if data_file.is_dir():  # an image folder has no columns: NAME:single means "the folders' classes"
        new_specs = [replace(s, columns=[]) if s.kind == "single" and s.columns == [s.name] else s
                     for s in new_specs]
    wanted = existing + new_specs
    data = load_data(data_file, wanted or None, val_fraction=args.val_fraction, seed=args.seed)
    print(f"Model: {session.describe()}")
    print(f"Data: {data_file} — {len(data.train)} training and {len(data.val)} validation images"
          + (f", {plural(len(data.skipped), 'file')} skipped" if data.skipped else ""))
    for path, reason in data.skipped[:5]:
        print(f"  skipped {path}: {reason}")

    if session.output_layer is not None:
        session.do(DeleteOutputLayer())
    have = {h.name for h in session.heads}
    for spec in data.heads:
        if spec.name not in have:
            session.do(AddHead(spec, seed=args.seed))
    if freeze is not None:
        session.do(freeze)
    elif not from_project:
        session.do(freeze_preset("heads-only"))
    for h in session.heads:
        labels = ", ".join(h.label_names[:6]) + (" …" if h.outputs > 6 else "")
        print(f"Head {h.name}: {h.kind}, {plural(h.outputs, 'output')} ({labels})")
    trainable = sum(p.numel() for p in session.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in session.model.parameters())
    print(f"Training {trainable:,} of {total:,} parameters")

    printer = _Printer(session.heads)
    if args.tensorboard:
        from engine.training.runs import TensorBoardLog

        printer = TensorBoardLog(args.tensorboard, then=printer)
    trainer = Trainer(session, data, config, printer)
    record = TrainingRecord.begin(data, config, data_file)
    with _ctrl_c_stops(trainer):
        result = trainer.run()  # TrainingError (a GraftError) on failure
    print(result.message)
    # evaluate and export read the data, seed and validation fraction back from the project
    extra = record.finish(result).store(session.project_extra)
    saved = save_project(session, out, extra=extra)
    print(f"Saved the trained model to {saved.resolve()}")
    return 0


@contextlib.contextmanager
def _ctrl_c_stops(trainer) -> Iterator[None]:
    """The first Ctrl-C stops training after the current batch (the best weights are kept and saved);
    a second one aborts without saving."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum, frame) -> None:
        if trainer.stop_requested:
            raise KeyboardInterrupt
        print("\nStopping after this batch; the best weights so far will be saved (Ctrl-C again to abort).",
              file=sys.stderr, flush=True)
        trainer.stop()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
