"""A run that cannot finish fails before the work, and no run leaves a wrong number behind."""
import json
import os
import threading
import time

import pytest
import torch

import data_loader
import office31
from common import files
from runs.optimizer import check_finite
from results import store
from results import tasks
from common.errors import Diverged
from results.tasks import short_names
from conftest import make_tree
from test_sweep import rows_of, sweep
from test_train import TINY, run_script


def no_decoding(monkeypatch):
    monkeypatch.setattr("runs.sweep.load_domain", lambda *a, **k: pytest.fail("decoded images"))


@pytest.mark.parametrize("where", ["a file", "under a file", "under /proc"])
def test_out_dir_that_cannot_be_written_stops_before_any_work(tree, tmp_path, monkeypatch, where):
    blocker = tmp_path / "taken"
    blocker.write_text("someone's file")
    out_dir = {"a file": blocker, "under a file": blocker / "out", "under /proc": "/proc/office31-out"}[where]
    no_decoding(monkeypatch)
    monkeypatch.setattr(office31, "build_model", lambda *a: pytest.fail("fetched weights"))
    with pytest.raises(SystemExit) as stop:  # (no images decoded, no weights fetched: before any work)
        office31.main([f"--data_root={tree}", *TINY, "--weights=IMAGENET1K_V1", f"--out_dir={out_dir}"])
    message = str(stop.value.code)
    assert message.startswith("error: --out_dir=") and str(out_dir) in message and "Nothing was run" in message
    assert blocker.read_text() == "someone's file" and not os.path.isdir(out_dir)


def test_results_file_that_cannot_be_appended_stops_before_any_work(tree, tmp_path, monkeypatch):
    (tmp_path / "out" / "results.jsonl").mkdir(parents=True)  # a folder where the results file should be
    no_decoding(monkeypatch)
    with pytest.raises(SystemExit, match="results.jsonl' cannot be appended to"):
        office31.main([f"--data_root={tree}", *TINY, f"--out_dir={tmp_path / 'out'}"])
    assert os.listdir(tmp_path / "out") == ["results.jsonl"]


def test_divergence_stops_the_run_and_writes_nothing(tree, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        office31.main([f"--data_root={tree}", *TINY, "--lr=1e6", f"--out_dir={tmp_path / 'out'}"])
    message = str(stop.value.code)
    assert message.startswith("error: A→W source_only seed 0: the loss is not finite at epoch 1, step ")
    assert "of 8 (" in message
    assert "classification nan" in message or "classification inf" in message
    assert "--lr (now 1000000.0)" in message and "--amp=off" in message
    assert "accuracy:" not in capsys.readouterr().out
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_diverged_runs_of_a_sweep_are_skipped_then_named(tmp_path, capsys):
    root = make_tree(tmp_path / "office31", {"amazon": 2, "webcam": 2}, size=(20, 20))
    with pytest.raises(SystemExit) as stop:
        sweep(root, tmp_path / "out", "--tasks=A-W,W-A", "--lr=1e6", "--iters_per_epoch=3")
    out = capsys.readouterr().out
    assert out.count("Moving on to the next run.") == 2
    assert str(stop.value.code) == ("error: 2 of 2 runs diverged and wrote no result: A→W source_only seed 0, "
                                    "W→A source_only seed 0 (their messages are above). No run of this process "
                                    "finished.")  # not "the other runs are in the results file": there are none
    assert rows_of(tmp_path / "out") == [] and not list((tmp_path / "out").glob("*.json"))


def test_check_finite_names_every_term():
    check_finite(3, {"classification": torch.tensor(0.5), "adaptation": torch.tensor(2.0)})
    with pytest.raises(Diverged) as error:
        check_finite(3, {"classification": torch.tensor(0.5), "adaptation": torch.tensor(float("inf"))})
    assert error.value.args == (3, {"classification": 0.5, "adaptation": float("inf")})


@pytest.mark.slow
@pytest.mark.parametrize("cache", [True, False])
def test_evaluating_does_not_change_training(tmp_path, cache):
    root = make_tree(tmp_path / "d", {"amazon": 4, "webcam": 3})
    args = [f"--data_root={root}", *TINY, "--epochs=3", f"--cache={cache}", "--resize_size=36", "--crop_size=28"]
    [never] = office31.main(args + ["--eval_every=0", f"--out_dir={tmp_path / 'a'}"])
    [every] = office31.main(args + ["--eval_every=1", f"--out_dir={tmp_path / 'b'}"])
    assert [e["target_acc"] is None for e in never["epochs"]] == [True, True, False]
    assert all(e["target_acc"] is not None for e in every["epochs"])
    assert [(e["loss"], e["source_acc"]) for e in never["epochs"]] == \
           [(e["loss"], e["source_acc"]) for e in every["epochs"]]
    assert never["correct"] == every["correct"]


def test_rows_of_another_copy_of_the_dataset_are_another_experiment(tmp_path, capsys):
    full = make_tree(tmp_path / "a" / "office31", {"amazon": 2, "webcam": 2}, size=(20, 20))
    subset = make_tree(tmp_path / "b" / "office31", {"amazon": 1, "webcam": 2}, size=(20, 20))
    out = tmp_path / "out"
    assert len(sweep(full, out, "--tasks=A-W")) == 1
    assert len(sweep(subset, out, "--tasks=A-W")) == 1  # the same folder name, other data: not "already done"
    assert sweep(subset, out, "--tasks=A-W") == []  # now it is
    first, second = rows_of(out)
    assert first["data"] == {"amazon": data_loader.fingerprint(full, "amazon"),
                             "webcam": data_loader.fingerprint(full, "webcam")}
    assert first["data"]["amazon"].endswith("6 images") and second["data"]["amazon"].endswith("3 images")
    capsys.readouterr()
    sweep(subset, out, "--report=True")
    shown = capsys.readouterr().out
    assert f"| A→W | {100 * second['accuracy']:.2f} | 1 |" in shown
    assert "note: 1 more row with these flags comes from another copy of 'office31'" in shown


def test_rows_without_fingerprint_are_their_own_group(tmp_path, capsys):
    root = make_tree(tmp_path / "office31", {"amazon": 2, "webcam": 2}, size=(20, 20))
    out = tmp_path / "out"
    sweep(root, out, "--tasks=A-W")
    [row] = rows_of(out)
    del row["data"]  # as written before fingerprints were recorded
    (out / "results.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    assert len(sweep(root, out, "--tasks=A-W")) == 1
    assert "note: 1 more row with these flags comes from another copy" in capsys.readouterr().out


def test_a_domain_is_named_by_its_folder_name_or_its_initial_in_any_case():
    """One rule for the flags' names (data_loader.match_domain) and the report's (which rows --tasks asks for)."""
    assert data_loader.names_domain("A", "amazon") and data_loader.names_domain("WEBCAM", "webcam")
    assert not data_loader.names_domain("am", "amazon") and not data_loader.names_domain("d", "amazon")
    assert data_loader.match_domain("w", ["amazon", "webcam"], "") == "webcam"
    assert data_loader.match_domain("a", ["a", "amazon"], "") == "a"  # a folder of that one letter: that one
    with pytest.raises(data_loader.UserError, match=r"domain 'a' is ambiguous in Office-Home: amazon, art\."):
        data_loader.match_domain("a", ["amazon", "art"], "in Office-Home")
    with pytest.raises(data_loader.UserError, match=r"domain 'am' was not found"):
        data_loader.match_domain("am", ["amazon", "webcam"], "")


def test_tasks_come_in_the_papers_column_order_then_as_they_come():
    found = [("x", "y"), ("webcam", "amazon"), ("amazon", "webcam"), ("x", "y"), ("dslr", "webcam"), ("y", "x")]
    assert tasks.ordered(found) == [("amazon", "webcam"), ("dslr", "webcam"), ("webcam", "amazon"), ("x", "y"),
                                    ("y", "x")]
    rows = {"dann": [{"source": s, "target": t, "seed": 0} for s, t in found]}
    assert tasks.tasks_in_order(rows) == tasks.ordered(found)


@pytest.mark.slow
def test_task_names_stay_apart_when_initials_collide(tmp_path, capsys):
    assert short_names(["amazon", "dslr", "webcam"]) == {"amazon": "A", "dslr": "D", "webcam": "W"}
    assert short_names(["Art", "Clipart", "Product", "Real_World"]) == \
           {"Art": "A", "Clipart": "C", "Product": "P", "Real_World": "R"}
    assert short_names(["mnist", "mnistm", "svhn"]) == {"mnist": "Mnist", "mnistm": "Mnistm", "svhn": "Svhn"}
    assert short_names(["sketch", "real", "quickdraw", "painting"]) == \
           {"sketch": "S", "real": "R", "quickdraw": "Q", "painting": "P"}
    assert short_names(["clip", "clipart"]) == {"clip": "Clip", "clipart": "Clipa"}
    root = make_tree(tmp_path / "digits", {"mnist": 1, "mnistm": 1, "svhn": 1}, size=(20, 20))
    done = sweep(root, tmp_path / "out", "--tasks=all")
    tasks = [r["task"] for r in done]
    assert tasks == ["Mnist→Mnistm", "Mnist→Svhn", "Mnistm→Mnist", "Mnistm→Svhn", "Svhn→Mnist",
                     "Svhn→Mnistm"]
    table = capsys.readouterr().out.split("| task |", 1)[1]
    assert all(f"| {task} |" in table for task in tasks)
    files = sorted(p.name.split("_resnet18")[0] for p in (tmp_path / "out").glob("*.json"))
    assert files == ["mnist-mnistm", "mnist-svhn", "mnistm-mnist", "mnistm-svhn", "svhn-mnist", "svhn-mnistm"]


def test_run_json_is_utf8(tree, tmp_path):
    office31.main([f"--data_root={tree}", *TINY, "--epochs=1", f"--out_dir={tmp_path}"])
    [saved] = tmp_path.glob("*.json")
    assert '"task": "A→W"' in saved.read_bytes().decode("utf-8")


def test_reading_the_results_file_waits_for_a_writer(tmp_path):
    path = tmp_path / "results.jsonl"
    store.append_row(str(path), {k: 1 for k in store.ROW_KEYS})
    read = []
    with open(path, "a") as writer:
        files.lock(writer)
        reader = threading.Thread(target=lambda: read.append(store.read_rows(str(path))))
        reader.start()
        time.sleep(0.5)
        assert read == []  # still waiting for the writer's lock
        writer.write(json.dumps({k: 2 for k in store.ROW_KEYS}) + "\n")
        writer.flush()
        files.fcntl.flock(writer, files.fcntl.LOCK_UN)
    reader.join(timeout=10)
    assert [row["seed"] for row in read[0]] == [1, 2]


def test_cache_that_would_not_fit_stops_before_decoding(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(data_loader, "available_memory", lambda device: 100_000)
    no_decoding(monkeypatch)
    with pytest.raises(SystemExit) as stop:
        office31.main([f"--data_root={tree}", *TINY, f"--out_dir={tmp_path / 'out'}", "--cache=memory"])
    needed = (21 + 15) * 3 * 40 * 40  # amazon 21 and webcam 15 images at 40x40
    assert f"needs {needed / 1e9:.1f} GB, and 0.0 GB of available memory" in str(stop.value.code)
    assert "--cache=disk" in str(stop.value.code) and "--resize_size" in str(stop.value.code)
    assert data_loader.cache_bytes(tree, ["amazon", "webcam"], 40) == needed


@pytest.mark.slow
def test_logs_get_lines_not_progress_bars(tree, tmp_path):
    result = run_script(f"--data_root={tree}", *TINY, "--num_workers=0", f"--out_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout + result.stderr and "batch/s" not in result.stderr
    lines = result.stdout.splitlines()
    assert "decoded amazon: 21 images at 40x40 in " in result.stdout and "decoded webcam: 15 images" in result.stdout
    assert [line.split("  ")[0] for line in lines if line.startswith("epoch ")] == ["epoch 1/2", "epoch 2/2"]
    assert lines[-1].startswith("A→W accuracy: ")

