"""Sweeps: every task and seed in one command, one row per finished run, resumable, shardable, a table."""
import json
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import time

import pytest

import office31
from results import store
from runs import sweep as sweep_module
from conftest import ROOT, make_tree

FAST = ["--model=resnet18", "--weights=none", "--resize_size=16", "--crop_size=16", "--epochs=1",
        "--iters_per_epoch=1", "--batch_size=4", "--num_workers=0", "--device=cpu", "--eval_every=0", "--amp=off"]


def sweep(root, out, *extra):
    return office31.main([f"--data_root={root}", f"--out_dir={out}", *FAST, *extra])


def rows_of(out):
    return store.read_rows(os.path.join(out, "results.jsonl"))


@pytest.fixture
def three(tmp_path):
    return make_tree(tmp_path / "office31", {"amazon": 2, "dslr": 1, "webcam": 1}, size=(20, 20))


@pytest.mark.slow
def test_all_covers_every_ordered_pair(tmp_path, three):
    done = sweep(three, tmp_path / "out", "--tasks=all")
    assert [r["task"] for r in done] == ["A→D", "A→W", "D→A", "D→W", "W→A", "W→D"]
    four = make_tree(tmp_path / "home", {"Art": 1, "Clipart": 1, "Product": 1, "Real_World": 1}, size=(20, 20))
    done = sweep(four, tmp_path / "out_home", "--tasks=all")
    assert len(done) == 12 and len({r["task"] for r in done}) == 12
    assert {r["dataset"] for r in rows_of(tmp_path / "out_home")} == {"home"}


def test_rows_and_table_agree(tmp_path, three, capsys):
    sweep(three, tmp_path / "out", "--tasks=A-W,W-A", "--seeds=3")
    rows = rows_of(tmp_path / "out")
    assert len(rows) == 6 and sorted((r["source"], r["target"], r["seed"]) for r in rows) == sorted(
        (s, t, k) for s, t in [("amazon", "webcam"), ("webcam", "amazon")] for k in range(3))
    row = rows[0]
    assert row["model"] == "resnet18" and row["config"]["epochs"] == 1
    assert row["accuracy"] == row["correct"] / row["total"]
    table = capsys.readouterr().out.split("| task |", 1)[1]
    shown = {m[0]: (float(m[1]), float(m[2]), int(m[3]))
             for m in re.findall(r"^\| (\S+) \| ([\d.]+) ± ([\d.]+) \| (\d+) \|$", table, re.M)}
    for task, (source, target) in {"A→W": ("amazon", "webcam"), "W→A": ("webcam", "amazon")}.items():
        values = [100 * r["accuracy"] for r in rows if (r["source"], r["target"]) == (source, target)]
        assert shown[task] == (round(statistics.mean(values), 2), round(statistics.stdev(values), 2), 3)
    per_seed = [statistics.mean(100 * r["accuracy"] for r in rows if r["seed"] == s) for s in range(3)]
    assert shown["average"] == (round(statistics.mean(per_seed), 2), round(statistics.stdev(per_seed), 2), 3)


def test_report_reads_without_training(tmp_path, three, monkeypatch, capsys):
    sweep(three, tmp_path / "out", "--tasks=A-W", "--seeds=2")
    capsys.readouterr()
    monkeypatch.setattr(office31, "fine_tune", lambda *a: pytest.fail("trained"))
    sweep(three, tmp_path / "out", "--report=True")
    assert "| A→W |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="has no results for resnet34"):
        sweep(three, tmp_path / "out", "--report=True", "--model=resnet34")


@pytest.mark.slow
def test_failed_run_appends_nothing_and_rerun_resumes(tmp_path, three, monkeypatch):
    real, calls = office31.fine_tune, []

    def fails_third(*args):
        calls.append(args[0]["source"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(office31, "fine_tune", fails_third)
    with pytest.raises(SystemExit, match="interrupted"):
        sweep(three, tmp_path / "out", "--tasks=all")
    assert len(rows_of(tmp_path / "out")) == 2
    monkeypatch.setattr(office31, "fine_tune", real)
    done = sweep(three, tmp_path / "out", "--tasks=all")
    assert [r["task"] for r in done] == ["D→A", "D→W", "W→A", "W→D"]
    assert len(rows_of(tmp_path / "out")) == 6
    assert sweep(three, tmp_path / "out", "--tasks=all") == []  # nothing left to do
    assert len(sweep(three, tmp_path / "out", "--tasks=A-W", "--rerun=True")) == 1
    assert len(rows_of(tmp_path / "out")) == 7
    assert len(sweep(three, tmp_path / "out", "--tasks=all", "--lr=0.002")) == 6  # another config: new runs


def script(root, out, *extra):
    return [sys.executable, os.path.join(ROOT, "office31.py"), f"--data_root={root}", f"--out_dir={out}", *FAST, *extra]


@pytest.mark.slow
def test_killed_sweep_leaves_valid_file_and_resumes(tmp_path, three):
    out = tmp_path / "out"
    process = subprocess.Popen(script(three, out, "--tasks=all", "--seeds=3"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    path, deadline = out / "results.jsonl", time.time() + 300
    while time.time() < deadline and not (path.exists() and len(path.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    process.kill()
    process.wait()
    written = len(rows_of(out))  # every line is a whole row, or read_rows would raise
    assert 2 <= written < 18
    done = sweep(three, out, "--tasks=all", "--seeds=3")
    assert len(done) == 18 - written and len(rows_of(out)) == 18


@pytest.mark.slow
def test_two_shards_at_once_cover_the_sweep_once(tmp_path, three):
    out = tmp_path / "out"
    shards = [subprocess.Popen(script(three, out, "--tasks=all", "--seeds=2", f"--shard={i}/2"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for process in shards:
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
    runs = [(r["source"], r["target"], r["seed"]) for r in rows_of(out)]
    assert len(runs) == 12 and len(set(runs)) == 12


def test_shard_with_nothing_to_do_exits_cleanly(tmp_path, three):
    assert sweep(three, tmp_path / "out", "--tasks=A-W", "--shard=1/2") == []
    assert rows_of(tmp_path / "out") == []


def append_many(path, worker):
    for k in range(40):
        store.append_row(path, {"worker": worker, "k": k, "padding": "x" * 20000})


def test_concurrent_appends_never_interleave(tmp_path):
    path = str(tmp_path / "rows.jsonl")
    workers = [multiprocessing.Process(target=append_many, args=(path, w)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    lines = open(path).read().splitlines()
    assert sorted((json.loads(line)["worker"], json.loads(line)["k"]) for line in lines) == \
           [(w, k) for w in range(4) for k in range(40)]


@pytest.mark.parametrize("extra, phrase", [
    (["--tasks=A-X"], "domain 'X' was not found"),
    (["--tasks=A_W"], "'A_W' is not a task"),
    (["--shard=3/2"], "--shard=3/2"),
    (["--shard=1"], "--shard=1"),
    (["--seeds=0"], "--seeds=0"),
])
def test_bad_sweep_flags(tmp_path, three, extra, phrase):
    with pytest.raises(SystemExit) as stop:
        sweep(three, tmp_path / "out", *extra)
    assert str(stop.value.code).startswith("error: ") and phrase in str(stop.value.code)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, phrase", [
    (["--source=amazon", "--target=amazon"], "--source=amazon --target=amazon: the task trains and tests on the same "
                                             "domain, but the target must be a domain the network was not trained on"),
    (["--source=W"], "--source=W --target=webcam: the task trains and tests on the same domain"),  # target's default
    (["--source=a", "--target=Amazon"], "--source=a --target=Amazon: the task trains"),
    (["--tasks=A-W,A-A"], "--tasks: 'A-A' trains and tests on the same domain, but the target must be a domain the "
                          "network was not trained on"),
    (["--tasks=A-W, webcam-w"], "--tasks: 'webcam-w' trains and tests on the same domain"),
    (["--tasks=DSLR-dslr", "--seeds=2"], "--tasks: 'DSLR-dslr' trains"),
])
def test_a_task_whose_target_is_its_source_is_refused_before_a_download_or_a_decode(tmp_path, three, monkeypatch,
                                                                                     extra, phrase):
    monkeypatch.setattr(office31, "prepare_data_root", lambda *a: pytest.fail("looked for the data"))
    monkeypatch.setattr(sweep_module, "load_domain", lambda *a, **k: pytest.fail("decoded images"))
    for root in (three, tmp_path / "office31_to_download"):  # (a missing data_root would be downloaded)
        with pytest.raises(SystemExit) as stop:
            sweep(root, tmp_path / "out", *extra)
        assert str(stop.value.code).startswith("error: ") and phrase in str(stop.value.code)
    assert not (tmp_path / "out").exists() and not (tmp_path / "office31_to_download").exists()


def test_all_needs_two_domains(tmp_path):
    root = make_tree(tmp_path / "one", {"amazon": 1}, size=(20, 20))
    with pytest.raises(SystemExit, match="at least two domains.*found: amazon"):
        sweep(root, tmp_path / "out", "--tasks=all")


@pytest.mark.parametrize("content", ['{"epoch": 1}\n', "accuracy,seed\n0.5,1\n",
                                     None])  # None: our own file with its last row cut mid-line
def test_foreign_or_truncated_results_file_is_refused_untouched(tmp_path, three, content):
    out = tmp_path / "out"
    if content is None:
        sweep(three, out, "--tasks=A-W")
        path = out / "results.jsonl"
        content = path.read_text() + path.read_text()[:40]
    path = out / "results.jsonl"
    out.mkdir(exist_ok=True)
    path.write_text(content)
    for extra in (["--tasks=all"], ["--report=True"], []):
        with pytest.raises(SystemExit, match="is not a complete result row of office31.py"):
            sweep(three, out, *extra)
    assert path.read_text() == content


def test_a_sweep_prints_its_plan_and_where_it_is_and_plan_lists_it_without_training(tmp_path, three, monkeypatch,
                                                                                    capsys):
    out = tmp_path / "out"
    sweep(three, out, "--tasks=A-W")
    capsys.readouterr()
    flags = ("--tasks=A-W,W-A", "--seeds=2", "--method=source_only,coral")
    monkeypatch.setattr(office31, "fine_tune", lambda *a: pytest.fail("trained"))
    monkeypatch.setattr(sweep_module, "load_domain", lambda *a: pytest.fail("decoded images"))
    assert sweep(three, out, *flags, "--plan=True") == []
    printed = capsys.readouterr().out
    assert (f"plan: 8 runs, 2 tasks (A→W, W→A) x 2 seeds x 2 settings; 1 in {out / 'results.jsonl'} already; "
            "7 to train") in printed
    assert "skipping source_only A→W seed 0: already in" in printed
    listed = re.findall(r"^run (\d) of 7: (\S+) (\S+) seed (\d)$", printed, re.M)
    assert listed[0] == ("1", "A→W", "source_only", "1") and len(listed) == 7 and listed[-1][:3] == ("7", "W→A",
                                                                                                     "coral")
    assert printed.rstrip().endswith("--plan=True: nothing was trained; the same command without it trains the 7 runs.")
    assert len(rows_of(out)) == 1
    monkeypatch.undo()
    ticks = iter(range(0, 1000, 10))  # each reading of the clock 10 s after the last
    monkeypatch.setattr(sweep_module, "monotonic", lambda: next(ticks))
    sweep(three, out, "--tasks=A-W,W-A", "--seeds=2")
    printed = capsys.readouterr().out
    assert f"plan: 4 runs, 2 tasks (A→W, W→A) x 2 seeds x 1 setting; 1 in {out / 'results.jsonl'} already; 3 to " \
           "train" in printed
    progress = re.findall(r"^(run \d of 3: .*)$", printed, re.M)
    assert progress == ["run 1 of 3: A→W source_only seed 1  (10s elapsed)",
                        "run 2 of 3: W→A source_only seed 0  (20s elapsed, about 40s left)",
                        "run 3 of 3: W→A source_only seed 1  (30s elapsed, about 15s left)"]
