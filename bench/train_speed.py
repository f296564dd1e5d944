"""How fast is Graft's Trainer compared with plain PyTorch? ``python bench/train_speed.py [--quick]``

Same model (the bundled default), same demo data, same device, same DataLoader settings, one process:

(a) full fine-tuning (augmentation on, everything trainable): images/s of Graft's Trainer vs a plain
    hand-written loop with the same AdamW parameter groups. Goal: ratio >= 0.95.
(b) heads only, frozen trunk, no augmentation, 20 epochs: Graft's wall time (it caches the trunk's
    features) vs a plain loop that runs the trunk every step (goal: >= 10x faster), and vs a single
    forward pass of the trunk over the same images (goal: within 1.5x).

(c) heads only on an early exit: the same heads all on ``features.4`` (``--exit-layer``) instead of at the
    end. The trunk then stops after that layer, so the pass that caches the features must be at least
    2x faster than with the heads at the end (the trainer's own caching pass, timed from its events).

(d) live layer telemetry (``TrainConfig.telemetry``: per block gradient norm and weight change, sampled at
    most every 0.5 s): the same Graft run with and without it, full fine-tuning and heads only on cached
    features, and the time spent in the telemetry's own work. Goal: < 3 % of training time.
    ``--telemetry-only`` runs just (d).

(e) only the top blocks train (``--top-blocks 3``: Lite0's features.6-8, frozen up to features.5): images/s of
    the plain full fine-tuning loop (the baseline), Graft's full fine-tuning, Graft's top-blocks run without and
    with the boundary cache (``TrainConfig.boundary_cache``: the frozen layers run once per augmented view,
    ``--boundary-epochs`` epochs over ``--boundary-views`` views, the caching pass included), and each option
    measured on its own on the same pre-decoded batches: the frozen lower half's pass (PyTorch fp32,
    channels-last, bf16 autocast, onnxruntime) and the top blocks' training step (fp32, channels-last, bf16,
    channels-last + bf16, torch.compile). Goal: the boundary-cached stage >= 3x Graft's full fine-tuning.
    ``--boundary-only`` runs just (e).

No validation split in either case (both sides do exactly the training work). ``--quick`` uses a subset
of the images and extrapolates the slow plain loop of (b) from a few epochs (marked in the table).
``--only-exit`` runs (c) alone.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from engine.data.image_dataset import ImageDataset  # noqa: E402
from engine.data.loading import load_data  # noqa: E402
from engine.data.demo_data import ensure_demo_data  # noqa: E402
from engine.network.loading import load_network  # noqa: E402
from engine.surgery.operations import AddHead, DeleteOutputLayer, freeze_preset  # noqa: E402
from engine.surgery.session import Session  # noqa: E402
from engine.training.config import TrainConfig  # noqa: E402
from engine.training.device import autocast_context, autocast_dtype, resolve_device  # noqa: E402
from engine.training.events import MessageEvent, ProgressEvent  # noqa: E402
from engine.training.loaders import auto_num_workers  # noqa: E402
from engine.training.trainer import Trainer  # noqa: E402


RANDOM = False  # --random-weights


def make_session(model: str, heads, freeze: str, layer: str | None = None) -> Session:
    torch.manual_seed(0)
    session = Session(load_network(model, random_init=RANDOM))
    session.do(DeleteOutputLayer())
    for h in heads:
        session.do(AddHead(replace(h, layer=layer), seed=0))
    session.do(freeze_preset(freeze))
    return session


def plain_loss(heads, outputs, targets):
    """The same per-head losses, written out by hand."""
    total = 0.0
    for h in heads:
        out, t = outputs[h.name].float(), targets[h.name]
        if h.kind == "single":
            valid = t >= 0
            loss = (F.cross_entropy(out, t.clamp(min=0), reduction="none") * valid).sum() / valid.sum().clamp(min=1)
        else:
            valid = ~torch.isnan(t)
            t0 = torch.nan_to_num(t)
            if h.kind == "multi":
                loss = (F.binary_cross_entropy_with_logits(out, t0, reduction="none") * valid).sum() / out.shape[0]
            else:
                loss = (((out - t0) ** 2) * valid).sum() / valid.sum().clamp(min=1)
        total = total + h.loss_weight * loss
    return total


def loader_for(samples, heads, spec, *, augment, batch_size, device, workers, shuffle, seed=0):
    kwargs = {"num_workers": workers, "pin_memory": device.type == "cuda",
              "generator": torch.Generator().manual_seed(seed)}
    if workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4)
    return torch.utils.data.DataLoader(ImageDataset(samples, heads, spec, augment=augment), batch_size=batch_size,
                                       shuffle=shuffle, **kwargs)


def plain_train(session: Session, samples, heads, *, epochs, batch_size, augment, device, workers, amp=True):
    """A plain PyTorch training loop (what a user would write), on the same model and data."""
    model = session.model
    dtype = autocast_dtype(device, amp)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    start = time.perf_counter()
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    head_params = [p for p in model.heads.parameters() if p.requires_grad]
    trunk_params = [p for p in model.trunk.parameters() if p.requires_grad]
    groups = [{"params": head_params, "lr": 1e-3}] + ([{"params": trunk_params, "lr": 1e-4}] if trunk_params else [])
    opt = torch.optim.AdamW(groups, weight_decay=1e-4, **({"fused": True} if device.type == "cuda" else {}))
    loader = loader_for(samples, heads, session.input_spec, augment=augment, batch_size=batch_size, device=device,
                        workers=workers, shuffle=True)
    model.train()
    images = 0
    nb = device.type == "cuda"
    for _ in range(epochs):
        for x, t in loader:
            x = x.to(device, non_blocking=nb,
                     memory_format=torch.channels_last if device.type == "cuda" else torch.preserve_format)
            t = {k: v.to(device, non_blocking=nb) for k, v in t.items()}
            with autocast_context(device, dtype):
                out = model(x)
            loss = plain_loss(heads, out, t)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            images += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    del loader
    model.to("cpu")
    return seconds, images


def trunk_pass(session: Session, samples, heads, *, batch_size, device, workers, amp=True):
    """One forward pass of the trunk over the images, nothing else."""
    model = session.model
    dtype = autocast_dtype(device, amp)
    start = time.perf_counter()
    model.to(device).eval()
    loader = loader_for(samples, heads, session.input_spec, augment=False, batch_size=batch_size, device=device,
                        workers=workers, shuffle=False)
    with torch.no_grad(), autocast_context(device, dtype):
        for x, _ in loader:
            model.trunk(x.to(device, non_blocking=device.type == "cuda"))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    del loader
    model.to("cpu")
    return seconds


def graft_train(session: Session, data, config: TrainConfig):
    start = time.perf_counter()
    result = Trainer(session, data, config).run()
    return time.perf_counter() - start, result


def caching_seconds(session: Session, data, config: TrainConfig) -> tuple[float, object]:
    """The trainer's pass that caches the frozen trunk's features: from its "Computing the frozen trunk's
    features" message to the first progress report of the training phase."""
    marks: dict[str, float] = {}

    def on_event(event) -> None:
        now = time.perf_counter()
        if isinstance(event, MessageEvent) and event.text.startswith("Computing the frozen trunk"):
            marks.setdefault("start", now)
        elif isinstance(event, ProgressEvent) and event.phase == "train" and "start" in marks:
            marks.setdefault("end", now)

    result = Trainer(session, data, config, on_event).run()
    assert result.cached_features and "end" in marks
    return marks["end"] - marks["start"], result


def exit_rows(args, heads, bench_data, device, bs) -> list[tuple]:
    """(c): the caching pass with every head on ``args.exit_layer`` against the same heads at the end."""
    config = TrainConfig(epochs=1, batch_size=bs, augment=False, device=str(device), patience=0)
    times: dict[str | None, list[float]] = {None: [], args.exit_layer: []}
    for i in range(args.repeats or (1 if args.quick else 2)):
        for layer in ((None, args.exit_layer) if i % 2 == 0 else (args.exit_layer, None)):
            s = make_session(args.model, heads, "heads-only", layer)
            if layer is not None:
                skipped = len(s.unused_layers())
            seconds, _ = caching_seconds(s, bench_data, config)
            times[layer].append(seconds)
    end, early = min(times[None]), min(times[args.exit_layer])
    print(f"(c) caching pass, best of {len(times[None])}: heads at the end {', '.join(f'{t:.2f}' for t in times[None])} s; "
          f"at {args.exit_layer} {', '.join(f'{t:.2f}' for t in times[args.exit_layer])} s ({skipped} layers not computed)")
    return [(f"(c) caching pass, heads on {args.exit_layer}, s", f"end {end:7.2f}", f"exit {early:7.2f}",
             f"speed-up {end / early:5.1f}x", "goal >= 2x", end / early >= 2)]



class _Clocked:
    """Adds up the time spent in the telemetry's own work (taking W0, sampling) during a run."""

    def __init__(self) -> None:
        from engine.training import telemetry

        self.module, self.seconds = telemetry, 0.0
        self.original = telemetry.Telemetry.__init__, telemetry.Telemetry.sample

    def __enter__(self) -> "_Clocked":
        init, sample = self.original

        def timed(fn):
            def wrapper(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.seconds += time.perf_counter() - t0
            return wrapper

        self.module.Telemetry.__init__, self.module.Telemetry.sample = timed(init), timed(sample)
        return self

    def __exit__(self, *exc) -> None:
        self.module.Telemetry.__init__, self.module.Telemetry.sample = self.original


def telemetry_rows(model_name: str, heads, bench_data, bs: int, device, repeats: int, epochs_full: int):
    """(d): the same runs with telemetry off and on, interleaved, best of each, timed from the start of the
    epochs to the end (feature caching left out). On a shared machine the A/B ratio is at the mercy of other
    processes, so the runs with telemetry also add up the time spent in its own work (taking the start
    weights, sampling): that share of the training time is the overhead without noise."""
    rows, details = [], []
    for label, freeze, epochs in (("full fine-tuning", "none", epochs_full), ("heads only, cached", "heads-only", 200)):
        times: dict[bool, list[float]] = {False: [], True: []}
        cpu: dict[bool, list[float]] = {False: [], True: []}  # this process's CPU time: less at others' mercy
        shares: list[float] = []
        samples = 0
        for i in range(repeats):
            for on in ((False, True) if i % 2 == 0 else (True, False)):
                events = []
                stamps: list[tuple[float, float]] = []

                def on_event(event, events=events, stamps=stamps):
                    events.append(event)
                    name = type(event).__name__
                    if (name == "ProgressEvent" and event.phase == "train" and not stamps) or name == "TrainFinished":
                        stamps.append((time.perf_counter(), time.process_time()))

                config = TrainConfig(epochs=epochs, batch_size=bs, augment=freeze == "none", device=str(device),
                                     patience=0, telemetry=on)
                s = make_session(model_name, heads, freeze)
                with _Clocked() as clock:
                    Trainer(s, bench_data, config, on_event).run()
                times[on].append(stamps[-1][0] - stamps[0][0])
                cpu[on].append(stamps[-1][1] - stamps[0][1])
                if on:
                    samples = sum(type(e).__name__ == "TelemetryEvent" for e in events)
                    shares.append(clock.seconds / times[on][-1])
        off, on = min(times[False]), min(times[True])
        cpu_off, cpu_on = min(cpu[False]), min(cpu[True])
        share = max(shares)
        rows.append((f"(d) telemetry, {label}, wall s", f"off {off:7.2f}", f"on {on:7.2f}", f"ratio {off / on:5.3f}",
                     "(A/B, noisy)", None))
        rows.append((f"(d) telemetry, {label}, CPU s", f"off {cpu_off:7.2f}", f"on {cpu_on:7.2f}",
                     f"ratio {cpu_off / cpu_on:5.3f}", "(A/B)", None))
        rows.append((f"(d) telemetry's own time, {label}", f"{100 * share:.3f} % of training", "", "",
                     "goal < 3 %", share < 0.03))
        details.append(f"(d) {label}: {epochs} epoch(s), off {', '.join(f'{t:.2f}' for t in times[False])} s, "
                       f"on {', '.join(f'{t:.2f}' for t in times[True])} s (CPU off "
                       f"{', '.join(f'{t:.2f}' for t in cpu[False])}, on {', '.join(f'{t:.2f}' for t in cpu[True])}), "
                       f"{samples} samples in the last run, "
                       f"telemetry's own time {', '.join(f'{100 * x:.3f}' for x in shares)} % of each run")
    return rows, details


def _rate(fn, images: int, repeats: int) -> float:
    """Images/s of ``fn()`` (which processes ``images`` images), best of ``repeats`` after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return images / best


def option_rates(model_name: str, heads, samples, bs: int, top: int, repeats: int) -> dict[str, float]:
    """(e) each option on its own, on the same pre-decoded augmented batches: images/s of the frozen lower
    half's pass and of the top blocks' training step (forward, backward, AdamW) on its cached output."""
    from engine.training.boundary import boundary_for, lower_runner, split_trunk

    device = torch.device("cpu")
    session = make_session(model_name, heads, "none")
    spec = session.input_spec
    batches = list(loader_for(samples, heads, spec, augment=True, batch_size=bs, device=device, workers=0,
                              shuffle=False))
    n = sum(x.shape[0] for x, _ in batches)
    session = make_top_session(model_name, heads, top)
    model = session.model
    split = split_trunk(model.trunk, boundary_for(session), model.dummy_input(2))
    model.eval()
    rates: dict[str, float] = {}

    def lower_pass(fmt=torch.contiguous_format, bf16=False, runner=None):
        def run():
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                for x, _ in batches:
                    (runner or split.lower)(x.contiguous(memory_format=fmt))
        return run

    rates["lower fp32"] = _rate(lower_pass(), n, repeats)
    model.to(memory_format=torch.channels_last)
    rates["lower channels-last"] = _rate(lower_pass(torch.channels_last), n, repeats)
    rates["lower channels-last bf16"] = _rate(lower_pass(torch.channels_last, True), n, repeats)
    model.to(memory_format=torch.contiguous_format)
    runner, note = lower_runner(split, spec, 10 ** 6, device)
    if runner is not None:
        rates["lower onnxruntime"] = _rate(lower_pass(runner=runner), n, repeats)
    with torch.no_grad():
        cached = [(split.lower(x), t) for x, t in batches]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)

    def upper_steps(fmt=torch.contiguous_format, bf16=False, forward=None):
        forward = forward or (lambda z: model.forward_heads(split.upper(z)))

        def run():
            model.train()
            split.lower_eval()
            for z, t in cached:
                with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    out = forward(z.contiguous(memory_format=fmt))
                loss = plain_loss(heads, out, t)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return run

    rates["top step fp32"] = _rate(upper_steps(), n, repeats)
    rates["top step bf16"] = _rate(upper_steps(bf16=True), n, repeats)
    model.to(memory_format=torch.channels_last)
    rates["top step channels-last"] = _rate(upper_steps(torch.channels_last), n, repeats)
    rates["top step channels-last bf16"] = _rate(upper_steps(torch.channels_last, True), n, repeats)
    try:
        compiled = torch.compile(lambda z: model.forward_heads(split.upper(z)))
        t0 = time.perf_counter()
        upper_steps(torch.channels_last, forward=compiled)()
        rates["torch.compile, first call s"] = time.perf_counter() - t0
        rates["top step channels-last compiled"] = _rate(upper_steps(torch.channels_last, forward=compiled), n, repeats)
    except Exception as exc:  # noqa: BLE001 - no compiler on this machine: say so, measure the rest
        print(f"(e) torch.compile failed: {type(exc).__name__}: {exc}")
    model.to(memory_format=torch.contiguous_format)
    # and full fine-tuning's own step, for comparison: does channels-last or bf16 help it as well?
    full = make_session(model_name, heads, "none").model
    opt_full = torch.optim.AdamW(full.parameters(), lr=1e-4, weight_decay=1e-4)

    def full_steps(fmt=torch.contiguous_format, bf16=False):
        def run():
            full.train()
            for x, t in batches:
                with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    out = full(x.contiguous(memory_format=fmt))
                loss = plain_loss(heads, out, t)
                opt_full.zero_grad(set_to_none=True)
                loss.backward()
                opt_full.step()
        return run

    rates["full step fp32"] = _rate(full_steps(), n, 1)
    rates["full step bf16"] = _rate(full_steps(bf16=True), n, 1)
    full.to(memory_format=torch.channels_last)
    rates["full step channels-last"] = _rate(full_steps(torch.channels_last), n, 1)
    return rates


def make_top_session(model_name: str, heads, top: int) -> Session:
    """Frozen up to the block below the top ``top`` blocks (engine.training.advice.trunk_blocks)."""
    from engine.training.advice import trunk_blocks

    session = make_session(model_name, heads, "none")
    blocks = [n.path for n in trunk_blocks(session)]
    session.do(freeze_preset(f"up-to:{blocks[-top - 1]}"))
    return session


def boundary_rows(args, heads, bench_data, train, device, bs, workers) -> tuple[list[tuple], list[str]]:
    """(e): the top-blocks stage with and without the boundary cache against full fine-tuning."""
    epochs, views, repeats = args.boundary_epochs, args.boundary_views, args.repeats or 1
    n = len(train)
    from engine.training import setup

    times: dict[str, list[float]] = {"plain": [], "before": [], "full": [], "top": [], "cached": []}
    for i in range(repeats):
        s = make_session(args.model, heads, "none")
        seconds, n_plain = plain_train(s, train, heads, epochs=1, batch_size=bs, augment=True, device=device,
                                       workers=workers)
        times["plain"].append(n_plain / seconds)
        for key, channels_last in (("before", False), ("full", True)):  # before: as Graft trained until now
            setup.CHANNELS_LAST_ON_CPU = channels_last
            s = make_session(args.model, heads, "none")
            seconds, result = graft_train(s, bench_data, TrainConfig(epochs=1, batch_size=bs, augment=True,
                                                                     device=str(device), patience=0))
            times[key].append(n / seconds)
        setup.CHANNELS_LAST_ON_CPU = True
        for key, cache in (("top", False), ("cached", "auto")):
            s = make_top_session(args.model, heads, args.top_blocks)
            seconds, result = graft_train(s, bench_data, TrainConfig(
                epochs=epochs, batch_size=bs, augment=True, device=str(device), patience=0, boundary_cache=cache,
                boundary_views=views))
            assert result.boundary_cached == (cache == "auto"), result
            times[key].append(epochs * n / seconds)
    best = {k: max(v) for k, v in times.items()}
    full = best["before"]
    rows = [
        ("(e) plain loop, full fine-tuning, images/s", f"plain {best['plain']:7.2f}", "", "", "(baseline)", None),
        ("(e) Graft full fine-tuning before (contiguous), images/s", f"graft {full:7.2f}",
         f"/plain {full / best['plain']:5.2f}", "", "(= /full)", None),
        ("(e) Graft full fine-tuning, channels-last, images/s", f"graft {best['full']:7.2f}",
         f"/plain {best['full'] / best['plain']:5.2f}", f"/full {best['full'] / full:5.2f}", "", None),
        (f"(e) top {args.top_blocks} blocks, no cache, images/s", f"graft {best['top']:7.2f}",
         f"/plain {best['top'] / best['plain']:5.2f}", f"/full {best['top'] / full:5.2f}", "", None),
        (f"(e) top {args.top_blocks} blocks, boundary cache, images/s", f"graft {best['cached']:7.2f}",
         f"/plain {best['cached'] / best['plain']:5.2f}", f"/full {best['cached'] / full:5.2f}", "goal /full >= 3",
         best["cached"] / full >= 3),
    ]
    details = [f"(e) {n} images, batch {bs}; top-blocks runs: {epochs} epochs over {views} cached augmented views "
               f"(caching pass included), best of {repeats}: " + "; ".join(
                   f"{k} {', '.join(f'{v:.2f}' for v in vals)} img/s" for k, vals in times.items())]
    rates = option_rates(args.model, heads, train, bs, args.top_blocks, max(1, repeats))
    for name, value in rates.items():
        if name.endswith(" s"):
            rows.append((f"(e) {name}", f"{value:7.1f} s", "", "", "", None))
        else:
            base = rates[f"{name.split(' step ')[0]} step fp32"] if " step " in name else rates["lower fp32"]
            rows.append((f"(e) {name}, images/s", f"{value:7.2f}", f"/fp32 {value / base:5.2f}",
                         f"/plain loop {value / best['plain']:5.1f}", "", None))
    return rows, details


def print_rows(rows) -> None:
    w = [max(len(str(r[i])) for r in rows) for i in range(5)]
    for r in rows:
        verdict = "" if r[5] is None else "  ok" if r[5] else "  MISSED"  # None: a figure without a goal
        print("  ".join(str(c).ljust(w[i]) for i, c in enumerate(r[:5])) + verdict)


def warm_up(model_name: str, heads, samples, device):
    """One forward/backward on a throwaway copy: thread pools, allocator and kernels are ready for both."""
    session = make_session(model_name, heads, "none")
    plain_train(session, samples[:16], heads, epochs=1, batch_size=16, augment=False, device=device, workers=0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer images and no repeats (about a minute on a 2-core CPU)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--random-weights", action="store_true", help="for architectures without local weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=None, help="training images (default 128, quick 64; 0: all)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="(a) is run this many times per side, interleaved, best kept (default 3, quick 1)")
    parser.add_argument("--plain-epochs", type=int, default=None,
                        help="epochs the plain loop of (b) really runs, extrapolated to 20 (default: 20 on a GPU, "
                             "3 on a CPU, 2 quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--exit-layer", default="features.4", help="the layer every head reads in (c)")
    parser.add_argument("--only-exit", action="store_true", help="run (c) alone")
    parser.add_argument("--telemetry-only", action="store_true", help="run only (d), the telemetry overhead")
    parser.add_argument("--boundary-only", action="store_true", help="run only (e), the top blocks and the boundary cache")
    parser.add_argument("--top-blocks", type=int, default=3, help="(e) how many top blocks train (default 3)")
    parser.add_argument("--boundary-epochs", type=int, default=8, help="(e) epochs of the top-blocks runs (default 8)")
    parser.add_argument("--boundary-views", type=int, default=4, help="(e) cached augmented views (default 4)")
    args = parser.parse_args(argv)
    global RANDOM
    RANDOM = args.random_weights
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    data = load_data(ensure_demo_data())
    heads = data.heads
    n_images = args.images if args.images is not None else (64 if args.quick else 128)
    train = data.train[:n_images] if n_images else data.train
    bench_data = replace(data, train=train, val=[])  # no validation: both sides do the same work
    bs = args.batch_size
    workers = auto_num_workers(len(train), bs, device=device)
    repeats = args.repeats or (1 if args.quick else 3)
    epochs_a = 1 if device.type == "cpu" else 3
    epochs_b = 20
    plain_b_epochs = args.plain_epochs or (epochs_b if device.type != "cpu" else (2 if args.quick else 5))
    print(f"device {device}, {torch.get_num_threads()} CPU thread(s), model {args.model}, {len(train)} training "
          f"images ({', '.join(f'{h.name}:{h.kind}' for h in heads)}), batch {bs}, {workers} loader worker(s)")
    t_start = time.perf_counter()
    warm_up(args.model, heads, train, device)
    if args.only_exit:
        rows = exit_rows(args, heads, bench_data, device, bs)
        print_rows(rows)
        return 0 if all(r[5] for r in rows) else 1
    if args.boundary_only:
        rows, details = boundary_rows(args, heads, bench_data, train, device, bs, workers)
        print()
        print_rows(rows)
        print("\n" + "\n".join(details))
        return 0 if all(r[5] is not False for r in rows) else 1
    if args.telemetry_only:
        rows, details = telemetry_rows(args.model, heads, bench_data, bs, device, repeats, epochs_a)
        print()
        print_rows(rows)
        print("\n" + "\n".join(details))
        return 0 if all(r[5] is not False for r in rows) else 1

    # (a) full fine-tuning, augmentation on; interleaved repeats, best of each side
    plain_times, graft_times = [], []
    n_plain = n_graft = 0
    for i in range(repeats):
        for side in (("plain", "graft") if i % 2 == 0 else ("graft", "plain")):  # alternate who goes first
            s = make_session(args.model, heads, "none")
            if side == "plain":
                seconds, n_plain = plain_train(s, train, heads, epochs=epochs_a, batch_size=bs, augment=True,
                                               device=device, workers=workers)
                plain_times.append(seconds)
            else:
                seconds, result_a = graft_train(s, bench_data, TrainConfig(
                    epochs=epochs_a, batch_size=bs, augment=True, device=str(device), patience=0))
                assert not result_a.cached_features and result_a.reason == "completed"
                n_graft = result_a.epochs_run * len(train)
                graft_times.append(seconds)
    plain_a, graft_a = min(plain_times), min(graft_times)
    ips_plain, ips_graft = n_plain / plain_a, n_graft / graft_a

    # (b) heads only, frozen trunk, no augmentation, 20 epochs
    s = make_session(args.model, heads, "heads-only")
    graft_b, result_b = graft_train(s, bench_data, TrainConfig(epochs=epochs_b, batch_size=bs, augment=False,
                                                                device=str(device), patience=0))
    assert result_b.cached_features and result_b.epochs_run == epochs_b
    s = make_session(args.model, heads, "heads-only")
    fwd = trunk_pass(s, train, heads, batch_size=max(2 * bs, 64), device=device,
                     workers=auto_num_workers(len(train), bs, device=device))
    s = make_session(args.model, heads, "heads-only")
    plain_b_raw, _ = plain_train(s, train, heads, epochs=plain_b_epochs, batch_size=bs, augment=False,
                                 device=device, workers=workers)
    plain_b = plain_b_raw * epochs_b / plain_b_epochs
    note = f" ({plain_b_epochs} epochs measured, x{epochs_b / plain_b_epochs:.3g})" if plain_b_epochs != epochs_b else ""

    rows = [
        ("(a) full fine-tuning, images/s", f"plain {ips_plain:7.2f}", f"graft {ips_graft:7.2f}",
         f"ratio {ips_graft / ips_plain:5.2f}", "goal >= 0.95", ips_graft / ips_plain >= 0.95),
        (f"(b) heads only, {epochs_b} epochs, s", f"plain {plain_b:7.1f}{note}", f"graft {graft_b:7.2f}",
         f"speed-up {plain_b / graft_b:5.1f}x", "goal >= 10x", plain_b / graft_b >= 10),
        ("(b) graft vs one trunk pass, s", f"trunk {fwd:7.2f}", f"graft {graft_b:7.2f}",
         f"ratio {graft_b / fwd:5.2f}", "goal <= 1.5", graft_b / fwd <= 1.5),
    ]
    rows += exit_rows(args, heads, bench_data, device, bs)
    telemetry, details = telemetry_rows(args.model, heads, bench_data, bs, device, repeats, epochs_a)
    rows += telemetry
    boundary, more = boundary_rows(args, heads, bench_data, train, device, bs, workers)
    rows += boundary
    details += more
    print()
    print_rows(rows)
    print(f"\n(a) {epochs_a} epoch(s) of {len(train)} images, best of {repeats}: plain "
          f"{', '.join(f'{t:.1f}' for t in plain_times)} s; graft {', '.join(f'{t:.1f}' for t in graft_times)} s")
    print(f"(b) graft trained the heads on cached features ({result_b.steps} steps, {result_b.seconds:.2f} s in "
          f"run()); whole bench {time.perf_counter() - t_start:.0f} s")
    print("\n".join(details))
    return 0 if all(r[5] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
