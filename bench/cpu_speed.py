"""Graft on a CPU: the allocator and the frozen trunk in onnxruntime. ``python bench/cpu_speed.py [--quick]``

One run prints, side by side (the bundled default network, the demo data, batch 32):

(a) the caching pass (the frozen trunk's features for every demo image) of Graft against onnxruntime
    running the same exported trunk in a plain loop (same images, same decoding). Goal: >= 0.9x.
(b) heads-only training, 20 epochs on the demo data, against Graft as it was (PyTorch trunk, glibc's
    default allocator: ``GRAFT_ALLOCATOR=system GRAFT_ONNXRUNTIME=off``). Goal: >= 3x faster.
(c) full fine-tuning (everything trainable, augmentation on): images/s of Graft against a plain PyTorch
    loop written the usual way (no allocator settings). Goal: >= 2x. Also the plain loop with Graft's
    allocator setting, to show where the difference comes from.
(d) ``--allocators``: a trunk pass at batch 64 and a training step at batch 32 under each allocator
    choice (glibc default, Graft's mallopt setting, jemalloc/tcmalloc/mimalloc when one is installed
    and preloaded): how the setting was chosen.

Every side runs in its own process (the allocator belongs to a process) under ``/usr/bin/time -v``
where it exists, which gives user and system CPU seconds and the peak memory (maximum RSS) of each.
The machine's load average is printed: on a shared machine wall times drift, CPU seconds less so.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

TODAY = {"GRAFT_ALLOCATOR": "system", "GRAFT_ONNXRUNTIME": "off"}
PRELOADS = {"jemalloc": ["libjemalloc.so.2"], "tcmalloc": ["libtcmalloc_minimal.so.4", "libtcmalloc.so.4"],
            "mimalloc": ["libmimalloc.so.2", "libmimalloc.so"]}


# -- the sides, each run in a child process ------------------------------------------------------------

def _setup(allocator: bool):
    if allocator:
        from engine.runtime.allocator import configure_allocator

        configure_allocator()  # what main.py does first
    from dataclasses import replace

    from engine.data.loading import load_data
    from engine.data.demo_data import ensure_demo_data

    data = load_data(ensure_demo_data())
    return data, replace


def _session(heads, freeze: str):
    import train_speed

    return train_speed.make_session("default", heads, freeze)


def child_caching(args) -> dict:
    """Graft's caching pass (a Trainer on cached features, 1 epoch: TrainStarted to the first step) twice,
    the first converting the trunk; between them, onnxruntime on the same trunk in a plain loop."""
    import numpy as np
    import onnxruntime as ort
    import torch

    import train_speed
    from engine.runtime.onnx_trunk import cached_conversion
    from engine.training.config import TrainConfig
    from engine.training.events import StepEvent, TrainStarted
    from engine.training.trainer import Trainer

    data, replace = _setup(True)
    n = args.images or len(data.train) + len(data.val)
    data = replace(data, train=data.train[:n], val=[])
    out: dict = {"images": n}

    session = _session(data.heads, "heads-only")

    def graft_pass() -> tuple[float, str]:
        marks: dict[str, float] = {}

        def on_event(e) -> None:
            if isinstance(e, TrainStarted):
                marks["start"] = time.perf_counter()
            elif isinstance(e, StepEvent) and "step" not in marks:
                marks["step"] = time.perf_counter()

        result = Trainer(session, data, TrainConfig(epochs=1, batch_size=32, patience=0, device="cpu"),
                         on_event).run()
        return marks["step"] - marks["start"], result.trunk_backend

    out["graft_first"], out["backend"] = graft_pass()
    conversion = cached_conversion(session.model)
    out["convert_seconds"] = conversion.seconds if conversion is not None and conversion.onnx else None
    if conversion is None or conversion.onnx is None:
        return out
    # onnxruntime as a user would run the exported trunk: default options, whole batches of 64
    sess = ort.InferenceSession(conversion.onnx, providers=["CPUExecutionProvider"])
    loader = train_speed.loader_for(data.train, data.heads, session.input_spec, augment=False, batch_size=64,
                                    device=torch.device("cpu"), workers=0, shuffle=False)
    start = time.perf_counter()
    for x, _ in loader:
        sess.run(None, {"image": np.ascontiguousarray(x.numpy())})
    out["ort"] = time.perf_counter() - start
    out["graft_second"] = graft_pass()[0]  # the same trunk, converted already: the pass alone
    out["probe"] = {str(k): round(1000 * v, 2) for k, v in conversion.probe.per_image().items()}
    out["best_batch"] = conversion.probe.best
    return out


def child_heads(args) -> dict:
    """Heads-only training, 20 epochs, on the demo data (with its validation split)."""
    from engine.training.config import TrainConfig
    from engine.training.trainer import Trainer

    today = os.environ.get("GRAFT_ALLOCATOR") == "system"
    data, replace = _setup(not today)
    if args.images:
        data = replace(data, train=data.train[:args.images], val=data.val[:max(1, args.images // 4)])
    session = _session(data.heads, "heads-only")
    start = time.perf_counter()
    result = Trainer(session, data, TrainConfig(epochs=20, batch_size=32, patience=0, device="cpu")).run()
    seconds = time.perf_counter() - start
    assert result.cached_features and result.epochs_run == 20
    return {"seconds": seconds, "backend": result.trunk_backend, "images": len(data.train) + len(data.val),
            "val_loss": result.best_val_loss}


def child_finetune(args) -> dict:
    """Full fine-tuning, augmentation on, one epoch: images/s (after a warm-up step that is not counted)."""
    import torch

    import train_speed
    from engine.training.config import TrainConfig
    from engine.training.trainer import Trainer

    side = args.child.split(":")[1]
    data, replace = _setup(side != "plain")
    train = data.train[:args.images or 160]
    session = _session(data.heads, "none")
    # warm-up, the same for both: one step at the measured batch size (threads, kernels, the heap's growth)
    train_speed.plain_train(_session(data.heads, "none"), train[:32], data.heads, epochs=1, batch_size=32,
                            augment=True, device=torch.device("cpu"), workers=0)
    if side == "graft":
        result = Trainer(session, replace(data, train=train, val=[]),
                         TrainConfig(epochs=1, batch_size=32, augment=True, patience=0, device="cpu")).run()
        seconds, images = result.seconds, result.epochs_run * len(train)
    else:
        seconds, images = train_speed.plain_train(session, train, data.heads, epochs=1, batch_size=32, augment=True,
                                                  device=torch.device("cpu"), workers=0)
    return {"images_per_second": images / seconds, "images": images, "seconds": seconds}


def child_allocator(args) -> dict:
    """A trunk pass at batch 64 and a training step at batch 32, three of each after a warm-up."""
    import torch

    if args.child.endswith(":graft"):
        from engine.runtime.allocator import configure_allocator

        configure_allocator()
    from engine.network.loading import load_network

    model = load_network("default").module
    x64, x32 = torch.randn(64, 3, 224, 224), torch.randn(32, 3, 224, 224)
    y = torch.randint(0, 1000, (32,))
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    out = {}
    model.eval()
    with torch.inference_mode():
        model(x64)
        start = time.perf_counter()
        for _ in range(3):
            model(x64)
        out["forward64"] = 3 * 64 / (time.perf_counter() - start)
    model.train()

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x32), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(3):
        step()
    out["train32"] = 3 * 32 / (time.perf_counter() - start)
    return out


CHILDREN = {"caching": child_caching, "heads": child_heads, "finetune": child_finetune, "allocator": child_allocator}


# -- the parent: runs the children and prints the table ------------------------------------------------

def run_child(mode: str, args, env: dict[str, str] | None = None) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in ("GRAFT_ALLOCATOR", "GRAFT_ONNXRUNTIME", "GRAFT_TRUNK_CACHE", "LD_PRELOAD")}
    environ.update(env or {})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--images", str(args.images or 0)]
    timed = shutil.which("time") is not None and Path("/usr/bin/time").exists()
    if timed:
        cmd = ["/usr/bin/time", "-v"] + cmd
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    done = subprocess.run(cmd, capture_output=True, text=True, env=environ)
    result_line = next((line for line in reversed(done.stdout.splitlines()) if line.startswith("{")), None)
    if done.returncode != 0 or result_line is None:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"the {mode} side failed")
    result = json.loads(result_line)
    result["load"] = load
    if timed:
        def field(name: str) -> float:
            m = re.search(rf"{re.escape(name)}: ([\d.:]+)", done.stderr)
            return float(m.group(1)) if m else float("nan")
        result.update(user=field("User time (seconds)"), sys=field("System time (seconds)"),
                      max_rss_mib=field("Maximum resident set size (kbytes)") / 1024)
    print(f"  ran {mode:<16} {json.dumps({k: v for k, v in result.items() if k != 'probe'})}", flush=True)
    return result


def cpu(r: dict) -> str:
    return f"user {r.get('user', float('nan')):.0f} s, sys {r.get('sys', float('nan')):.0f} s, " \
           f"peak {r.get('max_rss_mib', float('nan')):.0f} MiB"


def preloadable() -> dict[str, str]:
    found = {}
    for name, files in PRELOADS.items():
        for folder in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib",
                       "/usr/lib/aarch64-linux-gnu"):
            hit = next((Path(folder) / f for f in files if (Path(folder) / f).exists()), None)
            if hit:
                found[name] = str(hit)
                break
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images (a rough check in a few minutes)")
    parser.add_argument("--images", type=int, default=None, help="images per side (default: the demo's 360; "
                        "fine-tuning 160)")
    parser.add_argument("--only", default="abc", help="which parts to run, e.g. 'a' or 'bc' (default abc)")
    parser.add_argument("--allocators", action="store_true", help="also (d): each allocator choice")
    parser.add_argument("--repeats", type=int, default=1, help="(c) runs each side this many times, interleaved, "
                        "and keeps the best (default 1)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child.split(":")[0]](args)), flush=True)
        return 0
    if args.quick and args.images is None:
        args.images = 160
    import torch

    print(f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads; "
          f"load average at start {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    rows = []
    goals = []
    if "a" in args.only:
        r = run_child("caching", args, {"GRAFT_TRUNK_CACHE": "off"})  # it times the conversion
        if r.get("convert_seconds") is None:
            rows.append(("(a) caching pass", "the trunk did not convert: PyTorch", "", "", ""))
            goals.append(False)
        else:
            ratio = r["ort"] / r["graft_second"]
            rows.append((f"(a) caching pass, {r['images']} images, s", f"onnxruntime {r['ort']:.2f}",
                         f"graft {r['graft_second']:.2f} (first {r['graft_first']:.2f}, converting "
                         f"{r['convert_seconds']:.1f})", f"ratio {ratio:.2f}x", "goal >= 0.9x"))
            goals.append(ratio >= 0.9)
            rows.append(("    batch size probe, ms/image", json.dumps(r["probe"]), f"kept {r['best_batch']}", "", ""))
    if "b" in args.only:
        import tempfile

        today = run_child("heads:today", args, TODAY)
        with tempfile.TemporaryDirectory(prefix="graft-bench-trunks-") as store:
            # first run on this machine (the trunk store empty: it converts), then a later run (it finds it)
            graft = run_child("heads:graft", args, {"GRAFT_TRUNK_CACHE": store})
            warm = run_child("heads:graft", args, {"GRAFT_TRUNK_CACHE": store})
        ratio, ratio_warm = today["seconds"] / graft["seconds"], today["seconds"] / warm["seconds"]
        rows.append((f"(b) heads only, 20 epochs, {graft['images']} images, s", f"today {today['seconds']:.1f}",
                     f"graft {graft['seconds']:.1f} ({graft['backend']} trunk, converting)",
                     f"speed-up {ratio:.1f}x", "goal >= 3x"))
        rows.append(("    the same trunk converted before (a later run)", "",
                     f"graft {warm['seconds']:.1f} ({warm['backend']} trunk, stored)",
                     f"speed-up {ratio_warm:.1f}x", "goal >= 3x"))
        rows.append(("    cpu and peak memory", cpu(today), cpu(graft), "", ""))
        goals.append(ratio >= 3)
    if "c" in args.only:
        sides: dict[str, list[dict]] = {"plain": [], "graft": [], "plain+alloc": []}
        for i in range(args.repeats):  # interleaved, who goes first alternating; the best of each side kept
            for side in (sides if i % 2 == 0 else reversed(list(sides))):
                sides[side].append(run_child(f"finetune:{side}", args))
        plain, graft, tuned = (max(sides[k], key=lambda r: r["images_per_second"]) for k in sides)
        ratio = graft["images_per_second"] / plain["images_per_second"]
        rows.append((f"(c) full fine-tuning, {graft['images']} images, images/s",
                     f"plain {plain['images_per_second']:.2f}", f"graft {graft['images_per_second']:.2f}",
                     f"ratio {ratio:.2f}x", "goal >= 2x"))
        rows.append(("    plain loop + Graft's allocator setting", f"{tuned['images_per_second']:.2f}", "", "", ""))
        rows.append(("    cpu and peak memory", cpu(plain), cpu(graft), "", ""))
        goals.append(ratio >= 2)
    if args.allocators:
        choices = [("glibc default", "allocator:system", {}), ("graft (mallopt)", "allocator:graft", {})]
        choices += [(name, f"allocator:{name}", {"LD_PRELOAD": path}) for name, path in preloadable().items()]
        for label, mode, env in choices:
            r = run_child(mode, args, env)
            rows.append((f"(d) {label}", f"forward b64 {r['forward64']:.1f} img/s",
                         f"train b32 {r['train32']:.1f} img/s", cpu(r), ""))
    print()
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(str(c).ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    print(f"\nload average at the end {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return 0 if all(goals) else 1


if __name__ == "__main__":
    sys.exit(main())
