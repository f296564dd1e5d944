"""Tests run headless: Qt offscreen, no GPU, no network. Shared fixtures: small torchvision networks with
random weights (fast, offline) and a tiny image folder, for the engine's and the command line's tests."""
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Converted trunks are not kept between tests (engine.runtime.trunk_store): each test sees a conversion
# happen, as it asks for; tests/engine/runtime/test_trunk_store.py turns the store on in a folder of its own.
os.environ.setdefault("GRAFT_TRUNK_CACHE", "off")
if os.environ.get("PYTEST_XDIST_WORKER"):  # ./graft test runs the tests in 2 processes (pytest-xdist, -n)
    # Each worker computes on one thread (its children too): two workers with two OpenMP threads each on
    # 2 cores spin against each other.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
if os.environ.get("GRAFT_START_METHOD"):  # e.g. spawn: run the suite as Windows and macOS start children
    import multiprocessing

    multiprocessing.set_start_method(os.environ["GRAFT_START_METHOD"], force=True)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402
import torch  # noqa: E402

from engine.network.loading import load_network  # noqa: E402
from engine.surgery.session import Session  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def own_cache_dir(tmp_path_factory):
    """The run's caches (the demo data of ``--data demo``, feature caches) in its own folder, one per test
    process: parallel workers, and other runs on the machine, never build into one folder at once."""
    if "GRAFT_CACHE_DIR" in os.environ:
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "graft-cache"))
        yield


@pytest.fixture
def resnet_session() -> Session:
    torch.manual_seed(0)
    return Session(load_network("resnet18", random_init=True))


@pytest.fixture
def mobilenet_session() -> Session:
    torch.manual_seed(0)
    return Session(load_network("mobilenet_v3_small", random_init=True))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Other jobs share this machine's 2 cores: with 2 OpenMP threads an oversubscribed forward pass can
    take 20x longer than with one. One thread keeps these tests fast; the setting is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def demo_subset(tmp_path_factory):
    """``make(per_class, mode=None)``: a new image folder ``<root>/circle|square/`` holding the first
    ``per_class`` images of each of the demo's two shapes (converted to the Pillow ``mode``, e.g. "L",
    when given): tiny data for training tests."""
    from PIL import Image

    from engine.data.demo_data import ensure_demo_folder

    demo = ensure_demo_folder(tmp_path_factory.mktemp("demo"))

    def make(per_class: int, mode: str | None = None) -> Path:
        root = tmp_path_factory.mktemp("subset")
        for cls in ("circle", "square"):
            (root / cls).mkdir()
            for f in sorted((demo / cls).iterdir())[:per_class]:
                if mode is None:
                    shutil.copy(f, root / cls / f.name)
                else:
                    Image.open(f).convert(mode).save(root / cls / f.name)
        return root

    return make


@pytest.fixture(scope="session")
def demo_manifest(tmp_path_factory):
    """``make()``: the demo manifest ``<new folder>/demo-v<N>/labels.csv``, as
    ``ensure_demo_data(new folder)`` gives it, in a folder of its own (a test may change it). The demo
    is generated once per test process (seconds) and copied; ``ensure_demo_data`` finds each copy current."""
    from engine.data.demo_data import ensure_demo_data

    built = ensure_demo_data(tmp_path_factory.mktemp("demo-built"))

    def make() -> Path:
        dest = tmp_path_factory.mktemp("demo")
        shutil.copytree(built.parent, dest / built.parent.name)
        manifest = ensure_demo_data(dest)
        assert manifest == dest / built.parent.name / built.name
        return manifest

    return make


@pytest.fixture(scope="module")
def tiny_folder(demo_subset) -> Path:
    """An image folder of two classes of the demo shapes (circle, square), 8 images each."""
    return demo_subset(8)


@pytest.fixture(scope="session")
def small_resnet():
    """A builder: ``small_resnet(heads)`` is resnet18 with random weights (seed 0) at a 64 px input (fast),
    its output layer deleted and the given heads added (seed 0), for the export tests."""
    from engine.network.preprocess import InputSpec
    from engine.surgery.operations import AddHead, DeleteOutputLayer

    def build(heads) -> Session:
        torch.manual_seed(0)
        session = Session(load_network("resnet18", random_init=True))
        session.model.input_spec = InputSpec(size=64, resize=73)
        session.do(DeleteOutputLayer())
        for spec in heads:
            session.do(AddHead(spec, seed=0))
        return session

    return build


# -- Hypothesis (the property-based tests, tests/**/test_fuzz_*.py) ----------------------------------------
from hypothesis import HealthCheck, settings  # noqa: E402

# ci: 30 examples per property, derandomized so a run is the same run every time (the suite stays
# stable and fast); thorough: HYPOTHESIS_PROFILE=thorough, thousands of random examples for a long run.
# No deadline: the machine's cores are shared, and fuzz_support.bounded kills what hangs.
settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=int(os.environ.get("GRAFT_FUZZ_EXAMPLES", "2000")),
                          deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_terminal_summary(terminalreporter):
    """How many fuzzed inputs of each kind ran, and how each ended (fuzz_support.COUNTS)."""
    counts = sys.modules.get("fuzz_support")
    if counts is None or not counts.COUNTS:
        return
    terminalreporter.section("fuzzed inputs (kind, outcome, examples)")
    for key, n in sorted(counts.COUNTS.items()):
        terminalreporter.write_line(f"{key}\t{n}")
