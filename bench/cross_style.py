"""Results that hold on images of another style: ``python bench/cross_style.py [--fetch-fonts]``

Trains on letters drawn in text faces and tests on letters drawn in handwriting and display faces
(``bench/glyphs.py``: 26 classes, 10 sans/serif training families, 12 other-style test families, 3,016
64-px images: 1,560 train, 520 validation from the training families, 936 test; built once, ~6 s, and
cached under Graft's cache folder, keyed by the parameters and the fonts' bytes).

Fonts: ``--fetch-fonts`` installs the 22 pinned ``@expo-google-fonts/<family>`` packages' regular TTF
with ``npm pack`` into ``<cache>/cross-style/fonts`` (a few MB, once); the bench itself never goes to the
network, and without the fonts it names the missing families and exits 1.

Each row runs as a user would run it, as a subprocess of the real CLI (``main.py train`` on the
``trainval`` folder, then ``main.py evaluate --errors`` on its validation split and on the test folder):

* ``default``: ``main.py train --data trainval``, the window's Train button (heads only, 10 epochs, the
  frozen trunk's features cached);
* ``anchor``: :func:`anchor`, a hand-written ~40-line frozen-head script (Lite0's pooled features,
  softmax regression with an L2 penalty by L-BFGS, the penalty picked on validation), run as
  ``bench/cross_style.py --anchor`` in its own process;
* ``budget-2m``, ``budget-10m``: ``main.py train --budget 2m`` / ``10m`` (skipped with a note while the
  CLI has no ``--budget``).

The table: accuracy on the same-style validation split and on the other-style test (also by look:
handwriting, display), and the wall time to a trained model (the train subprocess; for the anchor, from
its start to the fitted regression; evaluation is not counted). ``--rows`` picks rows, ``--keep DIR``
keeps the projects, ``--threads N`` sets OMP_NUM_THREADS for the children, ``--json FILE`` writes the
numbers. On a shared machine: ``nice -n 10 .venv/bin/python bench/cross_style.py``.

Measured (docs/cross_style.md has the tables and notes), one run of all four rows, 2 shared cores at load
average 3.5-6.6, niced: val / other-style test / wall s: default 98.3 % / 44.4 % / 85; ``--budget 2m``
98.8 % / 48.8 % / 96; ``--budget 10m`` 99.2 % / 45.9 % / 531 (under that load it trained only the top block);
anchor 99.0 % / 45.0 % / 234 (eager PyTorch).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import glyphs  # noqa: E402

ROWS = ("default", "anchor", "budget-2m", "budget-10m")
DESCRIPTIONS = {"default": "main.py train (one-click default)", "anchor": "hand-written frozen-head script",
                "budget-2m": "main.py train --budget 2m", "budget-10m": "main.py train --budget 10m"}


def anchor(trainval: Path, test: Path) -> dict:
    """(b) The frozen-head script a user would write by hand: Lite0 (pretrained, as Graft loads it), its
    pooled 1280 features, then a softmax regression with an L2 penalty fitted by L-BFGS, the penalty
    picked on the validation split. Returns accuracies, per-image test results and ``fitted_at``."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from engine.network.efficientnet_lite import build_efficientnet_lite
    from engine.network.preprocess import preprocess_file

    torch.manual_seed(0)
    net, spec = build_efficientnet_lite(0, pretrained=True)  # eval mode
    classes = sorted(p.name for p in (trainval / "train").iterdir())

    def features(folder: Path):
        paths = sorted(folder.glob("*/*.png"))
        out = []
        with torch.no_grad():
            for i in range(0, len(paths), 64):
                x = torch.from_numpy(np.stack([preprocess_file(p, spec) for p in paths[i:i + 64]]))
                out.append(net.avgpool(net.features(x)).flatten(1))
        return torch.cat(out), torch.tensor([classes.index(p.parent.name) for p in paths]), paths

    x_train, y_train, _ = features(trainval / "train")
    x_val, y_val, val_paths = features(trainval / "val")
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6

    def fit(l2: float):
        w = torch.zeros(x_train.shape[1], len(classes), requires_grad=True)
        b = torch.zeros(len(classes), requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")
        xs = (x_train - mean) / std

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(xs @ w + b, y_train) + l2 * w.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return lambda x: ((x - mean) / std @ w + b).argmax(1)

    fits = [(l2, fit(l2)) for l2 in (1e-4, 1e-3, 1e-2)]
    with torch.no_grad():
        scored = [((predict(x_val) == y_val).float().mean().item(), l2, predict) for l2, predict in fits]
        val_acc, l2, predict = max(scored, key=lambda s: s[0])
        val_right = (predict(x_val) == y_val).tolist()
        fitted_at = time.time()
        x_test, y_test, test_paths = features(test)
        right = (predict(x_test) == y_test).tolist()
    return {"val": val_acc, "l2": l2, "fitted_at": fitted_at,
            "val_images": {str(p): bool(r) for p, r in zip(val_paths, val_right)},
            "test_images": {str(p): bool(r) for p, r in zip(test_paths, right)}}


# -- running the rows as a user would -------------------------------------------------------------------

def _family(path: str | Path) -> str:
    return Path(path).stem.rsplit("-", 1)[0]


def has_budget(env: dict[str, str]) -> bool:
    """Whether this checkout's ``main.py train`` has ``--budget`` yet."""
    done = subprocess.run([sys.executable, str(ROOT / "main.py"), "train", "--help"], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    return "--budget" in done.stdout


ERROR_LINE = re.compile(r"^(?:graft: )?error: (.+)")


class RowFailed(RuntimeError):
    """A child exited with an error: ``reason`` is the last meaningful line of its log (the one line a
    GraftError prints, or a traceback's exception line), the message that line after the log's tail."""

    def __init__(self, command: list[str], rc: int, lines: list[str]) -> None:
        self.reason = last_meaningful(lines) or f"exited {rc} without a message"
        tail = "\n".join(lines[-8:])
        super().__init__(f"{' '.join(command[1:4])} … exited {rc}: {self.reason}\n{tail}")


def last_meaningful(lines: list[str]) -> str:
    """The line that says what went wrong: the last ``graft: error: …`` line (the CLI's one-line errors; on
    stderr, it may come before stdout's last lines) without its prefix, else the last line that is not blank,
    not a traceback's frame or source line (those are indented)."""
    errors = [m.group(1).strip() for m in map(ERROR_LINE.match, lines) if m]
    if errors:
        return errors[-1]
    for line in reversed(lines):
        text = line.strip()
        if not text or line[:1].isspace() or text.startswith(("Traceback", "^", "~")):
            continue
        return text
    return ""


def run_logged(command: list[str], log: Path, env: dict[str, str]) -> float:
    """Run ``command`` (output into ``log``); its wall seconds. :class:`RowFailed` on failure."""
    start = time.perf_counter()
    with log.open("w") as out:
        rc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    seconds = time.perf_counter() - start
    if rc != 0:
        raise RowFailed(command, rc, log.read_text(errors="replace").splitlines())
    return seconds


def evaluate(project: Path, data: Path, split: str, images: list[Path], work: Path, name: str,
             env: dict[str, str]) -> dict[str, bool]:
    """``main.py evaluate`` of ``project`` on ``data`` (``split``); ``{image: right}`` from its ``--errors``."""
    errors = work / f"{name}-errors.csv"
    run_logged([sys.executable, str(ROOT / "main.py"), "evaluate", str(project), "--data", str(data),
                "--split", split, "--errors", str(errors)], work / f"{name}-evaluate.log", env)
    with errors.open(newline="") as f:
        wrong = {str((data / row["image"]).resolve()) for row in csv.DictReader(f)}
    right = {str(p): str(p.resolve()) not in wrong for p in images}
    printed = re.search(r"^\s*accuracy ([0-9.]+)$", (work / f"{name}-evaluate.log").read_text(), re.M)
    if printed and abs(float(printed.group(1)) - sum(right.values()) / max(1, len(right))) > 1e-3:
        raise RuntimeError(f"{name}: the --errors file and the printed accuracy {printed.group(1)} disagree")
    return right


def summary(right: dict[str, bool], looks: dict[str, str]) -> dict[str, float]:
    """Accuracy over all images, by the look of each image's family and by family (``family:NAME``)."""
    groups = {"all": list(right.values())}
    for path, ok in right.items():
        groups.setdefault(looks.get(_family(path), "?"), []).append(ok)
        groups.setdefault(f"family:{_family(path)}", []).append(ok)
    return {name: sum(oks) / len(oks) for name, oks in groups.items() if oks}


def run_row(row: str, built: "glyphs.GlyphSet", work: Path, env: dict[str, str]) -> dict:
    """One row of the table: trains (timed), then evaluates on validation and test."""
    val_images = sorted((built.trainval / "val").glob("*/*.png"))
    test_images = sorted(built.test.glob("*/*.png"))
    looks = {family: look for family, (look, _) in glyphs.FAMILIES.items()}
    if row == "anchor":
        out = work / "anchor.json"
        start = time.time()
        run_logged([sys.executable, str(Path(__file__).resolve()), "--anchor", str(built.trainval), str(built.test),
                    "--json", str(out)], work / "anchor.log", env)
        result = json.loads(out.read_text())
        val = summary(result["val_images"], looks)
        test = summary(result["test_images"], looks)
        return {"row": row, "val": val["all"], "val_groups": val, "test": test,
                "seconds": result["fitted_at"] - start, "note": f"L2 {result['l2']:g}"}
    project = work / f"{row}.graft"
    command = [sys.executable, str(ROOT / "main.py"), "train", "--data", str(built.trainval), "--out", str(project)]
    if row.startswith("budget-"):
        command += ["--budget", row.split("-", 1)[1]]
    seconds = run_logged(command, work / f"{row}-train.log", env)
    val = summary(evaluate(project, built.trainval, "val", val_images, work, f"{row}-val", env), looks)
    test = summary(evaluate(project, built.test, "all", test_images, work, f"{row}-test", env), looks)
    note = ""
    if row.startswith("budget-"):
        budget = {"2m": 120, "10m": 600}[row.split("-", 1)[1]]
        note = f"{seconds / budget:.0%} of the budget"
    return {"row": row, "val": val["all"], "val_groups": val, "test": test, "seconds": seconds, "note": note}


def table(results: list[dict]) -> str:
    lines = ["| row | what | val acc (same style) | test acc (other style) | handwriting | display | wall s | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['row']} | {DESCRIPTIONS[r['row']]} | – | – | – | – | – | {r['skipped']} |")
            continue
        t = r["test"]
        lines.append(f"| {r['row']} | {DESCRIPTIONS[r['row']]} | {r['val']:.1%} | {t['all']:.1%} | "
                     f"{t.get('handwriting', float('nan')):.1%} | {t.get('display', float('nan')):.1%} | "
                     f"{r['seconds']:.0f} | {r['note']} |")
    return "\n".join(lines)


def family_table(results: list[dict]) -> str:
    """Other-style test accuracy by font family, one column per row that ran."""
    ran = [r for r in results if "test" in r]
    families = sorted({k for r in ran for k in r["test"] if k.startswith("family:")})
    lines = ["| test family | look | " + " | ".join(r["row"] for r in ran) + " |", "|---|---|" + "---|" * len(ran)]
    for key in families:
        name = key.split(":", 1)[1]
        lines.append(f"| {name} | {glyphs.FAMILIES.get(name, ('?', ''))[0]} | "
                     + " | ".join(f"{r['test'].get(key, float('nan')):.0%}" for r in ran) + " |")
    return "\n".join(lines)


def glyph_set(params: "glyphs.GlyphParams") -> "glyphs.GlyphSet":
    """The cached glyph set; SystemExit with one line naming the missing families."""
    train, missing_train = glyphs.find_fonts(glyphs.train_families())
    test, missing_test = glyphs.find_fonts(glyphs.test_families())
    missing = missing_train + missing_test
    if missing:
        raise SystemExit(f"error: {len(missing)} font families are missing from {glyphs.fonts_dir()} "
                         f"({', '.join(missing)}): run bench/cross_style.py --fetch-fonts once (npm)")
    return glyphs.build(params, train, test)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--fetch-fonts", action="store_true", help="install the missing font families with npm")
    parser.add_argument("--build-only", action="store_true", help="build (or find) the glyph set and stop")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows (default {','.join(ROWS)})")
    parser.add_argument("--train-per-family", type=int, default=glyphs.GlyphParams.train_per_family)
    parser.add_argument("--test-per-family", type=int, default=glyphs.GlyphParams.test_per_family)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the runs")
    parser.add_argument("--keep", default=None, metavar="DIR", help="keep projects and logs in DIR")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    parser.add_argument("--anchor", nargs=2, metavar=("TRAINVAL", "TEST"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.anchor:
        result = anchor(Path(args.anchor[0]), Path(args.anchor[1]))
        Path(args.json).write_text(json.dumps(result))
        return 0
    if args.fetch_fonts:
        try:
            fetched = glyphs.fetch_fonts()
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"Fetched {len(fetched)} font families into {glyphs.fonts_dir()}" if fetched
              else f"All {len(glyphs.FAMILIES)} font families are in {glyphs.fonts_dir()}")
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        print(f"error: unknown rows {', '.join(unknown)} (choose from {', '.join(ROWS)})", file=sys.stderr)
        return 1
    params = glyphs.GlyphParams(train_per_family=args.train_per_family, test_per_family=args.test_per_family)
    try:
        built = glyph_set(params)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 1
    c = built.counts
    print(f"Glyph set {built.root} ({'cached' if built.reused else f'built in {built.seconds:.1f} s'}): "
          f"{len(params.classes)} classes, {c['train']} train / {c['val']} validation images from "
          f"{', '.join(glyphs.train_families())}; {c['test']} test images from {', '.join(glyphs.test_families())}")
    if args.build_only:
        return 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    budget = has_budget(env)
    keep = Path(args.keep).expanduser() if args.keep else None
    results = []
    with tempfile.TemporaryDirectory(prefix="graft-cross-style-") as tmp:
        work = keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"CPU: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
              f"OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}", flush=True)
        for row in rows:
            if row.startswith("budget-") and not budget:
                results.append({"row": row, "skipped": "skipped: main.py train has no --budget yet"})
                print(f"{row}: skipped (main.py train has no --budget yet)", flush=True)
                continue
            load = os.getloadavg()[0]
            print(f"{row}: {DESCRIPTIONS[row]} … (load average {load:.1f}, {time.strftime('%H:%M:%S')})", flush=True)
            try:
                result = run_row(row, built, work, env)
            except RuntimeError as exc:
                result = {"row": row, "skipped": f"failed: {getattr(exc, 'reason', '') or str(exc).splitlines()[0]}"}
                print(exc, file=sys.stderr)
            else:
                print(f"{row}: val {result['val']:.1%}, test {result['test']['all']:.1%}, "
                      f"{result['seconds']:.0f} s (load average {os.getloadavg()[0]:.1f})", flush=True)
            result["load"] = [load, os.getloadavg()[0]]  # 1-minute load average before and after the row
            results.append(result)
    print(f"\nLoad average at the end {os.getloadavg()[0]:.1f}\n")
    print(table(results))
    if any("test" in r for r in results):
        print("\n" + family_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"counts": c, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
