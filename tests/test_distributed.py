"""One run on several processes: torchrun with the gloo backend on the CPU, 2 processes, against one process with
the same global batch."""
import json
import os
import socket
import subprocess
import sys

import pytest

import checks
import office31
import results
from conftest import ROOT, make_tree
from errors import UserError

FLAGS = ["--model=resnet18", "--weights=none", "--resize_size=36", "--crop_size=32", "--epochs=2",
         "--iters_per_epoch=3", "--batch_size=8", "--num_workers=0", "--device=cpu", "--amp=off", "--checkpoint=False"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*argv):
    """office31.py under torchrun, 2 processes on this machine (offline: the rendezvous is on localhost)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", os.path.join(ROOT, "office31.py"), *argv]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def epochs_of(out):
    [row] = results.read_rows(os.path.join(out, "results.jsonl"))
    with open(os.path.join(out, row["run_file"]), encoding="utf-8") as f:
        return row, json.load(f)["epochs"]


@pytest.fixture
def pair(tmp_path):
    return make_tree(tmp_path / "office31", {"amazon": 8, "webcam": 4}, size=(40, 40))


@pytest.mark.slow
def test_two_processes_give_one_process_numbers_where_nothing_depends_on_the_slice(pair, tmp_path):
    """Every stage frozen (BatchNorm in eval mode), no bottleneck, source only: each process's gradient of its half
    of the batch, averaged, is the gradient of the whole batch, so the run is the one-process run up to rounding."""
    argv = [f"--data_root={pair}", *FLAGS, "--freeze=5", "--validators=none"]
    office31.main([*argv, f"--out_dir={tmp_path / 'one'}"])
    printed = torchrun(*argv, f"--out_dir={tmp_path / 'two'}")
    (one, one_epochs), (two, two_epochs) = epochs_of(tmp_path / "one"), epochs_of(tmp_path / "two")
    assert [e["loss"] for e in two_epochs] == pytest.approx([e["loss"] for e in one_epochs], rel=1e-5)
    assert [e["source_acc"] for e in two_epochs] == pytest.approx([e["source_acc"] for e in one_epochs])
    assert [e["target_acc"] for e in two_epochs] == [e["target_acc"] for e in one_epochs]
    assert (two["correct"], two["total"]) == (one["correct"], one["total"]) and two["total"] == 12
    assert two["processes"] == 2 and "processes" not in one
    assert printed.count("A→W accuracy: ") == 1  # process 0 speaks for both


@pytest.mark.slow
def test_an_adapting_sweep_on_two_processes_writes_each_run_once(pair, tmp_path):
    out = tmp_path / "out"
    printed = torchrun(f"--data_root={pair}", *FLAGS, "--method=dann", "--tasks=A-W,W-A", f"--out_dir={out}")
    rows = results.read_rows(os.path.join(out, "results.jsonl"))
    assert sorted((r["source"], r["target"]) for r in rows) == [("amazon", "webcam"), ("webcam", "amazon")]
    assert all(r["processes"] == 2 for r in rows) and printed.count("| dann |") == 0
    assert len([n for n in os.listdir(out) if n.endswith(".json")]) == 2


def test_what_several_processes_cannot_take_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    c = office31.resolve(dict(office31.FLAGS, batch_size=30))
    with pytest.raises(UserError, match=r"--batch_size=30 is the global batch, split evenly over the 4 processes"):
        checks.check_config(c)
    with pytest.raises(UserError, match=r"--method=afn passes each domain through the network on its own"):
        checks.check_config(dict(c, batch_size=32, method="afn"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    checks.check_config(c)  # one process takes any batch
