"""The promises at their edges: no run lost to an empty out_dir or a full disk, none trained twice by two processes,
no rerun that resumes, no crash when two processes write the same table, no temporary file left by a kill, and
bad seeds and devices refused before any work."""
import json
import os

import pytest
import torch

from runs import checkpoint
from runs import checks
import office31
from common import files
from results import run_files
from runs import sweep
from results import tables
from runs.checkpoint import Checkpoint
from conftest import make_tree
from test_resume import RUN
from test_sweep import rows_of

FULL_DISK = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("edges") / "office31", {"amazon": 3, "webcam": 2}, size=(24, 24))


def run(root, out, *extra):
    return office31.main([f"--data_root={root}", f"--out_dir={out}", *RUN, *extra])


def no_decoding(monkeypatch):
    monkeypatch.setattr(sweep, "load_domain", lambda *a, **k: pytest.fail("decoded images"))


@pytest.mark.parametrize("flag, phrase", [
    ("--out_dir=", "--out_dir is empty: give the folder"),
    ("--out_dir=  ", "--out_dir is empty"),
    ("--seed=18446744073709551616", "--seed=18446744073709551616: must be from 0 to 18446744073709551614"),
    ("--seed=-1", "--seed=-1: must be from 0"),
    ("--device=meta", "--device=meta: expected auto, cpu, cuda, cuda:N or mps."),
    ("--device=mps", "--device=mps but PyTorch has no MPS device here"),
    ("--device=cuda:7", "--device=cuda:7"),
    ("--device=tpu", "--device=tpu: expected auto, cpu, cuda, cuda:N or mps."),
])
def test_bad_out_dir_seed_and_device_are_refused_before_any_work(pair, tmp_path, monkeypatch, flag, phrase):
    if flag == "--device=mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an MPS device")
    no_decoding(monkeypatch)
    with pytest.raises(SystemExit) as stop:
        office31.main([f"--data_root={pair}", f"--out_dir={tmp_path / 'out'}", *RUN, flag])
    assert str(stop.value.code).startswith(f"error: {phrase}")
    assert not (tmp_path / "out").exists()


def test_the_largest_seed_trains(pair, tmp_path):
    [result] = run(pair, tmp_path, f"--seed={checks.MAX_SEED - 1}", "--epochs=1")
    assert result["config"]["seed"] == checks.MAX_SEED - 1 and rows_of(tmp_path)[0]["seed"] == checks.MAX_SEED - 1


def test_a_checkpoint_that_cannot_be_written_warns_once_and_the_run_finishes(pair, tmp_path, monkeypatch, capsys):
    def full_disk(state, path):
        with open(path, "wb") as f:
            f.write(b"partial")  # what a full disk leaves: half a file, removed by save
        raise FULL_DISK
    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    [result] = run(pair, tmp_path, "--save_model=False")
    out = capsys.readouterr().out
    assert out.count("warning: could not write the checkpoint") == 1  # two epoch ends tried, one warning
    assert "unexpected pos 64 vs 0); it needs about " in out and " MB. The run goes on" in out
    assert out.rstrip().endswith(f"A→W accuracy: {100 * result['accuracy']:.2f}% ({result['correct']}/6)")
    assert len(rows_of(tmp_path)) == 1 and not list(tmp_path.glob("*.ckpt*"))


@pytest.mark.parametrize("where", ["run file", "results file"])
def test_a_result_that_cannot_be_written_prints_the_numbers_and_leaves_no_row(pair, tmp_path, monkeypatch, capsys,
                                                                               where):
    no_space = OSError(28, "No space left on device")
    if where == "run file":
        monkeypatch.setattr(run_files, "write_new", lambda *a: (_ for _ in ()).throw(no_space))
    else:
        monkeypatch.setattr(sweep, "append_row", lambda *a: (_ for _ in ()).throw(no_space))
    with pytest.raises(SystemExit) as stop:
        run(pair, tmp_path, "--save_model=True")
    message, out = str(stop.value.code), capsys.readouterr().out
    assert message.startswith("error: A→W source_only seed 0 finished, but its result could not be written to ")
    assert "(No space left on device)" in message and "nothing of this run is in the results file" in message
    accuracy = [line for line in out.splitlines() if line.startswith("A→W accuracy: ")]
    assert len(accuracy) == 1 and accuracy[0].endswith("source_only seed 0 (not saved)")
    [saved] = [json.loads(line.split(": ", 1)[1]) for line in out.splitlines() if line.startswith("result (not saved)")]
    assert saved["total"] == 6 and len(saved["epochs"]) == 3 and accuracy[0].startswith(
        f"A→W accuracy: {100 * saved['accuracy']:.2f}% ({saved['correct']}/6)")
    assert rows_of(tmp_path) == [] and not list(tmp_path.glob("*.json")) and not list(tmp_path.glob("*.pt"))
    monkeypatch.undo()  # space again: the same command resumes from the last checkpoint and writes the row
    run(pair, tmp_path)
    assert "resuming A→W source_only seed 0 from epoch 3/3" in capsys.readouterr().out and len(rows_of(tmp_path)) == 1


@pytest.mark.slow
def test_a_sweep_started_twice_trains_each_run_once(pair, tmp_path, monkeypatch, capsys):
    """The second process reads the results file, then waits while the first finishes every run: it trains none."""
    args = [f"--data_root={pair}", f"--out_dir={tmp_path}", *RUN, "--tasks=A-W,W-A", "--method=source_only,ddc",
            "--epochs=1", "--checkpoint=False"]
    real_lock, first = Checkpoint.lock, {}

    def lock(self):
        if "started" not in first:
            first["started"] = True
            first["finished"] = office31.main(args)  # the other process, started a second earlier, trains them all
        return real_lock(self)
    monkeypatch.setattr(Checkpoint, "lock", lock)
    assert office31.main(args) == [] and len(first["finished"]) == 4
    assert sorted((r["config"]["method"], r["source"]) for r in rows_of(tmp_path)) == [
        ("ddc", "amazon"), ("ddc", "webcam"), ("source_only", "amazon"), ("source_only", "webcam")]
    assert capsys.readouterr().out.count("another process finished it meanwhile") == 4
    assert len(list(tmp_path.glob("*.json"))) == 4


@pytest.mark.skipif(not files.locks(), reason="no file locks on this system")
def test_a_lock_file_removed_by_its_last_holder_is_never_held_twice(tmp_path, monkeypatch):
    c = office31.with_method(dict(office31.resolve(office31.FLAGS), out_dir=str(tmp_path), precision="fp32",
                                  source="amazon", target="webcam"), "source_only")
    lock = Checkpoint(c, {"amazon": "a", "webcam": "w"}, "A→W")
    path = lock.path + ".lock"
    with lock.lock() as free:  # A holds the run...
        assert free
        stale = open(path, "a")  # ...while B opens the lock file
    assert not os.path.exists(path)  # A finished: its lock file is gone
    with lock.lock() as c_free:  # C takes the run, in a new lock file
        assert c_free
        opened = []

        def first_the_stale_file(name, mode):  # B goes on with the file it opened before
            opened.append(name)
            return stale if len(opened) == 1 else open(name, mode)
        monkeypatch.setattr(checkpoint, "open", first_the_stale_file, raising=False)
        with lock.lock() as b_free:
            assert not b_free and len(opened) == 2  # B saw its file was no longer in place, and found C's held
        monkeypatch.undo()
    assert not os.path.exists(path)


@pytest.mark.slow
def test_a_rerun_starts_from_the_beginning_whatever_checkpoint_was_kept(pair, tmp_path, capsys):
    [first] = run(pair, tmp_path, "--keep_checkpoint=True")
    [checkpoint] = list(tmp_path.glob("*.ckpt"))
    stale = tmp_path / (checkpoint.name + ".4242.tmp")  # a checkpoint write killed half-way
    stale.write_bytes(b"half a checkpoint")
    capsys.readouterr()
    for extra in (["--rerun=True", "--tasks=A-W", "--seeds=1"], []):  # a sweep's rerun; the same single run again
        [again] = run(pair, tmp_path, "--keep_checkpoint=True", *extra)
        out = capsys.readouterr().out
        assert "resuming" not in out and "is in " in out and "trains again from the beginning" in out
        assert [e["loss"] for e in again["epochs"]] == [e["loss"] for e in first["epochs"]]  # three epochs, as before
        assert not stale.exists()
    assert len(rows_of(tmp_path)) == 3


def test_two_processes_writing_the_same_table_and_figure_both_succeed(tmp_path, monkeypatch, capsys):
    """Another process replaces the files while this one is between writing its temporary file and renaming it."""
    root = make_tree(tmp_path / "office31", {"amazon": 2, "webcam": 1}, size=(20, 20))
    office31.main([f"--data_root={root}", f"--out_dir={tmp_path / 'out'}", *RUN, "--epochs=1", "--tasks=A-W",
                   "--seeds=2", "--save_model=False"])
    report = [f"--data_root={root}", f"--out_dir={tmp_path / 'out'}", *RUN, "--epochs=1", "--tasks=A-W",
              "--seeds=2", "--report=True"]
    real_replace, nested = os.replace, []

    def replace(source, destination):
        kind = os.path.splitext(str(destination))[1]
        if kind in (".md", ".png") and kind not in nested:
            nested.append(kind)
            office31.main(report)  # the other process writes every file meanwhile
        return real_replace(source, destination)
    monkeypatch.setattr(os, "replace", replace)
    office31.main(report)
    written = sorted(p.name.split("_", 1)[0] + p.suffix for p in (tmp_path / "out").iterdir()
                     if p.name.startswith(("table_", "curves_")))
    assert nested == [".md", ".png"] and written == ["curves.png", "table.csv", "table.md", "table.tex"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_write_file_leaves_the_old_file_whole_when_writing_fails(tmp_path):
    path = tmp_path / "table.md"
    files.write_file(str(path), lambda f: f.write(b"old"))

    def fails(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError):
        files.write_file(str(path), fails)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["table.md"]


def test_a_report_into_a_folder_it_cannot_write_prints_the_table_and_says_where(tmp_path, monkeypatch, capsys):
    root = make_tree(tmp_path / "office31", {"amazon": 2, "webcam": 1}, size=(20, 20))
    args = [f"--data_root={root}", f"--out_dir={tmp_path / 'out'}", *RUN, "--epochs=1", "--tasks=A-W"]
    office31.main(args)
    capsys.readouterr()

    def read_only(*args):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tables, "write_file", read_only)
    office31.main([*args, "--report=True"])  # no exception: the table is printed, the files are said to be missing
    out = capsys.readouterr().out
    assert "| A→W |" in out
    assert f"warning: could not write the table files and figure to {tmp_path / 'out'} (Permission denied)" in out
