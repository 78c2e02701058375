"""--runs_at_once: several runs of a sweep side by side, each an independent process, every run trained once and
with the numbers it gets alone; the memory cache budgeted per process; what it cannot take, refused before any
work; and tests/benchmark.py's parts 8 (the table, one run at a time and N at once) and 9
(CUDA graphs, on a GPU)."""
import json
import os
import time

import pytest
import torch

import benchmark  # (tests/benchmark.py)
import office31
import data_loader
from results import store
from runs import at_once

TINY = ["--model=resnet18", "--weights=none", "--resize_size=40", "--crop_size=32", "--epochs=2",
        "--iters_per_epoch=2", "--batch_size=8", "--num_workers=0", "--device=cpu", "--amp=off"]


def run(tree, out, *extra):
    return office31.main([f"--data_root={tree}", f"--out_dir={out}", *TINY, *extra])


def numbers(result):
    """What a run computed: its accuracy and every epoch's losses and accuracies."""
    return result["accuracy"], [(e["loss"], e["source_acc"], e["target_acc"]) for e in result["epochs"]]


def test_two_processes_train_every_run_once_with_the_numbers_it_gets_alone(tmp_path, tree, capsys):
    run(tree, tmp_path / "out", "--tasks=A-W,D-A", "--seeds=2", "--runs_at_once=2")
    said = capsys.readouterr().out
    rows = store.read_rows(tmp_path / "out" / "results.jsonl")
    runs = [(r["source"], r["target"], r["seed"]) for r in rows]
    assert sorted(runs) == sorted({(s, t, k) for s, t in (("amazon", "webcam"), ("dslr", "amazon")) for k in (0, 1)})
    lines = said.splitlines()
    assert any(line.startswith("[1/2] ") for line in lines) and any(line.startswith("[2/2] ") for line in lines)
    assert sum(line.startswith("| task |") for line in lines) == 1  # the tables: once, by the first process
    assert not any(line.startswith(("[1/2] overriding", "[2/2] config:")) for line in lines)  # (said once, above)
    for row in rows:
        with open(tmp_path / "out" / row["run_file"], encoding="utf-8") as f:
            shared = json.load(f)
        source, target = row["source"][0].upper(), row["target"][0].upper()
        [alone] = run(tree, tmp_path / f"alone_{source}{target}{row['seed']}", f"--source={source}",
                      f"--target={target}", f"--seed={row['seed']}")
        assert numbers(alone) == numbers(shared), (source, target, row["seed"])


@pytest.mark.parametrize("extra, phrase", [
    ([], "this command is one run: leave --runs_at_once at 1"),
    (["--tasks=A-W", "--seeds=2", "--rerun=True"], "--rerun=True with --runs_at_once=2"),
    (["--tasks=A-W", "--method=source_only", "--trade_off=0.1,1"], "this command is one run"),  # (one setting)
])
def test_what_runs_at_once_cannot_take_is_refused_before_any_training(tmp_path, tree, monkeypatch, extra, phrase):
    monkeypatch.setattr(at_once, "start", lambda *a: pytest.fail("started processes"))
    with pytest.raises(SystemExit) as stop:
        run(tree, tmp_path / "out", "--runs_at_once=2", *extra)
    assert str(stop.value.code).startswith("error: ") and phrase in str(stop.value.code)


def test_under_torchrun_or_below_one_it_is_refused(tmp_path, tree, monkeypatch):
    with pytest.raises(SystemExit, match=r"--runs_at_once=0: must be at least 1"):
        run(tree, tmp_path / "out", "--tasks=A-W", "--seeds=2", "--runs_at_once=0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match=r"under torchrun the processes train one run together"):
        run(tree, tmp_path / "out", "--tasks=A-W", "--seeds=2", "--runs_at_once=2")


def test_plan_and_report_run_in_this_process_alone(tmp_path, tree, monkeypatch, capsys):
    monkeypatch.setattr(at_once, "start", lambda *a: pytest.fail("started processes"))
    run(tree, tmp_path / "out", "--tasks=A-W", "--seeds=2", "--runs_at_once=2", "--plan=True")
    assert "plan: 2 runs" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="holds no results yet"):
        run(tree, tmp_path / "out", "--runs_at_once=2", "--report=True")


def test_each_process_budgets_its_share_of_the_memory_for_its_cache(tree, monkeypatch):
    cpu = data_loader.torch.device("cpu")
    monkeypatch.setattr(data_loader, "available_memory", lambda device: 8_000_000_000)
    assert data_loader.memory_for_cache(cpu) == (8_000_000_000, "available memory")
    monkeypatch.setenv(data_loader.RUNS_AT_ONCE, "2/4")
    have, where = data_loader.memory_for_cache(cpu)
    assert have == 2_000_000_000 and "over the 4 processes of --runs_at_once" in where
    need = data_loader.cache_bytes(tree, ["amazon"], 256)
    assert data_loader.choose_cache("auto", tree, ["amazon"], 256, cpu) == "memory"
    monkeypatch.setattr(data_loader, "available_memory", lambda device: need * 4)
    assert data_loader.choose_cache("auto", tree, ["amazon"], 256, cpu) == "disk"


def test_the_processes_lines_come_prefixed_and_their_exit_codes_back(capsys):
    code = "import os, sys; print('hello from', os.environ['OFFICE31_RUNS_AT_ONCE']); print('config: x'); " \
           "sys.exit(int(os.environ['OFFICE31_RUNS_AT_ONCE'][0]) - 1)"
    codes, stopped_by = at_once.wait(*at_once.start(["-c", code], 2))
    assert codes == [0, 1] and stopped_by is None
    lines = sorted(capsys.readouterr().out.splitlines())
    assert lines == ["[1/2] hello from 1/2", "[2/2] hello from 2/2"]


def test_benchmark_reads_the_gpus_utilisation_where_it_can_and_says_why_not_elsewhere(tmp_path, monkeypatch):
    with benchmark.GpuUtilisation("cpu") as cpu:
        pass
    assert cpu.mean() is None and cpu.why_not() == "not a CUDA device"
    fake = tmp_path / "bin" / "nvidia-smi"  # prints a utilisation as nvidia-smi does with these options
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 40\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    with benchmark.GpuUtilisation("cuda", period=0.01) as gpu:
        time.sleep(0.2)
    assert gpu.mean() == 40 and len(gpu.samples) > 1
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with benchmark.GpuUtilisation("cuda") as none:
        pass
    assert none.mean() is None and none.why_not() == "nvidia-smi gave no reading (FileNotFoundError)"
    assert benchmark.projected_table(1600) == 18 * 5000 * 32 / 1600
    assert benchmark.projected_table(1600, 30, 6) == 18 * 5000 * 32 / 1600 + 30 * 3  # each run's fixed seconds


def test_benchmark_measures_cuda_graphs_on_a_gpu_only_and_no_default_changes():
    assert benchmark.overhead_rates("resnet50", 1, 1, torch.device("cpu")) == \
        "not measured: CUDA graphs need a CUDA --device"
    assert office31.FLAGS["compile"] is False and not [name for name in office31.FLAGS if "graph" in name]


@pytest.mark.slow
def test_benchmark_times_the_table_one_at_a_time_and_at_once_in_one_call(tree, capsys):
    rates = benchmark.print_table_rates(str(tree), 2, 1, "resnet18", torch.device("cpu"),
                                        ["--resize_size=40", "--crop_size=32", "--num_workers=0", "--amp=off"])
    assert list(rates) == ["one at a time", "2 at once"]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("8. the source-only table, runs at once: 4 A→W runs of 1 and of 3 steps (resnet18")
    for line, (rate, utilisation, fixed) in zip(lines[1:], rates.values()):
        assert rate > 0 and fixed >= 0 and utilisation == "not a CUDA device"
        assert "GPU utilisation not measured (not a CUDA device)" in line and "min projected" in line
    assert lines[1].endswith("1.00x")
