"""``main.py train``: add heads for the data, train, and save a ``.graft`` project."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import threading
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, is_dataclass, replace
from pathlib import Path

from engine.units import plural

from .common import DATA_HELP, add_input_arguments, add_model_arguments, apply_input_arguments, data_path, load_session

HELP = "train new heads (and optionally the trunk) on an image folder or a CSV manifest; saves a .graft project"

DEFAULT_OUT = "graft-model.graft"


def add_setup_arguments(parser: argparse.ArgumentParser, data_required: bool = True) -> None:
    """The data, model, heads, freezing and learning-rate factors (``train`` and ``lr-find`` share them)."""
    parser.add_argument("--data", required=data_required, metavar="DIR_OR_CSV",
                        help=DATA_HELP)
    add_model_arguments(parser)
    add_input_arguments(parser)
    parser.epilog = "--model may also be a .graft project, to continue training it."
    parser.add_argument("--head", action="append", default=[], metavar="NAME:KIND[:COLUMNS[:WEIGHT]][@LAYER]",
                        help="a head to add, e.g. shape:single:shape or tags:multi:red,striped (repeatable; "
                             "default: one head from the folder's classes, or the CSV's suggested heads). "
                             "KIND is single, multi, regression, segment (a mask per pixel, from a mask column) or "
                             "detect (boxes, from a boxes column); COLUMNS (comma-separated) default to NAME. "
                             "An optional fourth field sets the head's loss weight (default 1): "
                             "age:regression:age:0.5, or age:regression::0.5 for the column named after the head. "
                             "@LAYER puts the head on that layer's output, pooled to a vector (shape:single@features.4; "
                             "'main.py layers' lists the layers): heads on several layers make a multi-exit model; "
                             "a dense head reads several (seg:segment:mask@features.3,features.5,features.8; "
                             "default: the blocks at strides 8, 16 and 32)")
    parser.add_argument("--freeze", default=None, metavar="PRESET",
                        help="heads-only (default for a new model), none (train everything) or up-to:LAYER; "
                             "a project keeps its own setting unless this is given")
    parser.add_argument("--lr-factor", action="append", default=[], metavar="LAYER=F",
                        help="learning-rate factor of a layer and the layers below it (repeatable; e.g. layer1=0.1, "
                             "@heads.shape=2; 0 freezes the layer); saved in the project")
    parser.add_argument("--discriminative", nargs="?", type=float, const=0.1, default=None, metavar="LOW",
                        help="discriminative learning rates: factor LOW (default 0.1) on the bottom block rising to 1 on "
                             "the top block (applied before any --lr-factor)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default 32)")
    parser.add_argument("--lr-heads", type=float, default=None, help="learning rate of the heads (default 1e-3)")
    parser.add_argument("--lr-trunk", type=float, default=None,
                        help="learning rate of unfrozen trunk layers (default 1e-4)")
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_setup_arguments(parser, data_required=False)
    parser.add_argument("--epochs", type=int, default=None, help="passes over the training data (default 10)")
    parser.add_argument("--patience", type=int, default=None,
                        help="stop when the validation result (the heads' metric, a tie broken by the loss) has "
                             "not improved for this many epochs (default 5; 0: never)")
    parser.add_argument("--unfreeze-every", type=int, default=None, metavar="N",
                        help="gradual unfreezing: train the heads for N epochs, then one more trunk block from the top "
                             "every N epochs (a training setting: the layers' freeze settings are kept)")
    parser.add_argument("--augment-views", type=int, nargs="?", const=4, default=None, metavar="K",
                        help="with a frozen trunk: compute the trunk's features of K augmented views of every training "
                             "image once (K defaults to 4 when left out) and train the heads each epoch on one view "
                             "per image (the caching pass costs K times as long, the epochs the same); left out with a "
                             "note when the trunk trains")
    parser.add_argument("--feature-ram-mb", type=float, default=None, metavar="MB",
                        help="RAM budget of the frozen trunk's cached features: past it they go to a memory-mapped "
                             "file in Graft's cache folder, removed afterwards (default: $GRAFT_FEATURE_RAM_MB or 1024)")
    parser.add_argument("--pause-after", type=int, default=None, metavar="EPOCHS",
                        help="pause after this epoch: the project keeps the run's state to --resume it later")
    parser.add_argument("--resume", default=None, metavar="PROJECT.graft",
                        help="continue the run paused in this project, with its settings and data (saved back to it "
                             "unless --out is given)")
    parser.add_argument("--tensorboard", default=None, metavar="DIR",
                        help="also write the curves as TensorBoard event files under DIR (one folder per run)")
    parser.add_argument("--out", default=None, metavar="FILE.graft",
                        help=f"where to save the trained project (default ./{DEFAULT_OUT})")
    parser.add_argument("--devices", type=int, default=None, metavar="N",
                        help="train on N GPUs of this machine (N processes through torchrun, DDP; with --device cpu, "
                             "N CPU processes). --batch-size stays the global batch. Run under an external torchrun "
                             "(--nnodes M --rdzv-endpoint HOST:PORT …) without --devices to join a multi-machine job")
    parser.add_argument("--sync-batchnorm", choices=("auto", "on", "off"), default="auto",
                        help="several processes with layers of the network training: normalise BatchNorm over the "
                             "global batch (auto: on with several GPUs; GPUs only)")
    parser.add_argument("--events", choices=("jsonl",), default=None,
                        help="write the run's events as JSON lines on stdout (one object a line; the other output "
                             "goes to stderr), for a program that follows the run")
    parser.add_argument("--budget", default=None, metavar="TIME",
                        help="the best model in this time (90s, 10m, 1h): measures this device, shows a plan of "
                             "stages (the heads on cached features, then the top blocks) and trains it, ending within "
                             "the time; the plan chooses epochs, freezing and rates")
    parser.add_argument("--refit", action="store_true",
                        help="with --budget: after choosing the schedule on the validation images, train it again "
                             "from the start on all labelled images (no selection then)")
    parser.add_argument("--telemetry", action="store_true",
                        help="sample each training block's gradient and update sizes twice a second (TelemetryEvent "
                             "lines in --events jsonl; the window shows them in its tree)")


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

    def __init__(self, heads, stream_out=None, stream_err=None, title: str = "Training") -> None:
        self.title = title
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
        from engine.training import events as t
        from engine.training.metrics import headline

        if isinstance(event, t.TrainStarted):
            self.epochs = event.epochs
            how = (f"cached trunk features of {plural(event.augment_views, 'augmented view')} per image (heads only)"
                   if event.augment_views
                   else "cached trunk features (heads only)" if event.cached_features
                   else "augmented images" if event.augmented else "images")
            if self.title != "Training":  # the rate finder: a number of steps, no validation
                self.line(f"{self.title} on {event.device_name}: {event.n_train} training images, up to "
                          f"{plural(event.total_steps, 'step')}, on {how}")
                return
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


class JsonLines:
    """``--events jsonl``: every trainer event as one JSON object a line, ``{"event": "StepEvent", …fields}``
    (the window's distributed runs read them back: app/distributed.py); the run's result last."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, name: str, fields: dict) -> None:
        self.stream.write(json.dumps({"event": name, **fields}, default=str) + "\n")
        self.stream.flush()

    def __call__(self, event) -> None:
        self.write(type(event).__name__, asdict(event) if is_dataclass(event) else {"value": str(event)})


def _loss(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _clock(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


DEFAULTS = {"epochs": 10, "batch_size": 32, "lr_heads": 1e-3, "lr_trunk": 1e-4, "patience": 5}
RESUME_FIXED = ("head", "freeze", "lr_factor", "discriminative", "unfreeze_every", "augment_views", "epochs",
                "batch_size", "lr_heads", "lr_trunk", "patience")


def parse_lr_factor(text: str) -> tuple[str, float]:
    """``LAYER=F`` -> ``(LAYER, F)``; GraftError for anything else."""
    from engine.errors import GraftError

    layer, sep, value = text.rpartition("=")
    if not sep or not layer.strip():
        raise GraftError(f"--lr-factor {text!r}: write LAYER=FACTOR, e.g. layer1=0.1.")
    try:
        factor = float(value)
    except ValueError:
        raise GraftError(f"--lr-factor {text!r}: the factor {value!r} is not a number.") from None
    return layer.strip(), factor


def setting(args: argparse.Namespace, name: str):
    value = getattr(args, name, None)
    return DEFAULTS[name] if value is None else value


def prepare_session(args: argparse.Namespace, data_file: Path, *, seed: int | None = None,
                    val_fraction: float | None = None):
    """Load the model and the data, add the heads, freeze and set learning-rate factors as the options
    say, printing what was done. Returns ``(session, data)``."""
    from engine.data.head_args import parse_head_arg
    from engine.data.loading import load_data
    from engine.errors import GraftError
    from engine.surgery.operations import AddHead, DeleteOutputLayer, SetLrFactor, freeze_preset
    from engine.training.schedule import discriminative_rates

    new_specs = [parse_head_arg(text) for text in args.head]
    names = [s.name for s in new_specs]
    if len(set(names)) != len(names):
        raise GraftError("Two --head options share a name.")
    freeze = freeze_preset(args.freeze) if args.freeze else None
    factors = dict(parse_lr_factor(text) for text in args.lr_factor)
    factor_op = SetLrFactor(factors) if factors else None  # checks the numbers before the model loads
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
    data = load_data(data_file, wanted or None, val_fraction=args.val_fraction if val_fraction is None else val_fraction,
                     seed=args.seed if seed is None else seed)
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
    if args.discriminative is not None:
        op = session.do(discriminative_rates(session, args.discriminative))
        print(f"{op.text}: " + ", ".join(f"{k} x{v:g}" for k, v in op.factors.items() if v is not None))
    if factor_op is not None:
        print(session.do(factor_op).text)
    for h in session.heads:
        labels = ", ".join(h.label_names[:6]) + (" …" if h.outputs > 6 else "")
        print(f"Head {h.name}: {h.kind}, {plural(h.outputs, 'output')} ({labels})")
    trainable = sum(p.numel() for p in session.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in session.model.parameters())
    print(f"Training {trainable:,} of {total:,} parameters"
          + (" (more as gradual unfreezing goes on)" if getattr(args, "unfreeze_every", None) else ""))
    return session, data


def _resume_setup(args: argparse.Namespace):
    """For --resume: the paused run's checkpoint, record, data file and settings."""
    from engine.errors import GraftError
    from engine.project.project_file import read_checkpoint, read_project
    from engine.training.config import TrainConfig
    from engine.training.record import TrainingRecord

    given = [name for name in RESUME_FIXED if getattr(args, name) not in (None, [])]
    if given or args.model != "default":
        option = "--" + (given[0] if given else "model").replace("_", "-")
        raise GraftError(f"--resume continues the paused run with its own model and settings: leave out {option}.")
    checkpoint = read_checkpoint(args.resume)
    if checkpoint is None:
        raise GraftError(f"{Path(args.resume).name} holds no paused run to resume (its last run ended).")
    recipe, _ = read_project(args.resume)
    record = TrainingRecord.latest(recipe.get("extra"))
    data_file = data_path(args.data) if args.data else Path(record.data) if record and record.data else None
    if data_file is None:
        raise GraftError("The project does not say which data the paused run trained on: name it with --data.")
    known = set(TrainConfig.__dataclass_fields__)
    config = TrainConfig(**{k: v for k, v in checkpoint.config.items() if k in known})
    config.device = args.device
    config.pause_after = args.pause_after
    if args.workers is not None:
        config.num_workers = args.workers
    if args.feature_ram_mb is not None:  # where the features live changes nothing learnt
        config.feature_ram_budget_mb = args.feature_ram_mb
    args.model = args.resume
    return checkpoint, record, data_file, config


def run(args: argparse.Namespace) -> int:
    """One process; ``--devices N``: N processes through torchrun; started by torchrun: one of them;
    ``--budget``: the time-budgeted plan (commands/train_budget.py)."""
    started = time.monotonic()
    from engine.training import distributed

    if getattr(args, "budget", None) is not None:
        from .train_budget import run_budget

        return run_budget(args, started)
    if getattr(args, "refit", False):
        from engine.errors import GraftError

        raise GraftError("--refit goes with --budget (it trains the budget's chosen schedule again on all images).")

    if (args.devices or 1) > 1 and distributed.launched_world() is None:
        return _launch(args)
    if args.devices is not None and args.devices < 1:
        from engine.errors import GraftError

        raise GraftError(f"--devices must be at least 1 (got {args.devices}).")
    events_out = sys.stdout
    quiet = contextlib.ExitStack()
    with quiet:
        if args.events:  # stdout carries the JSON lines alone
            quiet.enter_context(contextlib.redirect_stdout(sys.stderr))
        if distributed.launched_world() is None:
            return _train(args, events_out)
        ctx = distributed.setup(args.device)
        quiet.push(lambda failed, *_: distributed.teardown(clean=failed is None))  # falsy: errors propagate
        if not ctx.main:  # process 0 alone prints
            quiet.enter_context(contextlib.redirect_stdout(open(os.devnull, "w")))
        return _train(args, events_out, ctx)


def _launch(args: argparse.Namespace) -> int:
    """``--devices N``: the same command in N processes (torch.distributed.run's launcher)."""
    import torch

    from engine.errors import GraftError
    from engine.training.launch import launch

    argv = getattr(args, "_argv", None)
    if argv is None:
        raise GraftError("--devices needs the command line it was given (run it through main.py).")
    if args.device == "mps":
        raise GraftError("Training on several processes runs on CUDA GPUs or the CPU, not on mps.")
    on_gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if on_gpu and torch.cuda.device_count() < args.devices:
        raise GraftError(f"--devices {args.devices}: this machine has {torch.cuda.device_count()} GPU(s) "
                         "(use --device cpu for CPU processes).")
    if not args.data and not args.resume:
        raise GraftError("Name the training data with --data (or continue a paused run with --resume).")
    _out_path(args.out or args.resume or DEFAULT_OUT)  # refused now, not after training
    rest, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--devices":
            skip = True
        elif not item.startswith("--devices="):
            rest.append(item)
    package = __package__ or "commands"
    root = Path(__file__).resolve().parents[package.count(".") + 1]
    print(f"Starting {args.devices} training processes ({'NCCL, one GPU each' if on_gpu else 'gloo, CPU'}).",
          file=sys.stderr if args.events else sys.stdout, flush=True)
    launch(args.devices, rest, module=f"{package}.cli", root=root)
    return 0


def _train(args: argparse.Namespace, events_out, ctx=None) -> int:
    from engine.errors import GraftError
    from engine.project.project_file import save_project
    from engine.training.config import TrainConfig
    from engine.training.record import TrainingRecord
    from engine.training.trainer import Trainer

    checkpoint = record = None
    if args.resume:
        checkpoint, record, data_file, config = _resume_setup(args)
        out = _out_path(args.out or args.resume)
    else:
        if not args.data:
            raise GraftError("Name the training data with --data (or continue a paused run with --resume).")
        config = TrainConfig(epochs=setting(args, "epochs"), batch_size=setting(args, "batch_size"),
                             lr_heads=setting(args, "lr_heads"), lr_trunk=setting(args, "lr_trunk"),
                             augment={"on": True, "off": False}.get(args.augment, "auto"), device=args.device,
                             patience=setting(args, "patience"), num_workers=args.workers, seed=args.seed,
                             unfreeze_every=args.unfreeze_every, pause_after=args.pause_after,
                             augment_views=args.augment_views or 0, feature_ram_budget_mb=args.feature_ram_mb,
                             sync_batchnorm={"on": True, "off": False}.get(args.sync_batchnorm, "auto"),
                             telemetry=bool(getattr(args, "telemetry", False)))
        data_file = data_path(args.data)
        out = _out_path(args.out or DEFAULT_OUT)
    config.validate()
    session, data = prepare_session(args, data_file, seed=record.seed if record else None,
                                    val_fraction=record.val_fraction if record else None)
    if (session.model.lr_factors and not session.model.trunk_trainable() and not config.unfreeze_every
            and any(not k.startswith("@") for k in session.model.lr_factors)):
        print("warning: the trunk is frozen, so its learning-rate factors change nothing now "
              "(train layers with --freeze, or use --unfreeze-every N)", file=sys.stderr)

    main = ctx is None or ctx.main
    printer = _Printer(session.heads) if not args.events else JsonLines(events_out)
    if args.tensorboard and main:
        from engine.training.runs import TensorBoardLog

        printer = TensorBoardLog(args.tensorboard, then=printer)
    if record is None or checkpoint is None:
        record = TrainingRecord.begin(data, config, data_file)
    else:
        if record.reason == RUNNING:
            print(f"{Path(args.resume).name}: its run was cut off "
                  f"after epoch {checkpoint.epochs_run} of {checkpoint.config.get('epochs', '?')} (killed or "
                  "crashed); continuing from that epoch, the last one finished.")
        record.config = dict(vars(config))  # the paused run's settings, as this part runs them
    keep = _epoch_saver(session, out, record, replace_latest=checkpoint is not None) if main else None
    trainer = Trainer(session, data, config, printer, resume=checkpoint, on_checkpoint=keep)
    from engine.training.launch import watch_stop_file

    end_watch = watch_stop_file(trainer.stop)  # Graft's launcher or the window asks every process to stop
    try:
        with _ctrl_c_stops(trainer):
            result = trainer.run()  # TrainingError (a GraftError) on failure
    finally:
        end_watch()
    print(result.message)
    if not main:
        ctx.barrier("waiting for process 0 to save")  # leave together (a process gone early aborts the others)
        return 0  # process 0 alone saves
    # evaluate and export read the data, seed and validation fraction back from the project
    extra = record.finish(result).store(session.project_extra, replace_latest=checkpoint is not None)
    saved = save_project(session, out, extra=extra, checkpoint=result.checkpoint)
    print(f"Saved the trained model to {saved.resolve()}")
    if args.events:
        printer.write("TrainResult", {**vars(result), "checkpoint": None, "saved": str(saved.resolve())})
    if result.checkpoint is not None:
        print(f"Resume the paused run with: graft train --resume {saved}")
    if ctx is not None:
        ctx.barrier()
    return 0


RUNNING = "running"  # a record's reason while its run goes on: a file saved at an epoch's end says so


def _epoch_saver(session, out: Path, record, replace_latest: bool):
    """What the trainer calls after each finished epoch: the project saved to ``out`` (atomically) with the
    run's checkpoint and its record so far, so that ``--resume`` continues from there after a kill."""
    from engine.project.project_file import save_project
    from engine.training.record import TrainingRecord

    def keep(checkpoint) -> None:
        so_far = TrainingRecord.from_dict(record.to_dict())
        so_far.reason, so_far.epochs_run, so_far.history = RUNNING, checkpoint.epochs_run, checkpoint.history
        so_far.best_epoch, so_far.best_val_loss = checkpoint.best_epoch, checkpoint.best_val_loss
        save_project(session, out, extra=so_far.store(session.project_extra, replace_latest=replace_latest),
                     checkpoint=checkpoint)

    return keep


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
