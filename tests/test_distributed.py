"""One run on several processes: torchrun with the gloo backend on the CPU, 2 processes, against one process with
the same global batch."""
import copy
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

from runs import checks
from runs import distributed
import office31
from results import store
from conftest import ROOT, make_tree
from common.errors import UserError

FLAGS = ["--model=resnet18", "--weights=none", "--resize_size=36", "--crop_size=32", "--epochs=2",
         "--iters_per_epoch=3", "--batch_size=8", "--num_workers=0", "--device=cpu", "--amp=off", "--checkpoint=False"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(*argv, script=os.path.join(ROOT, "office31.py")):
    """office31.py (or script) under torchrun, 2 processes on this machine (offline: the rendezvous is on
    localhost)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}", str(script), *argv]


def torchrun(*argv, script=os.path.join(ROOT, "office31.py"), timeout=600):
    """The output of torchrun_command, which must succeed."""
    done = subprocess.run(torchrun_command(*argv, script=script), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def epochs_of(out):
    [row] = store.read_rows(os.path.join(out, "results.jsonl"))
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
@pytest.mark.parametrize("device, tolerance", [("cpu", 1e-5), pytest.param(
    "cuda", 1e-2, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))])
def test_batchnorm_normalises_over_the_global_batch(pair, tmp_path, device, tolerance):
    """layer4's BatchNorm and the bottleneck's train: on two processes they normalise over the global batch
    (GlobalBatchNorm on the CPU; SyncBatchNorm on a GPU, which the two processes share over gloo), so the run is the
    one-process run up to rounding. With each process normalising its own slice, the losses differed by 16% and 66%
    on the CPU. On an H200 they differed by 1.0e-3 and 3.9e-3: its convolutions run in TF32 (PyTorch's default), whose
    rounding changes with the batch's shape; the one-process run there differed from the CPU's by 8e-3."""
    argv = [f"--data_root={pair}", *FLAGS, f"--device={device}", "--freeze=4", "--bottleneck=256", "--validators=none"]
    office31.main([*argv, f"--out_dir={tmp_path / 'one'}"])
    torchrun(*argv, f"--out_dir={tmp_path / 'two'}")
    (_, one_epochs), (_, two_epochs) = epochs_of(tmp_path / "one"), epochs_of(tmp_path / "two")
    differences = [abs(b["loss"] / a["loss"] - 1) for a, b in zip(one_epochs, two_epochs)]
    print(f"{device}: the losses' relative differences, 2 processes against 1: {differences}")
    assert max(differences) < tolerance
    accuracies = [(a["target_acc"], b["target_acc"]) for a, b in zip(one_epochs, two_epochs)]
    assert all(a == b if device == "cpu" else abs(a - b) <= 1 / 12 for a, b in accuracies)  # (GPU: one image of 12)


def worker(torchrun_pid, rank):
    """The pid of the process of this rank that torchrun started (Linux: read from /proc)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/environ", "rb") as f:
                environment = f.read().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == torchrun_pid and f"RANK={rank}".encode() in environment:
            return int(pid)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/environ"), reason="finds torchrun's processes in /proc")
def test_a_signal_to_one_process_stops_the_run_at_one_step_and_it_resumes_to_the_same_numbers(pair, tmp_path):
    """Ctrl-C or SIGTERM reaching one of the two processes: both stop at the end of the same step, process 0 names
    the checkpoint of the last epoch end, and the same command resumes it to the numbers of a run never stopped."""
    argv = [f"--data_root={pair}", *FLAGS, "--epochs=6", "--iters_per_epoch=60", "--checkpoint=True",
            "--checkpoint_every=0", "--freeze=5", "--validators=none"]
    torchrun(*argv, f"--out_dir={tmp_path / 'whole'}")
    run = subprocess.Popen(torchrun_command(*argv, f"--out_dir={tmp_path / 'stopped'}"), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.time() + 300
    while not glob.glob(str(tmp_path / "stopped" / "*.ckpt")) and run.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # (the end of epoch 1: 5 epochs are left to stop in)
    os.kill(worker(run.pid, 1), signal.SIGINT)
    _, err = run.communicate(timeout=300)
    stopped = [line for line in err.splitlines() if line.startswith("stopped: ")]
    assert run.returncode != 0 and len(stopped) == 1  # (said once, by process 0)
    assert re.match(r"stopped: a signal to another of the run's processes stopped A→W source_only seed 0 at epoch "
                    r"\d, step \d+ of 360; its checkpoint at the end of epoch \d is in ", stopped[0])
    assert store.read_rows(os.path.join(tmp_path / "stopped", "results.jsonl")) == []
    torchrun(*argv, f"--out_dir={tmp_path / 'stopped'}")
    (whole, whole_epochs), (resumed, resumed_epochs) = epochs_of(tmp_path / "whole"), epochs_of(tmp_path / "stopped")
    assert [e["loss"] for e in resumed_epochs] == [e["loss"] for e in whole_epochs]
    assert (resumed["correct"], resumed["total"]) == (whole["correct"], whole["total"])


@pytest.fixture
def one_process_group():
    """A gloo process group of this process alone (torch.distributed's collectives then run, summing over one)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("momentum", [0.1, None])
def test_global_batchnorm_is_batchnorm_on_one_process(one_process_group, momentum):
    """Forward, input and weight gradients, and running statistics (momentum and cumulative) as BatchNorm's, in
    training and in eval mode; the layers replaced in place keep their parameters (the optimizer's)."""
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=momentum),
                                    torch.nn.Flatten(), torch.nn.Linear(4 * 16, 5), torch.nn.BatchNorm1d(5))
    for bn in (reference[1], reference[4]):
        torch.nn.init.uniform_(bn.weight), torch.nn.init.uniform_(bn.bias)
    model = copy.deepcopy(reference)
    weights = list(model.parameters())
    distributed.global_batchnorm(model)
    assert [type(m).__name__ for m in model] == ["Conv2d", "GlobalBatchNorm", "Flatten", "Linear", "GlobalBatchNorm"]
    assert all(a is b for a, b in zip(model.parameters(), weights))
    for _ in range(3):
        x = torch.randn(6, 3, 6, 6)
        xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
        outs = [net(x) for net, x in zip((reference, model), xs)]
        for out in outs:
            (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        torch.testing.assert_close(outs[1], outs[0])
        torch.testing.assert_close(xs[1].grad, xs[0].grad)
    for a, b in zip(reference.parameters(), model.parameters()):
        torch.testing.assert_close(b.grad, a.grad)
    for a, b in zip(reference.buffers(), model.buffers()):
        torch.testing.assert_close(b, a)
    reference.eval(), model.eval()
    torch.testing.assert_close(model(x), reference(x))


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param(
    "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))])
def test_an_adapting_sweep_on_two_processes_writes_each_run_once(pair, tmp_path, device):
    out = tmp_path / "out"
    printed = torchrun(f"--data_root={pair}", *FLAGS, "--method=dann", "--tasks=A-W,W-A", f"--out_dir={out}",
                       f"--device={device}")
    rows = store.read_rows(os.path.join(out, "results.jsonl"))
    assert sorted((r["source"], r["target"]) for r in rows) == [("amazon", "webcam"), ("webcam", "amazon")]
    assert all(r["processes"] == 2 for r in rows) and printed.count("| dann |") == 0
    assert len([n for n in os.listdir(out) if n.endswith(".json")]) == 2


ONE_PROCESS_READS_A_ROW_MORE = """
import os
import sys
sys.path.insert(0, sys.argv[1])
import office31
from runs import sweep
if os.environ["RANK"] == "1":  # as if another shard appended A→W's row between process 0's read and this one's
    read_rows = sweep.read_rows
    sweep.read_rows = lambda path: read_rows(sys.argv[2])
office31.main(sys.argv[3:])
"""


@pytest.mark.slow
def test_the_processes_of_a_sweep_follow_process_0s_list_of_runs(pair, tmp_path):
    """Each process reads the results file for the runs left to do; another shard can append a row between their
    reads. Process 0's list is the one they all train, else each would wait for the other at another run."""
    argv = [f"--data_root={pair}", *FLAGS, "--freeze=5", "--validators=none"]
    office31.main([*argv, "--tasks=A-W", f"--out_dir={tmp_path / 'other'}"])
    (tmp_path / "sweep.py").write_text(ONE_PROCESS_READS_A_ROW_MORE)
    torchrun(ROOT, str(tmp_path / "other" / "results.jsonl"), *argv, "--tasks=A-W,W-A",
             f"--out_dir={tmp_path / 'out'}", script=tmp_path / "sweep.py", timeout=300)
    rows = store.read_rows(os.path.join(tmp_path / "out", "results.jsonl"))
    assert sorted((r["source"], r["target"]) for r in rows) == [("amazon", "webcam"), ("webcam", "amazon")]


ONE_PROCESS_STOPS = """
import sys
import torch
import torch.distributed as dist
sys.path.insert(0, sys.argv[1])
import office31
from common.errors import Diverged, Stopped
dist.init_process_group("gloo")
torch.manual_seed(0)
net = torch.nn.Linear(4, 3)
batches = [(torch.randn(2, 4), torch.tensor([0, 1])) for _ in range(6)]
stop = type("Stop", (), {"requested": None})()


def batches_of(rank):  # on one process only: a loss not finite at step 2, or a stop asked during step 2
    for step, (x, y) in enumerate(batches):
        if rank == 1 and step == 2:
            if sys.argv[2] == "nan":
                x[0, 0] = float("nan")
            else:
                stop.requested = "SIGTERM"
        yield x, y


try:
    optimizer = torch.optim.SGD([{"params": net.parameters(), "initial_lr": 0.1}])
    office31.train_one_epoch(torch.nn.parallel.DistributedDataParallel(net), optimizer, batches_of(dist.get_rank()),
                             0, 6, False, torch.contiguous_format, stop=stop, distributed_run=True)
    print(f"process {dist.get_rank()}: finished")
except Diverged as e:
    print(f"process {dist.get_rank()}: diverged at step {e.args[0]}")
except Stopped as e:
    print(f"process {dist.get_rank()}: stopped at step {e.args[0]}")
dist.barrier()
dist.destroy_process_group()  # (left to the interpreter's exit, gloo's threads once aborted a process: SIGABRT)
"""


@pytest.mark.slow
@pytest.mark.parametrize("what, said", [("nan", "diverged"), ("signal", "stopped")])
def test_a_loss_not_finite_or_a_stop_on_one_process_stops_every_process_at_that_step(tmp_path, what, said):
    """The finite check and the stop are decided together under torchrun: the process whose slice diverged (or that
    a signal reached) and the other both stop at the same step. Checked by each process alone, one went on and the
    two waited for each other at different collectives: a signal that reaches the processes a moment apart (Ctrl-C
    at a step's end) would do that too."""
    (tmp_path / "stop.py").write_text(ONE_PROCESS_STOPS)
    printed = torchrun(ROOT, what, script=tmp_path / "stop.py", timeout=180)
    lines = sorted(re.findall(r"process \d: (?:\w+ at step \d+|finished)", printed))  # (the two may share a line)
    assert lines == [f"process 0: {said} at step 2", f"process 1: {said} at step 2"]


def test_what_several_processes_cannot_take_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    c = office31.resolve(dict(office31.FLAGS, batch_size=30))
    with pytest.raises(UserError, match=r"--batch_size=30 is the global batch, split evenly over the 4 processes"):
        checks.check_config(c)
    with pytest.raises(UserError, match=r"--method=afn passes each domain through the network on its own"):
        checks.check_config(dict(c, batch_size=32, method="afn"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    checks.check_config(c)  # one process takes any batch


@pytest.mark.parametrize("adapting", [False, True])
def test_each_process_gets_its_own_slice_of_every_batch(monkeypatch, adapting):
    """distributed.shard on each of 4 processes: a quarter of every global batch, labels with their images, target
    images too; the quarters are disjoint and together the whole batch, in its order."""
    x, y, x_target = torch.arange(8).view(8, 1), torch.arange(8) + 100, torch.arange(8) + 200
    batches = [((x, y), x_target)] if adapting else [(x, y)]
    slices = []
    for rank in range(4):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        monkeypatch.setattr(distributed, "size", lambda: 4)
        [batch] = distributed.shard(batches)
        (images, labels), target_images = batch if adapting else (batch, x_target[2 * rank:2 * rank + 2])
        assert len(images) == len(labels) == len(target_images) == 2
        assert torch.equal(labels, images.view(-1) + 100) and torch.equal(target_images, images.view(-1) + 200)
        slices.append(images.view(-1).tolist())
    assert [i for part in slices for i in part] == list(range(8))


COUNTS_IMAGES = """
import os
import sys
sys.path.insert(0, sys.argv[1])
import office31
train = office31.train_one_epoch


def counted(model, optimizer, batches, *args, **kwargs):  # this process's source and target images of each step
    def seen():
        for batch in batches:
            (x, _), x_target = batch
            with open(os.path.join(sys.argv[2], os.environ["RANK"]), "a") as f:
                f.write(f"{len(x)} {len(x_target)} {float(x.sum())} {float(x_target.sum())}\\n")
            yield batch
    return train(model, optimizer, seen(), *args, **kwargs)


office31.train_one_epoch = counted
office31.main(sys.argv[3:])
"""


@pytest.mark.slow
def test_each_process_trains_on_its_half_of_every_batch(pair, tmp_path):
    """What each of the two processes' forward passes see: 4 of the 8 source images of every step and 4 of the 8
    target images, not the other process's. (The equivalence tests cannot tell: with global BatchNorm and averaged
    gradients, both processes training on the whole batch gives the same numbers.)"""
    (tmp_path / "count.py").write_text(COUNTS_IMAGES)
    (tmp_path / "seen").mkdir()
    torchrun(ROOT, str(tmp_path / "seen"), f"--data_root={pair}", *FLAGS, "--epochs=1", "--method=dann",
             "--freeze=5", "--validators=none", f"--out_dir={tmp_path / 'out'}", script=tmp_path / "count.py",
             timeout=300)
    steps = [[line.split() for line in (tmp_path / "seen" / rank).read_text().splitlines()] for rank in "01"]
    assert [len(s) for s in steps] == [3, 3]
    assert all(a[:2] == b[:2] == ["4", "4"] and a[2:] != b[2:] for a, b in zip(*steps))


SLOW_EVALUATION = """
import datetime
import sys
import time
sys.path.insert(0, sys.argv[1])
import torch.distributed as dist
import office31
init = dist.init_process_group
dist.init_process_group = lambda backend, **kwargs: init(  # the training's collectives: a short timeout here
    backend, **dict(kwargs, timeout=datetime.timedelta(seconds=float(sys.argv[2]))))
evaluate = office31.evaluate


def slow(*args, **kwargs):  # process 0's evaluation after epoch 1, slower than that
    if not slow.done:
        time.sleep(3 * float(sys.argv[2]))
    slow.done = True
    return evaluate(*args, **kwargs)


slow.done = False
office31.evaluate = slow
office31.main(sys.argv[3:])
"""


@pytest.mark.slow
def test_the_others_wait_for_an_evaluation_longer_than_a_collective_waits(pair, tmp_path):
    """Process 0 evaluates alone: the others wait for it however long that takes (a VisDA or DomainNet evaluation
    takes longer than NCCL's 10 minutes). Here the training's collectives wait 5 s and the evaluation after epoch 1
    takes 15 s; waiting in one of them, process 1 failed when they timed out."""
    (tmp_path / "slow.py").write_text(SLOW_EVALUATION)
    printed = torchrun(ROOT, "5", f"--data_root={pair}", *FLAGS, "--freeze=5", "--validators=none",
                       f"--out_dir={tmp_path / 'out'}", script=tmp_path / "slow.py", timeout=300)
    row, epochs = epochs_of(tmp_path / "out")
    assert row["processes"] == 2 and (row["total"], len(epochs)) == (12, 2)
    assert all(e["target_acc"] is not None for e in epochs) and printed.count("A→W accuracy: ") == 1


ONE_PROCESS_ERRS = """
import os
import sys
sys.path.insert(0, sys.argv[1])
from common import errors
import office31
errors.GRACE_SECONDS = 1
office31.main(sys.argv[2:] + (["--batch_size=7"] if os.environ["RANK"] == "1" else []))
"""


@pytest.mark.parametrize("argv, said", [
    (["--nonsense=1"], "error: unknown argument '--nonsense=1'."),  # read before torch is imported
    pytest.param(["--batch_size=7"], "error: --batch_size=7 is the global batch", marks=pytest.mark.slow),
    pytest.param([], "error: --batch_size=7 is the global batch", marks=pytest.mark.slow)],  # process 1's alone
    ids=["a flag read before torch", "a flag checked by main", "process 1's alone"])
def test_a_mistake_under_torchrun_is_said_once(tmp_path, argv, said):
    """Every process meets a bad flag: process 0 says it, and torchrun ends the other, which waits for that silent
    (each said it before). A mistake that process 1 alone meets (a test's) it says itself, after a grace period."""
    (tmp_path / "errs.py").write_text(ONE_PROCESS_ERRS)
    script = tmp_path / "errs.py" if not argv else os.path.join(ROOT, "office31.py")
    done = subprocess.run(torchrun_command(*([ROOT] if not argv else []), *argv, "--device=cpu",
                                           f"--out_dir={tmp_path / 'out'}", script=script),
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode != 0 and (done.stdout + done.stderr).count(said) == 1, done.stderr[-3000:]
