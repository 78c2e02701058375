"""Office-31-shaped trees and checkpoints made by the tests themselves: nothing is downloaded."""
import functools
import multiprocessing
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from datasets import demo  # noqa: E402  (from the repository root, just put on the path)
from runs import precision  # noqa: E402
from datasets.demo import draw  # noqa: E402,F401  (tests draw single images too)

CLASSES = ["back_pack", "bike", "calculator"]


def make_tree(root, domains, classes=CLASSES, **kwargs):
    """The product's tree generator (demo.py) with the tests' three classes: domains {name: images per class},
    flat class colours shifted per domain (layout, size, start_seed, shift as demo.make_tree takes them)."""
    return demo.make_tree(root, domains, classes, **kwargs)


def together(target, args, count, timeout):
    """Start `count` forked processes of target(*args, answers) at once, wait for each to exit cleanly, and return
    what each put on answers (in the order they put it): for tests of processes racing for one lock."""
    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    children = [context.Process(target=target, args=(*args, answers)) for _ in range(count)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=timeout)
        assert child.exitcode == 0
    return [answers.get(timeout=10) for _ in children]


def table_file(out, kind):
    """The one table file (kind md, csv or tex) or figure (png) a sweep or a report wrote into folder out."""
    found = sorted(os.listdir(out))
    [name] = [n for n in found if n.startswith("curves_" if kind == "png" else "table_") and n.endswith("." + kind)]
    return os.path.join(out, name)


@pytest.fixture(params=[2.5, 0.6], ids=["bf16-faster", "bf16-slower"])
def cpu_bf16_speedup(request, monkeypatch):
    """What --amp=auto measures on a CPU, made to say that bf16 runs 2.5x or 0.6x as fast as fp32 on a CPU with
    bf16 kernels, whatever CPU runs the tests: both branches of the choice are tested on every machine. Every other
    test pins --amp=off (or bf16) where its numbers or titles depend on the precision."""
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: request.param)
    return request.param


@pytest.fixture
def bf16_anywhere(monkeypatch):
    """--amp=bf16 allowed on any CPU: bf16 autocast runs on every x86 CPU (with bf16 kernels, or converted to fp32
    and back where it has none, slower), so the bf16 tests run on every machine, not only where the CPU has
    AVX512-BF16 or AMX. Only the product's refusal to be asked for bf16 on such a CPU is lifted."""
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)


def pytest_addoption(parser):
    parser.addoption("--bf16-everywhere", action="store_true",
                     help="every in-process run that leaves --amp at auto trains in bf16, as on a CPU where bf16 "
                          "measures 5x faster than fp32 (tests that set the measurement themselves keep theirs)")


@pytest.fixture(autouse=True)
def bf16_everywhere(request, monkeypatch):
    """pytest --bf16-everywhere: the whole suite as it runs on a CPU whose bf16 kernels --amp=auto chooses."""
    if request.config.getoption("--bf16-everywhere"):
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
        monkeypatch.setattr(precision, "cpu_bf16_speedup", functools.cache(lambda: 5.0))


@pytest.fixture
def tree(tmp_path):
    """A small three-domain tree in the official layout: amazon 7, webcam 5, dslr 3 images per class."""
    return make_tree(tmp_path / "office31", {"amazon": 7, "webcam": 5, "dslr": 3})


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every fetch fails (datasets, ImageNet checkpoints, caffemodels) unless a test serves its own files."""
    from datasets import download

    def offline(*args, **kwargs):
        raise OSError("the tests never touch the network")
    monkeypatch.setattr(download, "fetch_drive_archive", offline)
    monkeypatch.setattr(download, "fetch_url", offline)
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)


@pytest.fixture(autouse=True)
def offline_torch_home(tmp_path, monkeypatch):
    """Every test gets its own empty torch hub cache, so nothing reads or writes the user's."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    torch.hub.set_dir(str(tmp_path / "torch_home" / "hub"))
