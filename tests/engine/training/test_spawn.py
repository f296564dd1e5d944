"""Graft works where child processes start by spawning (the default on Windows and macOS): DataLoader
workers that decode and augment images, an evaluation with workers, and an export, in a fresh Python
whose start method is ``spawn``. Everything handed to a worker must pickle and import in the child."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = r'''
import multiprocessing as mp
import sys
from pathlib import Path

sys.path.insert(0, {root!r})


def main(work: Path) -> None:
    import torch
    from PIL import Image

    from engine.data.loading import load_data
    from engine.export.onnx_export import export_onnx
    from engine.network.loading import load_network
    from engine.surgery.operations import AddHead, DeleteOutputLayer
    from engine.surgery.session import Session
    from engine.training.config import TrainConfig
    from engine.training.evaluation import evaluate
    from engine.training.trainer import Trainer

    assert mp.get_start_method() == "spawn"
    for cls, colour in (("red one", (220, 30, 30)), ("blue ü", (30, 30, 220))):
        for i in range(8):
            folder = work / "data set" / cls
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 40), tuple(max(0, c - 10 * i) for c in colour)).save(folder / f"{{i}}.png")
    data = load_data(work / "data set", val_fraction=0.25)
    torch.manual_seed(0)
    session = Session(load_network("mobilenet_v3_small", random_init=True))
    session.do(DeleteOutputLayer())
    session.do(AddHead(data.heads[0]))
    config = TrainConfig(epochs=1, batch_size=4, num_workers=2, augment=True, device="cpu", amp=False,
                         cache_features=False, patience=None)
    result = Trainer(session, data, config).run()
    print("trained", result.reason, result.epochs_run, flush=True)
    report = evaluate(session, data, batch_size=4, device="cpu", split="val", num_workers=2)
    print("evaluated", report.n_images, flush=True)
    out = export_onnx(session, work / "model é.onnx", images=[str(s.path) for s in data.val[:2]])
    print("exported", out.size_bytes > 0, flush=True)


if __name__ == "__main__":
    mp.set_start_method("spawn", force=True)
    main(Path(sys.argv[1]))
'''


@pytest.mark.spawn
@pytest.mark.slow
def test_training_evaluation_and_export_with_spawned_workers(tmp_path):
    script = tmp_path / "spawned.py"
    script.write_text(SCRIPT.format(root=str(ROOT)), encoding="utf-8")
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "trained completed 1" in out.stdout
    assert "evaluated 4" in out.stdout
    assert "exported True" in out.stdout
