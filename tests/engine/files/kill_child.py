"""The process the kill tests kill: it builds a small network once, then for each ``go`` line on stdin
forks a writer that saves (a project) or exports (ONNX) version after version to one path, printing
``saved K`` after each; the test SIGKILLs that writer at a random moment. Version K has its marker head's
bias set to K, so a file tells which version it holds in its weights as well as in its recipe."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)  # a forked writer then never needs a thread pool it did not inherit
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from engine.network.heads import HeadSpec  # noqa: E402
from engine.network.loading import load_network  # noqa: E402
from engine.network.preprocess import InputSpec  # noqa: E402
from engine.surgery.operations import AddHead, DeleteOutputLayer  # noqa: E402
from engine.surgery.session import Session  # noqa: E402


def build() -> Session:
    torch.manual_seed(0)
    session = Session(load_network("mobilenet_v3_small", random_init=True))
    session.model.input_spec = InputSpec(size=64, resize=73)
    session.do(DeleteOutputLayer())
    session.do(AddHead(HeadSpec("v", "regression", outputs=1), seed=0))
    return session


def set_version(session: Session, k: int) -> None:
    with torch.no_grad():
        session.model.heads["v"][-1].bias.fill_(float(k))


def write(session: Session, mode: str, path: Path, k: int) -> None:
    set_version(session, k)
    if mode == "project":
        from engine.project.project_file import save_project

        save_project(session, path, extra={"version": k})
    else:
        from engine.export.onnx_export import export_onnx

        export_onnx(session, path, verify=False)


def main() -> None:
    mode, path = sys.argv[1], Path(sys.argv[2])
    session = build()
    write(session, mode, path, 0)  # the first "old" file
    print("ready", flush=True)
    k = 0
    for line in sys.stdin:
        if not line.startswith("go"):
            break
        pid = os.fork()
        if pid == 0:  # the writer: save versions k+1, k+2, ... until killed
            try:
                while True:
                    k += 1
                    write(session, mode, path, k)
                    print(f"saved {k}", flush=True)
            finally:
                os._exit(1)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"dead {os.waitstatus_to_exitcode(status)}", flush=True)
        k += 1000  # the next writer's versions differ from every earlier one


if __name__ == "__main__":
    main()
