"""Runs that start from a finished run's saved model (--start_from), and the sweeps of SHOT and TENT, whose source
stage (shot_source) is trained once per task and seed and reused: the errors said before any work, what the run files
and the results file record, the table and its notes, the target's labels read by the final evaluation alone, the
gain over the source model on a generated shift, and two processes on one sweep."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import office31
from conftest import ROOT, make_tree
from methods.shot import SHOT
from results.experiments import EXPERIMENT_KEYS
from runs import sweep as sweep_module
from test_train import run_script

TINY = ["--model=resnet18", "--weights=none", "--resize_size=24", "--crop_size=20", "--epochs=1",
        "--iters_per_epoch=3", "--batch_size=6", "--num_workers=0", "--device=cpu", "--amp=off", "--eval_every=0",
        "--validators=none"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tree and three finished A→W runs on it, each in an out_dir of its own: shot_source (its weights written
    always: SHOT's new layers), source_only with --bottleneck=256 and --save_model=True (plain new layers), and
    source_only without --save_model (no weights). {"tree": its root, name: the run file's path}."""
    root = tmp_path_factory.mktemp("saved")
    tree = make_tree(root / "office31", {"amazon": 4, "webcam": 4, "dslr": 3})
    found = {"tree": tree}
    for name, args in {"shot": ["--method=shot_source"], "plain": ["--bottleneck=256", "--save_model=True"],
                       "unsaved": []}.items():
        [result] = office31.main([f"--data_root={tree}", f"--out_dir={root / name}", *TINY, *args])
        found[name] = str(root / name / result["run_file"])
    return found


@pytest.fixture
def short_shot(monkeypatch):
    """SHOT's target stage in 2 epochs, not its 15 (in this process and the ones it forks): the wiring is tested."""
    monkeypatch.setattr(SHOT, "epochs", 2)


def weights_of(run_file):
    return run_file[:-len(".json")] + ".pt"


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def rows_of(out):
    with open(os.path.join(out, "results.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def run_file(out, row):
    with open(os.path.join(out, row["run_file"]), encoding="utf-8") as f:
        return json.load(f)


def refused(args, out, monkeypatch):
    """office31.main(args) stops with a UserError's paragraph and a non-zero exit, before any image is decoded and
    with nothing written to out: the message, its spaces collapsed."""
    def decoded(*args, **kwargs):
        raise AssertionError("a domain was decoded before the error")
    monkeypatch.setattr(sweep_module, "load_domain", decoded)
    with pytest.raises(SystemExit) as e:  # (any other exception: a traceback)
        office31.main([*args, f"--out_dir={out}"])
    assert isinstance(e.value.code, str) and e.value.code.startswith("error: ")  # sys.exit(text): status 1
    assert not os.path.exists(out) or os.listdir(out) == []
    return " ".join(e.value.code.split())


def copy_run(run, folder, weights=None):
    """The run file copied into folder, with these bytes as its weights beside it: its new .json path."""
    os.makedirs(folder, exist_ok=True)
    copied = os.path.join(folder, os.path.basename(run))
    shutil.copy(run, copied)
    if weights is not None:
        with open(weights_of(copied), "wb") as f:
            f.write(weights)
    return copied


def truncated(saved, folder):
    with open(weights_of(saved["shot"]), "rb") as f:
        return copy_run(saved["shot"], folder, f.read()[:5000])


def garbage(saved, folder):
    return copy_run(saved["shot"], folder, bytes(range(256)) * 20)


def not_a_state_dict(saved, folder):
    copied = copy_run(saved["shot"], folder)
    torch.save(torch.zeros(3), weights_of(copied))
    return copied


# Each: (its flags, from the saved runs and a folder of its own; phrases its message holds)
ERRORS = {
    "no weights": (lambda s, d: ["--method=tent", "--bottleneck=0", f"--start_from={s['unsaved']}"],
                   ["is not there", "--save_model=True"]),
    "not a run file": (lambda s, d: ["--method=tent", f"--start_from={s['shot'][:-len('.json')]}.pth"],
                       ["expected a finished run's file, its .json or its .pt"]),
    "another model": (lambda s, d: ["--method=tent", "--model=resnet34", f"--start_from={s['shot']}"],
                      ["--model=resnet34 (it has resnet18)"]),
    "another bottleneck": (lambda s, d: ["--method=tent", "--bottleneck=128", f"--start_from={s['shot']}"],
                           ["--bottleneck=128 (it has 256)"]),
    "another crop": (lambda s, d: ["--method=tent", "--crop_size=16", f"--start_from={s['shot']}"],
                     ["--crop_size=16 (it has 20)"]),
    "another resize": (lambda s, d: ["--method=tent", "--resize_size=28", f"--start_from={weights_of(s['shot'])}"],
                       ["--resize_size=28 (it has 24)"]),
    "shot from plain layers": (lambda s, d: ["--method=shot", f"--start_from={weights_of(s['plain'])}"],
                               ["shot takes a model with shot new layers", "source_only's are plain"]),
    "another source": (lambda s, d: ["--method=tent", "--source=dslr", f"--start_from={s['shot']}"],
                       ["was trained on amazon", "this run's source is dslr"]),
    "classes named otherwise": (
        lambda s, d: ["--method=tent", f"--data_root={make_tree(d, {'amazon': 2, 'webcam': 2}, ['a', 'b', 'c'])}",
                      f"--start_from={s['shot']}"],
        ["trained on 3 classes, and amazon here has 3, named otherwise"]),
    "fewer classes": (
        lambda s, d: ["--method=tent", f"--data_root={make_tree(d, {'amazon': 2, 'webcam': 2}, ['bike', 'mug'])}",
                      f"--start_from={s['shot']}"],
        ["trained on 3 classes, and amazon here has 2"]),
    "truncated weights": (lambda s, d: ["--method=tent", f"--start_from={truncated(s, d)}"], ["damaged"]),
    "weights of garbage": (lambda s, d: ["--method=tent", f"--start_from={garbage(s, d)}"], ["damaged"]),
    "weights not a state_dict": (lambda s, d: ["--method=tent", f"--start_from={not_a_state_dict(s, d)}"],
                                 ["damaged"]),
}


@pytest.mark.parametrize("case", ERRORS)
def test_a_start_that_does_not_fit_is_refused_before_any_work(saved, tmp_path, monkeypatch, case):
    """Each mistake in --start_from stops the run before any image is decoded and before any file is written, with
    a paragraph naming the difference (the flag and what the saved run has)."""
    flags, phrases = ERRORS[case]
    message = refused([f"--data_root={saved['tree']}", *TINY, *flags(saved, str(tmp_path / "data"))],
                      tmp_path / "out", monkeypatch)
    assert message.startswith("error: --start_from=")
    for phrase in phrases:
        assert phrase in message


def test_a_refused_start_exits_non_zero_without_a_traceback(saved, tmp_path):
    result = run_script(f"--data_root={saved['tree']}", f"--out_dir={tmp_path / 'out'}", *TINY, "--method=tent",
                        f"--start_from={garbage(saved, str(tmp_path / 'bad'))}")
    assert result.returncode != 0
    assert result.stderr.startswith("error: --start_from=") and "Traceback" not in result.stderr, result.stderr
    assert "decoded" not in result.stdout and not os.path.exists(tmp_path / "out")


def test_the_run_file_records_the_start_and_the_row_its_name_and_digest(saved, tmp_path):
    out = tmp_path / "out"
    [result] = office31.main([f"--data_root={saved['tree']}", f"--out_dir={out}", *TINY, "--method=tent",
                              f"--start_from={saved['shot']}"])
    weights = weights_of(saved["shot"])
    digest = sha256(weights)
    assert run_file(out, result)["started_from"] == {"run_file": os.path.basename(saved["shot"]),
                                                     "weights": weights, "sha256": digest}
    [row] = rows_of(out)
    assert row["config"]["start"] == f"{os.path.basename(weights)[:-len('.pt')]} sha256:{digest[:12]}"


def test_without_start_from_a_row_and_its_run_file_hold_nothing_new(saved):
    """A run without --start_from (source_only, shot_source) keeps the key it had before the flag existed: the
    experiment keys alone, no "start"; its run file has no started_from."""
    for name in ("unsaved", "plain", "shot"):
        out = os.path.dirname(saved[name])
        [row] = rows_of(out)
        assert set(row["config"]) == set(EXPERIMENT_KEYS) and not {"start", "start_from"} & set(row["config"])
        assert "started_from" not in run_file(out, row)


def test_two_starting_points_are_two_experiments(saved, tmp_path):
    """TENT from two saved runs (both of a 256-wide bottleneck) writes two rows of two experiments; the same command
    again finds its row and trains nothing."""
    out = tmp_path / "out"
    common = [f"--data_root={saved['tree']}", f"--out_dir={out}", *TINY, "--method=tent", "--tasks=A-W"]
    office31.main([*common, f"--start_from={saved['shot']}"])
    office31.main([*common, f"--start_from={weights_of(saved['plain'])}"])
    rows = rows_of(out)
    starts = [row["config"].pop("start") for row in rows]
    assert [s.split(" ")[0] for s in starts] == [os.path.basename(saved[name])[:-len(".json")]
                                                 for name in ("shot", "plain")]
    assert rows[0]["config"] == rows[1]["config"]  # (all but the start: the same experiment otherwise)
    assert office31.main([*common, f"--start_from={saved['shot']}"]) == [] and len(rows_of(out)) == 2


def by_run(out, method):
    """{(source, target, seed): (its row, its run file)} of a method's rows in out's results file."""
    return {(r["source"], r["target"], r["seed"]): (r, run_file(out, r)) for r in rows_of(out)
            if r["config"]["method"] == method}


def test_a_sweep_of_shot_alone_trains_its_source_stage_first_and_starts_from_it(saved, tmp_path, short_shot):
    out = tmp_path / "out"
    args = [f"--data_root={saved['tree']}", f"--out_dir={out}", *TINY, "--method=shot"]
    office31.main(args)
    assert sorted(r["config"]["method"] for r in rows_of(out)) == ["shot", "shot_source"]
    [(source_row, _)] = by_run(out, "shot_source").values()
    [(row, shot)] = by_run(out, "shot").values()
    weights = str(out / weights_of(source_row["run_file"]))
    assert shot["started_from"] == {"run_file": source_row["run_file"], "weights": weights, "sha256": sha256(weights)}
    assert "start" not in row["config"]  # (its own source stage: the rest of the key fixes it)
    assert [e["epoch"] for e in shot["epochs"]] == [1, 2]
    assert office31.main(args) == [] and len(rows_of(out)) == 2  # the same command again: nothing to train


def test_a_source_stage_whose_weights_are_gone_is_said(saved, tmp_path, short_shot):
    out = tmp_path / "out"
    args = [f"--data_root={saved['tree']}", f"--out_dir={out}", *TINY]
    [stage] = office31.main([*args, "--method=shot_source"])
    os.remove(out / weights_of(stage["run_file"]))
    with pytest.raises(SystemExit) as e:
        office31.main([*args, "--method=shot"])
    message = " ".join(str(e.value.code).split())
    assert message.startswith("error: A→W shot seed 0 starts from A→W shot_source seed 0, whose weights")
    assert "are gone" in message and "--method=shot --rerun=True" in message
    assert [r["config"]["method"] for r in rows_of(out)] == ["shot_source"]  # neither retrained nor adapted


def test_a_rerun_of_the_source_stage_alone_is_refused_while_rows_started_from_it(saved, tmp_path, short_shot,
                                                                                 monkeypatch):
    """--rerun=True of tent (its shot_source with it) would replace the source model that shot's rows started from,
    and leave them beside the new one: refused before any work, naming them and the command that reruns them all;
    that command trains every one again, each from the new source stage."""
    out = tmp_path / "out"
    args = [f"--data_root={saved['tree']}", f"--out_dir={out}", *TINY]
    office31.main([*args, "--method=shot,tent"])
    before = rows_of(out)
    for method in ("tent", "shot_source"):
        with pytest.raises(SystemExit) as e:
            office31.main([*args, f"--method={method}", "--rerun=True"])
        message = " ".join(str(e.value.code).split())
        assert message.startswith("error: --rerun=True trains shot_source again, and rows in the results file "
                                  "started from the runs it would replace: shot A→W seed 0"), message
        assert rows_of(out) == before  # nothing trained
    assert "--method=tent,shot --rerun=True" in message or "--method=shot,tent --rerun=True" in message
    office31.main([*args, "--method=shot,tent", "--rerun=True"])
    rows = rows_of(out)[len(before):]
    assert [r["config"]["method"] for r in rows] == ["shot_source", "shot", "tent"]
    for row in rows[1:]:
        assert run_file(out, row)["started_from"]["run_file"] == rows[0]["run_file"]


def test_the_plan_lists_the_source_stage_runs_too(saved, tmp_path, capsys):
    out = tmp_path / "out"
    assert office31.main([f"--data_root={saved['tree']}", f"--out_dir={out}", *TINY, "--method=shot,tent",
                          "--tasks=A-W,W-A", "--plan=True"]) == []
    planned = [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines() if line.startswith("run ")]
    assert sorted(planned) == sorted(f"{task} {method} seed 0" for task in ("A→W", "W→A")
                                     for method in ("shot_source", "shot", "tent"))
    assert not os.path.exists(out / "results.jsonl")


@pytest.mark.slow
def test_a_sweep_trains_the_source_stage_once_per_task_and_seed_for_shot_and_tent(saved, tmp_path, short_shot,
                                                                                 capsys):
    """source_only, shot and tent over 2 tasks and 2 seeds: 4 shot_source runs (rows, run files, weights), each shot
    and tent run starting from the one of its task and seed; the table has the four rows and the notes naming the
    source-free and test-time rows; the same command again trains nothing."""
    out = tmp_path / "out"
    args = [f"--data_root={saved['tree']}", f"--out_dir={out}", *TINY, "--method=source_only,shot,tent",
            "--tasks=A-W,D-W", "--seeds=2"]
    office31.main(args)
    printed = capsys.readouterr().out
    runs = {("amazon", "webcam", 0), ("amazon", "webcam", 1), ("dslr", "webcam", 0), ("dslr", "webcam", 1)}
    for method in ("source_only", "shot_source", "shot", "tent"):
        assert sorted(by_run(out, method)) == sorted(runs)  # one row each
    stages = by_run(out, "shot_source")
    assert sorted(n for n in os.listdir(out) if n.endswith(".pt")) == sorted(weights_of(r["run_file"])
                                                                            for r, _ in stages.values())
    assert len([n for n in os.listdir(out) if "_shot_source_" in n and n.endswith(".json")]) == 4
    for method in ("shot", "tent"):
        for run, (_, found) in by_run(out, method).items():
            assert found["started_from"]["run_file"] == stages[run][0]["run_file"]
    table = printed[printed.index("| method |"):]
    assert [line.split(" | ")[0] for line in table.splitlines()[2:6]] == \
        ["| source_only", "| shot_source", "| shot", "| tent"]
    assert "source-free: shot (from shot_source)" in table and "test-time: tent (from shot_source)" in table
    assert office31.main(args) == [] and len(rows_of(out)) == 16
    assert "0 to train" in capsys.readouterr().out


def move_labels(domain):
    """Each image of the domain labelled as the next class, in place: its images stay, their labels are permuted
    (every class has as many images), and a model right on every image is now wrong on every one."""
    moved = [(y + 1) % len(domain.classes) for y in domain.targets]
    domain.targets = moved
    if hasattr(domain, "labels"):  # decoded in memory
        domain.labels = torch.tensor(moved, device=domain.labels.device)
    else:  # ImageFolder's samples: (path, label)
        domain.images.samples = [(path, y) for (path, _), y in zip(domain.images.samples, moved)]
        domain.images.targets = moved
    return domain


@pytest.fixture
def watched(monkeypatch):
    """What SHOT trains on, recorded (each pass's pseudo-labels, each step's labels), and the target's labels moved
    (move_labels) while watched["move"] is True: {"seen": [tensors], "move": False}."""
    watched = {"seen": [], "move": False}
    loaded, labelling, stepping = sweep_module.load_domain, SHOT.pseudo_labels, SHOT.step.__func__

    def load_domain(root, name, *args, **kwargs):
        domain = loaded(root, name, *args, **kwargs)
        return move_labels(domain) if watched["move"] and name == "webcam" else domain

    def pseudo_labels(logits, features, rounds=SHOT.rounds):
        watched["seen"].append(labelling(logits, features, rounds))
        return watched["seen"][-1]

    def step(cls, run, optimizer, x, pseudo):
        watched["seen"].append(pseudo.clone())
        return stepping(cls, run, optimizer, x, pseudo)
    monkeypatch.setattr(sweep_module, "load_domain", load_domain)
    monkeypatch.setattr(SHOT, "pseudo_labels", staticmethod(pseudo_labels))
    monkeypatch.setattr(SHOT, "step", classmethod(step))
    return watched


@pytest.mark.parametrize("method, cache", [("shot", "memory"), ("shot", "none"), ("tent", "memory")])
def test_the_targets_labels_are_read_by_the_final_evaluation_alone(saved, tmp_path, watched, short_shot, method,
                                                                   cache):
    """The same run with the target's labels permuted trains to the same numbers (each epoch's losses, SHOT's
    pseudo-labels and the labels of each of its steps), and only its accuracy differs; --cache=none too, where SHOT's
    batches come from ImageFolder's samples (data_loader.relabelled)."""
    results, seen = [], []
    for move in (False, True):
        watched.update(move=move, seen=[])
        results += office31.main([f"--data_root={saved['tree']}", f"--out_dir={tmp_path / str(move)}", *TINY,
                                  f"--method={method}", f"--cache={cache}", f"--start_from={saved['shot']}"])
        seen.append(watched["seen"])
    (plain, moved), (plain_seen, moved_seen) = results, seen
    numbers = [(e["loss"], e["adaptation_loss"]) for e in plain["epochs"]]
    assert numbers == [(e["loss"], e["adaptation_loss"]) for e in moved["epochs"]]
    assert all(loss is not None for loss, _ in numbers)
    assert len(plain_seen) == len(moved_seen) == (2 * 2 if method == "shot" else 0)  # (2 epochs: a pass, a step)
    assert all(torch.equal(a, b) for a, b in zip(plain_seen, moved_seen))
    assert plain["correct"] != moved["correct"]  # the final evaluation did read the moved labels


@pytest.mark.slow
def test_on_a_shifted_target_shot_and_tent_each_beat_the_source_model_they_start_from(tmp_path):
    """A target whose colours are 80 levels brighter than the source's (demo.make_tree's shift): the source model
    (shot_source) loses images there, and SHOT and TENT each get more right than it, on every task and seed. Seen
    on seeds 0-6: shot_source 8-18 of 18-24, shot 13-24, tent 16-24 (every one above its start)."""
    tree = make_tree(tmp_path / "shifted", {"amazon": 6, "webcam": 6}, shift=80)
    out = tmp_path / "out"
    office31.main([f"--data_root={tree}", f"--out_dir={out}", "--model=resnet18", "--weights=none",
                   "--resize_size=40", "--crop_size=32", "--epochs=2", "--iters_per_epoch=4", "--batch_size=8",
                   "--num_workers=0", "--device=cpu", "--amp=off", "--eval_every=0", "--validators=none",
                   "--method=shot,tent", "--seed=3", "--seeds=2"])
    stages = {run: row for run, (row, _) in by_run(out, "shot_source").items()}
    assert len(stages) == 2 and all(row["correct"] < row["total"] for row in stages.values())
    for method in ("shot", "tent"):
        adapted = by_run(out, method)
        assert sorted(adapted) == sorted(stages)
        for run, (row, found) in adapted.items():
            assert found["started_from"]["run_file"] == stages[run]["run_file"]
            assert row["correct"] > stages[run]["correct"], (method, run)


# A process running office31.main with SHOT's target stage in 2 epochs (short_shot's, in a process of its own: a fork
# of this one, whose torch has run already, can hang in its first parallel operation)
IN_CHILD = "import sys; sys.path.insert(0, sys.argv[1]); from methods.shot import SHOT; SHOT.epochs = 2; " \
           "import office31; office31.main(sys.argv[2:])"


@pytest.mark.slow
def test_two_processes_on_one_sweep_train_each_run_once(saved, tmp_path):
    """Two processes start the same sweep of shot over two tasks at once: every run is trained once, by one of them,
    shot_source once per task (the other skips it, or waits for it: source_stage), and each shot run starts from the
    shot_source run of its own task."""
    out = tmp_path / "out"
    args = [f"--data_root={saved['tree']}", f"--out_dir={out}", *TINY, "--method=shot", "--tasks=A-W,D-W"]
    both = [subprocess.Popen([sys.executable, "-c", IN_CHILD, ROOT, *args], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for process in both:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    rows = rows_of(out)
    assert sorted((r["config"]["method"], r["source"]) for r in rows) == \
        sorted((m, s) for m in ("shot_source", "shot") for s in ("amazon", "dslr"))
    stages = by_run(out, "shot_source")
    assert sorted(n for n in os.listdir(out) if n.endswith(".pt")) == sorted(weights_of(r["run_file"])
                                                                            for r, _ in stages.values())
    assert sorted(n for n in os.listdir(out) if n.endswith(".json")) == sorted(r["run_file"] for r in rows)
    for run, (_, found) in by_run(out, "shot").items():
        assert found["started_from"]["run_file"] == stages[run][0]["run_file"]


def test_a_run_file_named_alone_is_found_in_out_dir(saved, tmp_path):
    """--start_from=<name>.json (results.jsonl's run_file, a name alone) is the run of that name in --out_dir when
    there is none by that name here."""
    out = tmp_path / "out"
    with open(weights_of(saved["plain"]), "rb") as f:
        copied = copy_run(saved["plain"], out, f.read())
    [result] = office31.main([f"--data_root={saved['tree']}", f"--out_dir={out}", *TINY, "--method=tent",
                              f"--start_from={os.path.basename(copied)}"])
    assert result["started_from"]["weights"] == weights_of(copied)
    assert result["started_from"]["sha256"] == sha256(weights_of(copied))
