"""Every table cell traceable to its runs, every row comparable, and no input that ends in a traceback."""
import datetime
import errno
import json
import os
import re
import signal
import statistics
import subprocess
import sys

import pytest
import torch

from runs import checks
import data_loader
from datasets import download
import office31
from results import experiments
from results import run_files
from results import tables
from conftest import ROOT, draw, make_tree
from test_sweep import rows_of, sweep

@pytest.fixture
def three(tmp_path):
    return make_tree(tmp_path / "office31", {"amazon": 2, "dslr": 1, "webcam": 1}, size=(20, 20))


def table_of(text):
    """{row label: [cell text, ...]} of the methods table in text, and its header's column names."""
    lines = ("| method |" + text.split("| method |")[-1]).splitlines()
    cells = [line.strip("| ").split(" | ") for line in lines if line.startswith("|")]
    return {row[0]: row[1:] for row in cells[2:]}, cells[0][1:]


def expected_cell(values, count):
    values = [100 * v for v in values]
    text = f"{statistics.mean(values):.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")
    return text + (f" ({len(values)})" if count else "")


@pytest.mark.slow
def test_every_cell_is_recomputed_from_the_rows_it_averages(tmp_path, three, capsys):
    """The issue's case: two tasks with one seed, then three seeds of one task. Report what the flags name."""
    out = tmp_path / "out"
    sweep(three, out, "--tasks=A-W,W-A", "--method=source_only,coral")
    sweep(three, out, "--tasks=A-W", "--seeds=3", "--method=source_only,coral")
    capsys.readouterr()
    sweep(three, out, "--tasks=A-W,W-A", "--seeds=3", "--method=source_only,coral", "--report=True")
    shown = capsys.readouterr().out
    cells, tasks = table_of(shown)
    assert tasks == ["A→W", "W→A", "average"]
    rows = rows_of(out)
    for method in ("source_only", "coral"):
        mine = [r for r in rows if r["config"]["method"] == method]
        a_w = [r["accuracy"] for r in mine if r["source"] == "amazon"]
        w_a = [r["accuracy"] for r in mine if r["source"] == "webcam"]
        assert (len(a_w), len(w_a)) == (3, 1)
        means = [statistics.mean(100 * v for v in a_w), 100 * w_a[0]]
        # seeds differ between the tasks: every cell says how many runs it is, and the average is the mean of
        # the cells shown, without a spread over seeds
        assert cells[method] == [expected_cell(a_w, True), expected_cell(w_a, True), f"{statistics.mean(means):.2f}"]
    assert "average: the mean of the task cells of its row" in shown
    capsys.readouterr()  # --seeds=1 narrows the report to seed 0 alone: the table of that sweep
    sweep(three, out, "--tasks=A-W,W-A", "--seeds=1", "--method=source_only,coral", "--report=True")
    cells, _ = table_of(capsys.readouterr().out)
    for method in ("source_only", "coral"):
        seed0 = {r["source"]: r["accuracy"] for r in rows if r["config"]["method"] == method and r["seed"] == 0}
        assert cells[method] == [expected_cell([seed0["amazon"]], False), expected_cell([seed0["webcam"]], False),
                                 f"{statistics.mean([100 * seed0['amazon'], 100 * seed0['webcam']]):.2f}"]


def test_average_has_a_spread_only_when_every_task_has_the_same_seeds():
    name = lambda s, t: f"{s[0].upper()}→{t[0].upper()}"  # noqa: E731
    same = [{"source": s, "target": t, "seed": k, "accuracy": a} for (s, t), values in
            {("amazon", "webcam"): [0.5, 0.6], ("webcam", "amazon"): [0.7, 0.9]}.items() for k, a in enumerate(values)]
    # per seed: (50 + 70) / 2 = 60 and (60 + 90) / 2 = 75: mean 67.5, sample std 10.61; the cells' mean is 67.5 too
    assert tables.methods_table({"m": same}, name).splitlines()[2] == \
        "| m | 55.00 ± 7.07 | 80.00 ± 14.14 | 67.50 ± 10.61 |"
    assert tables.markdown_table(same, name).splitlines()[-1] == "| average | 67.50 ± 10.61 | 2 |"
    uneven = same[:3]  # W→A has seed 0 only
    assert tables.methods_table({"m": uneven}, name).splitlines()[2] == "| m | 55.00 ± 7.07 (2) | 70.00 (1) | 62.50 |"
    assert tables.markdown_table(uneven, name).splitlines()[-1] == "| average | 62.50 | - |"


def test_rows_record_precision_machine_and_run_file_and_precision_splits_experiments(tmp_path, three, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(office31, "choose_amp", lambda amp, device: (amp == "bf16", f"patched {amp}"))
    sweep(three, out, "--tasks=A-W", "--amp=off")
    assert sweep(three, out, "--tasks=A-W", "--amp=off") == []  # done: the same experiment
    assert len(sweep(three, out, "--tasks=A-W", "--amp=bf16")) == 1  # bf16 is another experiment, not "done"
    fp32, bf16 = rows_of(out)
    assert (fp32["config"]["precision"], bf16["config"]["precision"]) == ("fp32", "bf16")
    assert fp32["machine"]["torch"] == torch.__version__ and fp32["machine"]["device"]
    revision = fp32["machine"]["revision"]
    assert revision is None or re.fullmatch(r"[0-9a-f]{40}(\+changes)?", revision)
    saved = json.loads((out / bf16["run_file"]).read_text(encoding="utf-8"))  # the row names its run file
    assert saved["accuracy"] == bf16["accuracy"] and saved["precision"]["dtype"] == "bf16"
    assert saved["machine"] == bf16["machine"]


def test_rows_without_a_precision_are_left_out_and_counted(tmp_path, three, capsys):
    out = tmp_path / "out"
    sweep(three, out, "--tasks=A-W,W-A", "--amp=off")
    first, second = rows_of(out)
    del first["config"]["precision"]  # as rows were written before they recorded it
    (out / "results.jsonl").write_text(json.dumps(first) + "\n" + json.dumps(second) + "\n", encoding="utf-8")
    capsys.readouterr()
    sweep(three, out, "--tasks=A-W,W-A", "--amp=off", "--report=True")
    shown = capsys.readouterr().out
    assert "| A→W |" not in shown and "| W→A |" in shown
    assert "note: 1 more row with these flags was written before rows recorded their precision" in shown


def test_the_sweep_notes_list_the_real_experiment_keys():
    readme = open(os.path.join(ROOT, "docs", "sweeps.md"), encoding="utf-8").read()
    [listed] = re.findall(r"these keys of the row's `config`: (.*?)\.\n", readme, re.S)
    assert tuple(re.findall(r"`(\w+)`", listed)) == (*experiments.EXPERIMENT_KEYS, *experiments.later_keys())


def test_several_methods_name_the_method_in_files_lines_and_titles(tmp_path, three, capsys):
    out = tmp_path / "out"
    sweep(three, out, "--tasks=A-W", "--method=source_only,cdan", "--entropy=True", "--trade_off=0.5")
    printed = capsys.readouterr().out
    files = sorted(p.name.rsplit("_", 1)[0] for p in out.glob("*.json"))
    assert files == ["amazon-webcam_resnet18_cdan+e_seed0", "amazon-webcam_resnet18_source_only_seed0"]
    finals = [line for line in printed.splitlines() if " accuracy: " in line]
    assert [line.split("  ", 1)[1] for line in finals] == ["source_only seed 0", "cdan+e seed 0"]
    assert "run 2 of 2: A→W cdan+e seed 0: bottleneck=256  trade_off=0.5  entropy=True  (" in printed
    title = [line for line in printed.splitlines() if line.startswith("office31, resnet18")][0]
    assert "not the defaults: epochs=1, iters_per_epoch=1, batch_size=4, resize_size=16, crop_size=16, " \
           "trade_off=0.5" in title and ", fp32, " in title
    assert "| cdan+e |" in printed
    assert {r["run_file"] for r in rows_of(out)} == {p.name for p in out.glob("*.json")}


def test_the_config_line_shows_what_the_run_uses(tmp_path, three, capsys):
    sweep(three, tmp_path / "out", "--method=dann")
    config = [line for line in capsys.readouterr().out.splitlines() if line.startswith("config: ")][0]
    assert "  bottleneck=256  trade_off=1.0  " in config
    sweep(three, tmp_path / "out", "--tasks=D-W")
    config = [line for line in capsys.readouterr().out.splitlines() if line.startswith("config: ")][0]
    assert "  bottleneck=0  trade_off=0.0  " in config and "method=source_only" in config


class OneSecond(datetime.datetime):
    """Every run finishes in the same second."""

    @classmethod
    def now(cls, tz=None):
        return cls(2026, 1, 1, 12, 0, 0)


def test_run_files_are_created_exclusively_and_saved_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(datetime, "datetime", OneSecond)
    c = dict(office31.FLAGS, out_dir=str(tmp_path), source="amazon", target="webcam")
    first = run_files.save_run(c, {"run": 1})
    assert os.path.basename(first) == "amazon-webcam_resnet50_source_only_seed0_20260101-120000"
    (tmp_path / (os.path.basename(first) + "-1.json")).write_text("another process's run")  # taken meanwhile
    second = run_files.save_run(c, {"run": 2}, {"w": torch.ones(2)})
    assert second == first + "-2"  # never over another run's file
    assert json.loads(open(first + ".json").read())["run"] == 1
    assert (tmp_path / (os.path.basename(first) + "-1.json")).read_text() == "another process's run"
    assert json.loads(open(second + ".json").read())["run_file"] == os.path.basename(second) + ".json"
    assert torch.equal(torch.load(second + ".pt", weights_only=True)["w"], torch.ones(2))

    def killed(obj, f):  # a save that dies half-way
        f.write(b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", killed)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        run_files.save_run(c, {"run": 3}, {"w": torch.ones(2)})
    assert sorted(os.listdir(tmp_path)) == before  # no half .pt, no .tmp, no JSON


def test_a_json_that_cannot_be_written_takes_the_weights_with_it(tmp_path, monkeypatch):
    c = dict(office31.FLAGS, out_dir=str(tmp_path), source="amazon", target="webcam")

    def full_disk(*args, **kwargs):  # the JSON's write, the weights already in place
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(run_files.json, "dumps", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run_files.save_run(c, {"run": 1}, {"w": torch.ones(2)})
    assert os.listdir(tmp_path) == []  # no .pt without its JSON, no temporary


def test_a_process_killed_while_writing_the_json_leaves_no_weights_without_it(tmp_path):
    """The weights are linked into place only once the JSON is whole beside them: a kill before leaves temporaries
    only (which the next run of the stem removes), never a .pt that no row or JSON names."""
    code = ("import json, os, signal, sys, torch; sys.path.insert(0, sys.argv[1]); import office31; from results import run_files; "
            "json.dumps = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL); "
            "run_files.save_run(dict(office31.FLAGS, out_dir=sys.argv[2], source='amazon', target='webcam'), {}, "
            "{'w': torch.ones(1000)})")
    killed = subprocess.run([sys.executable, "-c", code, ROOT, str(tmp_path)], capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    left = os.listdir(tmp_path)
    assert left and all(name.endswith(".tmp") for name in left), left


def test_temporaries_of_run_files_left_by_a_killed_process_are_removed_when_the_run_starts_again(three, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()  # a process that has ended
    stem = "amazon-webcam_resnet18_source_only_seed0_20260101-120000"  # a run of the same task, method and seed
    stale = [f"{stem}.json.{run_files.HOST}.{gone}.tmp", f"{stem}-1.pt.{run_files.HOST}.{gone}.tmp"]
    left = [f"{stem}.json.{run_files.HOST}.{os.getpid()}.tmp",  # a running process's: it may be writing it now
            f"{stem}.json.{run_files.HOST}x.{gone}.tmp",  # another machine's, whose processes are not seen from here
            f"amazon-webcam_resnet18_source_only_seed1_20260101-120000.json.{run_files.HOST}.{gone}.tmp"]  # another run
    for name in stale + left:
        (out / name).write_bytes(b"half a file")
    sweep(three, out, "--tasks=A-W")
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == sorted(left)


def test_class_problems_of_every_planned_task_stop_the_sweep_before_the_first_run(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "office31", {"amazon": 1, "dslr": 1}, size=(20, 20))
    make_tree(root, {"webcam": 1}, classes=["back_pack", "bike"], size=(20, 20))  # no calculator
    os.makedirs(os.path.join(root, "dslr", "images", "mug"))  # and an empty class folder
    monkeypatch.setattr(office31, "fine_tune", lambda *a: pytest.fail("trained"))
    with pytest.raises(SystemExit) as stop:
        sweep(root, tmp_path / "out", "--tasks=all")
    message = str(stop.value.code)
    assert message.startswith("error: nothing was run") and "dslr has no images in mug" in message
    for task, source, target in [("A→W", "amazon", "webcam"), ("D→W", "dslr", "webcam"),
                                 ("W→A", "webcam", "amazon")]:
        assert f"{task}: different classes, only in {source}: calculator" in message or \
            f"{task}: different classes, only in {source}: -; only in {target}: calculator" in message
    assert "A→D: different classes, only in amazon: -; only in dslr: mug" in message
    assert not (tmp_path / "out").exists()


def test_a_data_root_that_is_a_file_is_named_before_any_download(tmp_path, monkeypatch, capsys):
    path = tmp_path / "office31.tar.gz"
    path.write_bytes(b"not a folder")
    monkeypatch.setattr(download, "download_dataset", lambda *a: pytest.fail("downloaded"))
    for extra in ([], ["--download=False"]):
        with pytest.raises(SystemExit) as stop:
            office31.main([f"--data_root={path}", f"--out_dir={tmp_path / 'out'}", *extra])
        assert f"--data_root={path} is a file, not a folder" in str(stop.value.code)


@pytest.mark.parametrize("argv, phrase", [
    (["--weight_decay=nan"], "--weight_decay=nan: must be a finite number"),
    (["--lr_mult=inf"], "--lr_mult=inf: must be a finite number"),
    (["--momentum=nan"], "--momentum=nan: must be a finite number"),
    (["--lr=-inf"], "--lr=-inf: must be a finite number"),
    (["--method=coral", "--model=alexnet", "--batch_size=1"], "Deep CORAL's covariances divide by the batch size"),
    (["--batch_size=1", "--model=alexnet", "--bottleneck=256"], "the bottleneck's BatchNorm normalises"),
    (["--batch_size=1"], "ResNet's BatchNorm layers normalise over the images of a batch"),
    (["--method=source_only,dann", "--model=alexnet", "--batch_size=1"], "--method=dann: the bottleneck's"),
])
def test_values_no_run_can_use_are_refused_with_the_reason(tmp_path, argv, phrase):
    with pytest.raises(SystemExit) as stop:
        office31.main([*argv, f"--out_dir={tmp_path / 'out'}"])
    assert str(stop.value.code).startswith("error: ") and phrase in str(stop.value.code)
    assert not (tmp_path / "out").exists()


def test_a_batch_of_one_is_fine_where_nothing_normalises_over_it():
    c = office31.resolve(dict(office31.FLAGS, model="alexnet", batch_size=1, method="source_only,dan"))
    checks.check_config(c)  # AlexNet without bottleneck, and DAN on AlexNet (fc6-fc8, no bottleneck)


def test_the_download_lock_is_one_file_however_the_path_is_spelled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spellings = ["data/newroot", "data/newroot/", "./data/newroot", str(tmp_path / "data" / "newroot") + "/"]
    assert {download.lock_path(p) for p in spellings} == {str(tmp_path / "data" / ".newroot.lock")}


def test_hidden_folders_are_no_classes_on_either_path(tmp_path, capsys):
    root = make_tree(tmp_path / "office31", {"amazon": 2, "webcam": 1}, size=(20, 20))
    for domain in ("amazon", "webcam"):
        os.makedirs(os.path.join(root, domain, "images", ".thumbs"))  # a viewer's thumbnails: an image inside
        draw(0, (20, 20), 0, 99).save(os.path.join(root, domain, "images", ".thumbs", "frame_0000.jpg"))
        os.makedirs(os.path.join(root, domain, "images", ".ipynb_checkpoints"))  # and an empty one
    assert data_loader.fingerprint(root, "amazon").startswith("3 classes") and \
        data_loader.fingerprint(root, "amazon").endswith(", 6 images")
    for cache in (True, False):
        domain = data_loader.load_domain(root, "amazon", 16, cache, 0, torch.device("cpu"))
        assert domain.classes == ["back_pack", "bike", "calculator"] and len(domain) == 6
    [result] = sweep(root, tmp_path / "out")
    assert result["total"] == 3
