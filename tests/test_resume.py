"""A run that is killed resumes where it stopped, with the same numbers it would have had."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import office31
from results import store
from results import tasks
from runs.checkpoint import Checkpoint, StopOnSignal
from conftest import ROOT, make_tree
from test_sweep import rows_of

RUN = ["--model=resnet18", "--weights=none", "--resize_size=20", "--crop_size=16", "--epochs=3",
       "--iters_per_epoch=4", "--batch_size=4", "--num_workers=0", "--device=cpu", "--amp=off", "--save_model=True",
       "--checkpoint_every=0"]  # a checkpoint at every epoch end


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("resume") / "office31", {"amazon": 3, "webcam": 2}, size=(24, 24))


def run(root, out, *extra):
    [result] = office31.main([f"--data_root={root}", f"--out_dir={out}", *RUN, *extra])
    return result


def weights(out):
    [path] = list(out.glob("*.pt"))
    return torch.load(path, weights_only=True)


def assert_same_run(a, b, out_a, out_b):
    assert (a["correct"], a["total"]) == (b["correct"], b["total"])
    assert [(e["loss"], e["adaptation_loss"], e["source_acc"], e["target_acc"]) for e in a["epochs"]] == \
           [(e["loss"], e["adaptation_loss"], e["source_acc"], e["target_acc"]) for e in b["epochs"]]
    first, second = weights(out_a), weights(out_b)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.slow
@pytest.mark.parametrize("method, cache, how, extra", [
    ("source_only", "True", "SIGKILL", []), ("dann", "False", "SIGKILL", ["--tasks=A-W"]),  # a sweep of one run
    ("dann", "disk", "SIGTERM", []), ("source_only", "False", "SIGTERM", [])])
def test_a_killed_run_resumes_to_the_same_numbers(tmp_path, pair, capsys, method, cache, how, extra):
    extra = [f"--method={method}", f"--cache={cache}", *extra]
    whole = run(pair, tmp_path / "whole", *extra)
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "office31.py"), f"--data_root={pair}",
                                f"--out_dir={out}", *RUN, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("*.ckpt")):  # the end of epoch 1
        time.sleep(0.01)
    if how == "SIGKILL":
        process.kill()
    else:  # stops at the end of the step it is in: one of epoch 2, two epochs before the run would end
        process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode != 0 and not list(out.glob("*.json")), stdout  # stopped before the end
    if how == "SIGTERM":
        assert stderr.startswith("stopped: SIGTERM stopped A→W") and "Run the same command again to resume" in stderr
    capsys.readouterr()
    resumed = run(pair, out, *extra)
    assert f"resuming A→W {method} seed 0 from epoch " in capsys.readouterr().out
    assert_same_run(whole, resumed, tmp_path / "whole", out)
    assert not list(out.glob("*.ckpt*")) and len(rows_of(out)) == 1  # the finished run leaves no checkpoint


def edited(path, change):
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


@pytest.fixture(scope="module")
def whole_and_checkpoint(pair, tmp_path_factory):
    """A two-epoch run never interrupted (its out_dir), and the epoch-1 checkpoint another one kept (its path)."""
    whole, other = tmp_path_factory.mktemp("whole"), tmp_path_factory.mktemp("kept")
    result = run(pair, whole, "--epochs=2")
    run(pair, other, "--epochs=2", "--keep_checkpoint=True")
    [path] = list(other.glob("*.ckpt"))
    return result, whole, path


@pytest.mark.parametrize("damage, phrase", [
    (lambda path: open(path, "r+b").truncate(1000), "it cannot be read"),
    (lambda path: edited(path, lambda s: s["identity"]["experiment"].update(lr=0.5)),
     "it is of another experiment (lr 0.5 here 0.001)"),
    (lambda path: edited(path, lambda s: s["identity"]["data"].update(webcam="3 classes (0), 9 images")),
     "it is of other data"),
    (lambda path: edited(path, lambda s: s["identity"].update(format=0)), "it is of another code version's format"),
    (lambda path: edited(path, lambda s: s["model"].pop("fc.weight")), "its model has other layers or shapes"),
    (lambda path: edited(path, lambda s: s.pop("optimizer")), "it lacks optimizer"),
])
def test_a_checkpoint_that_is_not_this_runs_is_ignored_with_a_message(tmp_path, pair, whole_and_checkpoint, capsys,
                                                                      damage, phrase):
    whole, whole_out, saved = whole_and_checkpoint
    path = tmp_path / saved.name
    shutil.copy(saved, path)
    damage(path)
    capsys.readouterr()
    again = run(pair, tmp_path, "--epochs=2")
    printed = capsys.readouterr().out
    assert f"ignoring the checkpoint {path} of A→W source_only seed 0: {phrase}" in printed, printed
    assert "Starting it from the beginning." in printed and "resuming" not in printed
    assert_same_run(whole, again, whole_out, tmp_path)


def test_checkpoint_names_never_collide_and_a_run_in_progress_is_not_taken(tmp_path, pair, capsys):
    c = dict(office31.resolve(office31.FLAGS), out_dir=str(tmp_path), source="amazon", target="webcam", seed=0,
             precision="fp32")
    data = {"amazon": "a", "webcam": "w", "dslr": "d"}
    runs = [office31.with_method(c, "dann"), office31.with_method(c, "cdan"), office31.with_method(c, "source_only"),
            dict(office31.with_method(c, "dann"), seed=1), dict(office31.with_method(c, "dann"), target="dslr"),
            dict(office31.with_method(c, "dann"), trade_off=0.5), dict(office31.with_method(c, "dann"), lr=0.01),
            dict(office31.with_method(c, "cdan"), entropy=True),
            dict(office31.with_method(c, "dann"), precision="bf16")]
    paths = [Checkpoint(r, data, "task").path for r in runs]
    assert len(set(paths)) == len(runs)
    flags = office31.resolve(office31.parse_flags([f"--data_root={pair}", f"--out_dir={tmp_path}", *RUN]))
    mine = office31.with_method(dict(flags, precision="fp32"), "source_only")
    fingerprints = tasks.names_and_fingerprints(pair)[1]
    with Checkpoint(mine, fingerprints, "A→W").lock() as free:  # another process's run
        assert free
        assert office31.main([f"--data_root={pair}", f"--out_dir={tmp_path}", *RUN, "--seeds=2"])[0]["config"][
            "seed"] == 1
    assert "skipping A→W source_only seed 0: another process is training it now" in capsys.readouterr().out
    assert [r["seed"] for r in store.read_rows(str(tmp_path / "results.jsonl"))] == [1]


@pytest.mark.slow
def test_keep_checkpoint_keeps_the_last_one_and_checkpoint_every_spaces_them(tmp_path, pair):
    run(pair, tmp_path / "a", "--keep_checkpoint=True")
    [path] = list((tmp_path / "a").glob("*.ckpt"))
    assert torch.load(path, weights_only=True)["epoch"] == 2  # the last epoch end before the final one
    assert not list((tmp_path / "a").glob("*.lock"))
    run(pair, tmp_path / "b", "--keep_checkpoint=True", "--checkpoint_every=10")  # epochs of a second: none due
    assert not list((tmp_path / "b").glob("*.ckpt"))


def test_a_second_ctrl_c_stops_at_once():
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        assert stop.requested == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
