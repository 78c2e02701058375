"""Choosing without target labels: grids of flags, the held-out source split, the validators (each against a direct
re-computation of its paper's formula, and none reading a target label), the selection table and --analyze."""
import copy
import csv
import json
import math
import os
import re
import statistics

import numpy as np
import pytest
import torch

import data_loader
from runs import grid
import office31
from results import store
from selection import selection_table
from selection import validators
from conftest import make_tree
from common.errors import UserError

TINY = ["--model=resnet18", "--weights=none", "--resize_size=24", "--crop_size=20", "--iters_per_epoch=2",
        "--batch_size=6", "--num_workers=0", "--device=cpu", "--amp=off", "--method=dann"]


@pytest.fixture
def shifted(tmp_path):
    """Three domains, each class's colour shifted per domain (conftest.make_tree): a generated domain shift."""
    return make_tree(tmp_path / "office31", {"amazon": 8, "webcam": 6, "dslr": 4}, size=(28, 28))


def config(**flags):
    """The resolved config fine_tune takes, as main() hands it over (one method, its precision)."""
    c = office31.resolve(dict(office31.FLAGS, **flags))
    return office31.with_method(dict(c, precision="fp32", grid=[]), c["method"])


# -------------------------------------------------------------------------------------------------------------------
# grids


def test_a_grid_flag_keeps_its_values_and_a_flag_outside_the_grid_refuses_several():
    c = office31.parse_flags(["--trade_off=0.1, 1", "--lr=0.001,0.003"], echo=False)
    assert (c["trade_off"], c["lr"]) == ("0.1,1", "0.001,0.003")
    assert grid.varied(c) == ["trade_off", "lr"]
    assert grid.settings(c, office31.FLAGS) == [{"trade_off": 0.1, "lr": 0.001}, {"trade_off": 0.1, "lr": 0.003},
                                                {"trade_off": 1.0, "lr": 0.001}, {"trade_off": 1.0, "lr": 0.003}]
    with pytest.raises(UserError, match=r"--trade_off=0.1,x: 'x' is not a float"):
        office31.parse_flags(["--trade_off=0.1,x"], echo=False)
    with pytest.raises(UserError, match=r"--seed=1,2: one value only\. Several values \(a grid\) are taken by "
                                        r"--method, --bottleneck, --trade_off"):
        office31.parse_flags(["--seed=1,2"], echo=False)


def test_every_setting_of_a_grid_is_checked_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"--momentum=1.0: must be in \[0, 1\)"):
        office31.main(["--momentum=0.9,1", f"--out_dir={tmp_path}", "--data_root=nowhere"])
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_a_grid_of_two_trade_offs_by_two_epoch_counts_runs_each_once_and_resumes(tmp_path, shifted, capsys):
    out = tmp_path / "out"
    argv = [f"--data_root={shifted}", f"--out_dir={out}", *TINY, "--trade_off=0.1,1", "--epochs=1,2",
            "--source_val=0.25", "--tasks=A-W,W-A"]
    done = office31.main(argv)
    rows = store.read_rows(os.path.join(out, "results.jsonl"))
    settings = sorted((r["config"]["trade_off"], r["config"]["epochs"], r["source"], r["target"]) for r in rows)
    assert settings == sorted((t, e, s, d) for t in (0.1, 1.0) for e in (1, 2)
                              for s, d in [("amazon", "webcam"), ("webcam", "amazon")])
    assert len(done) == 8 and all(r["grid"] == ["trade_off", "epochs"] for r in rows)
    assert {r["held_out"] for r in rows if r["source"] == "amazon"} == {6}  # round(0.25 x 8) of 3 classes
    printed = capsys.readouterr().out
    assert "| dann trade_off=0.1 epochs=1 |" in printed and "| dann trade_off=1.0 epochs=2 |" in printed

    assert office31.main(argv) == []  # the same command again: every run is in the results file
    assert printed.count("skipping") == 0 and capsys.readouterr().out.count("skipping dann") == 8

    # the selection table, recomputed from the run files: per task, the epoch and setting each validator scores
    # highest, and the oracle's best target accuracy
    found = {}
    for r in rows:
        with open(os.path.join(out, r["run_file"]), encoding="utf-8") as f:
            for e in json.load(f)["epochs"]:
                found.setdefault((r["source"], r["target"]), []).append((e["validators"], e["target_acc"]))
    assert all(set(scores) == set(validators.NAMES) for runs in found.values() for scores, _ in runs)
    [name] = [n for n in os.listdir(out) if n.startswith("selection_") and n.endswith(".md")]
    shown = table_cells((out / name).read_text())
    for task, column in {("amazon", "webcam"): 0, ("webcam", "amazon"): 1}.items():
        runs = found[task]
        assert float(shown["oracle (target labels)"][column]) == round(100 * max(a for _, a in runs), 2)
        for v in validators.NAMES:
            best = max(runs, key=lambda run: run[0][v])  # (the first of equals, as selection_table.py picks)
            assert float(shown[v][column]) == round(100 * best[1], 2), v
    oracle = statistics.mean(float(x) for x in shown["oracle (target labels)"][:2])
    for choice, cells in shown.items():  # (every validator scored every candidate: each one's oracle is the oracle)
        assert float(cells[3]) == pytest.approx(oracle, abs=0.006)
        assert float(cells[4]) == pytest.approx(oracle - statistics.mean(map(float, cells[:2])), abs=0.011)
    [default] = [c for c in shown if c.startswith("final model: ")]
    assert default == "final model: dann trade_off=1.0 epochs=1"  # the most grid values at the flags' defaults
    assert os.path.getsize(out / name.replace("selection_", "validators_").replace(".md", ".png")) > 0
    with open(out / name.replace(".md", ".csv"), encoding="utf-8") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == (len(validators.NAMES) + 2) * 2  # every choice, both tasks, one seed

    # --report with the grid's flags narrows to the settings given, and shows them in one table
    office31.main([f"--out_dir={out}", "--report", "--trade_off=0.1", "--dataset=office31", f"--data_root={shifted}"])
    printed = capsys.readouterr().out
    assert "| dann trade_off=0.1 epochs=1 |" in printed and "trade_off=1.0 epochs" not in printed


def test_shards_of_a_grid_split_its_runs(tmp_path, shifted):
    argv = [f"--data_root={shifted}", f"--out_dir={tmp_path / 'out'}", *TINY, "--epochs=1", "--eval_every=0",
            "--validators=none", "--iters_per_epoch=1", "--trade_off=0.1,0.3,1"]
    first = office31.main([*argv, "--shard=0/2"])
    second = office31.main([*argv, "--shard=1/2"])
    assert sorted(r["config"]["trade_off"] for r in first + second) == [0.1, 0.3, 1.0]
    assert len(first) == 2 and len(second) == 1


# -------------------------------------------------------------------------------------------------------------------
# the held-out source split


@pytest.mark.parametrize("cache", [True, False])
def test_the_held_out_split_is_stratified_fixed_and_disjoint(tmp_path, cache):
    root = make_tree(tmp_path / "d", {"amazon": 5}, size=(20, 20))
    domain = data_loader.load_domain(root, "amazon", 20, cache, 0, "cpu")
    train, held = data_loader.split_held_out(domain, 0.4)
    again_train, again_held = data_loader.split_held_out(domain, 0.4)
    assert torch.equal(held.index, again_held.index)  # the same images every time, whatever the run's seed
    assert sorted(train.index.tolist() + held.index.tolist()) == list(range(15))
    targets = torch.tensor(domain.targets)
    assert torch.bincount(targets[held.index], minlength=3).tolist() == [2, 2, 2]  # round(0.4 x 5) per class
    seen = torch.cat([y for _, y in held.test_batches(4, 16)])
    assert torch.equal(seen, targets[held.index])  # every held-out image once, with its label
    # training draws from its part only: no crop of the whole image (crop = resize), flipped or not, is held out
    drawn = torch.cat([x for x, _ in train.train_batches(5, 6, 20, torch.Generator().manual_seed(0))])
    held_images = torch.cat([x for x, _ in held.test_batches(100, 20)])
    for image in drawn:
        assert not any(torch.equal(image, other) or torch.equal(image.flip(-1), other) for other in held_images)
    assert len(drawn) == 30


def test_a_class_of_one_image_keeps_it_for_training(tmp_path):
    root = make_tree(tmp_path / "d", {"amazon": 1}, size=(20, 20))
    domain = data_loader.load_domain(root, "amazon", 20, True, 0, "cpu")
    train, held = data_loader.split_held_out(domain, 0.5)
    assert len(train) == 3 and len(held) == 0


def test_a_held_out_part_too_small_to_score_stops_the_run_before_training(tmp_path, shifted):
    with pytest.raises(SystemExit, match=r"--source_val=0.05 holds out 0 of the 24 images of amazon \(round\(fraction "
                                        r"x n\) of each class of n\): the held-out validators need at least 2"):
        office31.main([f"--data_root={shifted}", f"--out_dir={tmp_path}", *TINY, "--source_val=0.05"])
    assert not (tmp_path / "results.jsonl").exists()


def test_a_score_that_is_not_finite_is_none():
    probs = torch.softmax(torch.randn(1, 3), 1)
    assert validators.compute(["snd", "entropy"], probs.log())["snd"] is None  # one point: no neighbourhood


def test_source_val_and_validators_are_checked(tmp_path):
    for flags, message in [(["--source_val=1"], r"--source_val=1.0: the fraction"),
                           (["--validators=dev"], r"dev read the labels|source_val_acc and dev read"),
                           (["--validators=bogus"], r"--validators=bogus: bogus is not among")]:
        with pytest.raises(SystemExit, match=message):
            office31.main([*flags, f"--out_dir={tmp_path}", "--data_root=nowhere"])


# -------------------------------------------------------------------------------------------------------------------
# each validator against its paper's formula, re-computed directly


def entropy_of(p):
    return -sum(x * math.log(x) for x in p if x > 0)


def test_entropy_infomax_bnm_and_snd_equal_their_formulas():
    probs = torch.softmax(torch.randn(7, 4, generator=torch.Generator().manual_seed(1)) * 2, 1).double()
    rows = probs.tolist()
    assert validators.entropy(probs) == pytest.approx(-statistics.mean(entropy_of(p) for p in rows))
    mean = [statistics.mean(p[k] for p in rows) for k in range(4)]
    assert validators.infomax(probs) == pytest.approx(entropy_of(mean) - statistics.mean(entropy_of(p) for p in rows))
    assert validators.bnm(probs) == pytest.approx(np.linalg.svd(np.array(rows), compute_uv=False).sum() / 7)
    densities = []
    for i, p in enumerate(rows):  # SND: each point's softmax over its cosine similarities to the others, / 0.05
        sims = [np.dot(p, q) / np.linalg.norm(p) / np.linalg.norm(q) / 0.05 for j, q in enumerate(rows) if j != i]
        weights = np.exp(np.array(sims) - max(sims))
        densities.append(entropy_of(weights / weights.sum()))
    assert validators.snd(probs) == pytest.approx(statistics.mean(densities))
    assert validators.snd(probs, chunk=3) == pytest.approx(statistics.mean(densities))  # chunked rows, same value


def test_dev_is_the_papers_control_variate_estimate():
    generator = torch.Generator().manual_seed(2)
    weights, losses = torch.rand(20, generator=generator).double() * 3, torch.rand(20, generator=generator).double()
    w, l = weights.numpy()[:, None], losses.numpy()[:, None]
    weighted = w * l  # You et al.'s get_dev_risk, on numpy
    eta = -np.cov(np.concatenate((weighted, w), axis=1), rowvar=False)[0][1] / np.var(w, ddof=1)
    assert float(validators.dev(weights, losses)) == pytest.approx(np.mean(weighted) + eta * np.mean(w) - eta)


def test_deves_density_ratio_recovers_a_known_one():
    """Source N(0, 1) and target N(1, 1) in one dimension: p_t(x)/p_s(x) = exp(x - 1/2)."""
    generator = torch.Generator().manual_seed(3)
    source, target = torch.randn(4000, 1, generator=generator), torch.randn(2000, 1, generator=generator) + 1
    points = torch.tensor([[-1.0], [0.0], [0.5], [1.0], [2.0]])
    ratios = validators.density_ratios(source, target, points)
    assert ratios.tolist() == pytest.approx(torch.exp(points[:, 0] - 0.5).tolist(), rel=0.12)


def test_compute_scores_every_validator_and_none_for_outputs_that_are_not_finite():
    generator = torch.Generator().manual_seed(4)
    logits, features = torch.randn(9, 3, generator=generator), torch.randn(9, 5, generator=generator)
    held = (torch.randn(6, 3, generator=generator), torch.tensor([0, 1, 2, 0, 1, 2]),
            torch.randn(6, 5, generator=generator))
    scores = validators.compute(validators.NAMES, logits, features, held, torch.randn(12, 5, generator=generator))
    assert list(scores) == list(validators.NAMES) and all(math.isfinite(v) for v in scores.values())
    assert scores["source_val_acc"] == (held[0].argmax(1) == held[1]).float().mean().item()
    probs = torch.softmax(logits, 1)
    assert scores["entropy"] == pytest.approx(float(validators.entropy(probs)))
    logits[0, 0] = math.nan
    assert validators.compute(["entropy", "bnm"], logits) == {"entropy": None, "bnm": None}


def test_score_reads_the_outputs_it_is_handed_and_says_which_passes_a_validator_reads():
    """score() is compute() on evaluate()'s outputs (the target's without labels); the held-out pass is read by
    source_val_acc and DEV only, features and the source's training images by DEV only."""
    generator = torch.Generator().manual_seed(4)
    target = office31.Outputs(0, 9, torch.randn(9, 3, generator=generator), None,
                              torch.randn(9, 5, generator=generator))
    held = office31.Outputs(2, 6, torch.randn(6, 3, generator=generator), torch.tensor([0, 1, 2, 0, 1, 2]),
                            torch.randn(6, 5, generator=generator))
    source = office31.Outputs(4, 12, torch.randn(12, 3, generator=generator), torch.zeros(12, dtype=torch.long),
                              torch.randn(12, 5, generator=generator))
    assert validators.score(validators.NAMES, target, held, source) == validators.compute(
        validators.NAMES, target.logits, target.features, (held.logits, held.labels, held.features), source.features)
    assert validators.score(["entropy"], target) == validators.compute(["entropy"], target.logits)
    assert [name for name in validators.NAMES if validators.reads_held_out([name])] == ["source_val_acc", "dev"]
    assert [name for name in validators.NAMES if validators.reads_features([name])] == ["dev"]


def test_an_evaluation_runs_only_the_passes_its_validators_read(tmp_path, shifted, monkeypatch):
    """The target pass always; the held-out source pass for source_val_acc and DEV only; the pass over the source's
    training images for DEV only; features (the classifier's input) only for DEV."""
    c = config(data_root=str(shifted), model="resnet18", weights="none", resize_size=24, crop_size=20, epochs=1,
               iters_per_epoch=1, batch_size=6, num_workers=0, source_val=0.25, amp="off", out_dir=str(tmp_path))
    source, target = (data_loader.load_domain(shifted, name, 24, True, 0, "cpu") for name in ("amazon", "webcam"))
    real, passes = office31.evaluate, []

    def counted(model, batches, amp, memory_format, layer=None):
        outputs = real(model, batches, amp, memory_format, layer)
        passes.append((outputs.total, outputs.features is not None))  # (images, features computed)
        return outputs
    monkeypatch.setattr(office31, "evaluate", counted)
    target_pass, held_pass, source_pass = 18, 6, 18  # webcam's 18; amazon's 24, a quarter of each class held out
    for chosen, expected in [("none", [(target_pass, False)]), ("entropy,snd", [(target_pass, False)]),
                             ("source_val_acc,bnm", [(target_pass, False), (held_pass, False)]),
                             ("dev", [(target_pass, True), (held_pass, True), (source_pass, True)])]:
        passes.clear()
        result = office31.fine_tune(dict(c, validators=chosen), source, target, torch.device("cpu"), "A→W")
        assert passes == expected, chosen
        assert set(result["epochs"][-1].get("validators", ())) == set(validators.chosen(chosen, True))


# -------------------------------------------------------------------------------------------------------------------
# no validator reads a target label; none changes training


@pytest.mark.slow
def test_shuffling_the_target_labels_changes_no_validator_score(tmp_path, shifted):
    c = config(data_root=str(shifted), model="resnet18", weights="none", resize_size=24, crop_size=20, epochs=2,
               iters_per_epoch=2, batch_size=6, num_workers=0, method="dann", source_val=0.25, out_dir=str(tmp_path),
               amp="off")  # (auto's CPU measurement, in the first run only, draws from the seeded global generator)
    source, target = (data_loader.load_domain(shifted, name, 24, True, 0, "cpu") for name in ("amazon", "webcam"))
    shuffled = copy.copy(target)
    shuffled.labels = target.labels[torch.randperm(len(target), generator=torch.Generator().manual_seed(5))]
    assert not torch.equal(shuffled.labels, target.labels)
    runs = [office31.fine_tune(c, source, t, torch.device("cpu"), "A→W") for t in (target, shuffled)]
    scores = [[e["validators"] for e in run["epochs"]] for run in runs]
    assert scores[0] == scores[1] and set(scores[0][0]) == set(validators.NAMES)
    assert [e["loss"] for e in runs[0]["epochs"]] == [e["loss"] for e in runs[1]["epochs"]]
    # and the validators leave training as it was: the same run without them has the same numbers
    plain = office31.fine_tune(dict(c, validators="none"), source, target, torch.device("cpu"), "A→W")
    assert [e["target_acc"] for e in plain["epochs"]] == [e["target_acc"] for e in runs[0]["epochs"]]
    assert all("validators" not in e for e in plain["epochs"])


@pytest.mark.slow
def test_a_runs_recorded_scores_equal_a_recomputation_from_its_saved_model(tmp_path, shifted):
    office31.main([f"--data_root={shifted}", f"--out_dir={tmp_path}", *TINY, "--epochs=1", "--source_val=0.25",
                   "--save_model"])
    [row] = store.read_rows(os.path.join(tmp_path, "results.jsonl"))
    with open(tmp_path / row["run_file"], encoding="utf-8") as f:
        recorded = json.load(f)["epochs"][-1]["validators"]
    net, new_layer = office31.build_model("resnet18", 3, "none", 256)
    net.load_state_dict(torch.load(tmp_path / row["run_file"].replace(".json", ".pt"), weights_only=True))
    net = net.to(memory_format=torch.channels_last)
    classifier = [m for m in new_layer(net).modules() if isinstance(m, torch.nn.Linear)][-1]  # (the new last Linear)
    source, target = (data_loader.load_domain(shifted, name, 24, True, 0, "cpu") for name in ("amazon", "webcam"))
    train, held = data_loader.split_held_out(source, 0.25)

    def outputs(domain):
        return office31.evaluate(net, domain.test_batches(256, 20), False, torch.channels_last, classifier)
    on_target, on_held, on_train = outputs(target), outputs(held), outputs(train)
    probs = torch.softmax(on_target.logits.double(), 1).numpy()
    entropies = [-sum(p * math.log(p) for p in row if p > 0) for row in probs]
    mean = probs.mean(0)
    assert recorded["entropy"] == pytest.approx(-statistics.mean(entropies), rel=1e-5)
    assert recorded["infomax"] == pytest.approx(-sum(p * math.log(p) for p in mean) - statistics.mean(entropies),
                                                rel=1e-4, abs=1e-6)
    assert recorded["bnm"] == pytest.approx(np.linalg.svd(probs, compute_uv=False).sum() / len(probs), rel=1e-5)
    assert recorded["source_val_acc"] == pytest.approx(
        (on_held.logits.argmax(1) == on_held.labels).double().mean().item())
    weights = validators.density_ratios(on_train.features, on_target.features, on_held.features)
    losses = torch.nn.functional.cross_entropy(on_held.logits, on_held.labels, reduction="none")
    w, l = weights.double().numpy()[:, None], losses.double().numpy()[:, None]
    eta = -np.cov(np.concatenate((w * l, w), axis=1), rowvar=False)[0][1] / np.var(w, ddof=1)
    assert recorded["dev"] == pytest.approx(-(np.mean(w * l) + eta * np.mean(w) - eta), rel=1e-4)


# -------------------------------------------------------------------------------------------------------------------
# the selection table on rows made by hand


def made(folder, label, seed, epochs, task=("amazon", "webcam"), **row):
    """A row of one setting, task and seed and its run file, made by hand: epochs are its evaluated epochs' records
    (target_acc, validators, ...), numbered from 1; row: the row's own keys (accuracy, metric, ...)."""
    name = f"{label}-{task[0]}-{seed}.json".replace(" ", "_")
    (folder / name).write_text(json.dumps({"epochs": [dict(e, epoch=k + 1) for k, e in enumerate(epochs)]}))
    return {"source": task[0], "target": task[1], "seed": seed, "run_file": name, **row}


def scored(*epochs, name="entropy"):
    """Evaluated epochs of (target accuracy, the validator's score) pairs."""
    return [{"target_acc": acc, "validators": {name: score}} for acc, score in epochs]


def table_cells(text):
    """{choice: its cells} of a printed selection table."""
    rows = [[x.strip() for x in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]
    return {cells[0]: cells[1:] for cells in rows if cells[0] not in ("choice", "---")}


def test_selection_picks_each_validators_best_and_the_oracle(tmp_path):
    def row(label, seed, final, epochs):
        return made(tmp_path, label, seed, scored(*epochs), accuracy=final)
    by_label = {"dann trade_off=0.1": [row("a", 0, 0.5, [(0.4, -3), (0.5, -1)]), row("a", 1, 0.6, [(0.6, -2)])],
                "dann trade_off=1.0": [row("b", 0, 0.7, [(0.9, -4), (0.7, -2)]), row("b", 1, 0.2, [(0.2, -1)])]}
    table = selection_table.picks(selection_table.candidates(str(tmp_path), by_label), by_label, "dann trade_off=1.0")
    task = ("amazon", "webcam")
    assert table["entropy"][task] == {0: ("dann trade_off=0.1", 2, 0.5, 0.9), 1: ("dann trade_off=1.0", 1, 0.2, 0.6)}
    assert table[selection_table.ORACLE][task] == {0: ("dann trade_off=1.0", 1, 0.9, 0.9),
                                             1: ("dann trade_off=0.1", 1, 0.6, 0.6)}
    assert table["final model: dann trade_off=1.0"][task] == {0: ("dann trade_off=1.0", None, 0.7, 0.9),
                                                             1: ("dann trade_off=1.0", None, 0.2, 0.6)}
    numbers = selection_table.cells(table)
    assert numbers["entropy"][1:] == pytest.approx((35.0, 75.0, 75.0 - 35.0))
    text = selection_table.markdown(table, lambda s, t: "A→W", "title", "accuracy", {})
    entropy, oracle = (f"{statistics.stdev(values):.2f}" for values in ([50, 20], [90, 60]))  # (over seeds 0, 1)
    assert table_cells(text)["entropy"] == [f"35.00 ± {entropy}", "35.00", "75.00", "40.00"]
    assert table_cells(text)[selection_table.ORACLE] == [f"75.00 ± {oracle}", "75.00", "75.00", "0.00"]
    assert "Each cell: the target accuracy (%)" in text and "(k/n)" not in text and "--rerun" not in text


def test_the_selection_files_show_mean_and_std_over_seeds_and_name_the_runs_they_are_of(tmp_path):
    """selection_<name>.md, .csv and .tex: each task's cell is the mean ± sample std over the seeds a choice picked
    on (no ± for one seed, "(k/n)" for k of n), the .tex a booktabs table as the papers print it; each file names the
    runs it is of (their count, tasks, seeds, hash), and the hash changes with the runs."""
    def epoch(acc, entropy, snd):
        return {"target_acc": acc, "validators": {"entropy": entropy, "snd": snd}}
    rows = [made(tmp_path, "a", 0, [epoch(0.9, -1, 2), epoch(0.8, -2, 1)], accuracy=0.8, date="d0"),
            made(tmp_path, "a", 1, [epoch(0.3, -1, None), epoch(0.2, -2, None)], accuracy=0.2, date="d1"),
            made(tmp_path, "a", 2, [epoch(0.5, -1, 0), epoch(0.7, -2, 1)], accuracy=0.7, date="d2")]
    by_label = {"dann": rows}
    paths = selection_table.report(str(tmp_path), by_label, "dann", lambda s, t: "A→W", "title", "stem")
    assert [os.path.basename(p) for p in paths] == ["selection_stem.md", "selection_stem.csv", "selection_stem.tex",
                                                    "validators_stem.png"]
    text, table, latex = (open(p, encoding="utf-8").read() for p in paths[:3])
    picked = {"entropy": [90, 30, 50], "snd": [90, 70], "final model: dann": [80, 20, 70], "oracle (target labels)":
              [90, 30, 70]}  # (snd: no score on seed 1)
    for choice, values in picked.items():
        mean, std = statistics.mean(values), statistics.stdev(values)
        partial = " (2/3)" if len(values) == 2 else ""
        assert table_cells(text)[choice][0] == f"{mean:.2f} ± {std:.2f}{partial}", choice
        [line] = [line for line in latex.splitlines() if line.startswith(choice.replace("_", "\\_") + " & ")]
        assert line.split(" & ")[1] == f"{mean:.1f} $\\pm$ {std:.1f}{partial}", choice
    assert "\\toprule" in latex and "Choice & A$\\to$W & Avg & Its oracle & Gap \\\\" in latex
    [shown] = [line for line in text.splitlines() if line.startswith("shows ")]
    assert shown.startswith("shows 3 runs: task A→W; seeds 0, 1, 2; runs hash ")
    digest = shown.rsplit(" ", 1)[1]
    assert latex.splitlines()[0].endswith(shown) and latex.startswith("% title; ")
    assert {line["runs_hash"] for line in csv.DictReader(open(paths[1], encoding="utf-8"))} == {digest}
    one = {"dann": rows[:1]}  # one seed: no ±
    paths = selection_table.report(str(tmp_path), one, "dann", lambda s, t: "A→W", "title", "one")
    text = open(paths[0], encoding="utf-8").read()
    assert table_cells(text)["entropy"][0] == "90.00" and "shows 1 run: task A→W; seed 0; runs hash " in text
    assert digest not in text


def test_a_visda_selection_table_its_oracle_its_files_and_figure_score_by_the_mean_class_accuracy(tmp_path):
    """Each epoch records both numbers; on VisDA-2017 every pick, the oracle, the final model, the csv and the figure
    take the mean class accuracy, the number its table shows: here the oracle by accuracy would pick another epoch."""
    def epoch(acc, class_acc, score):
        return {"target_acc": acc, "target_class_acc": class_acc, "validators": {"entropy": score}}
    visda = {"metric": "mean class accuracy"}
    by_label = {"dann lr=0.001": [made(tmp_path, "a", 0, [epoch(0.9, 0.3, -1), epoch(0.6, 0.7, -2)], accuracy=0.6,
                                       mean_class_accuracy=0.7, **visda)],
                "dann lr=0.01": [made(tmp_path, "b", 0, [epoch(0.5, 0.4, -3)], accuracy=0.5, mean_class_accuracy=0.4,
                                      **visda)]}
    found = selection_table.candidates(str(tmp_path), by_label)
    table = selection_table.picks(found, by_label, "dann lr=0.001")
    task = ("amazon", "webcam")
    assert table[selection_table.ORACLE][task] == {0: ("dann lr=0.001", 2, 0.7, 0.7)}  # by accuracy: epoch 1
    assert table["entropy"][task] == {0: ("dann lr=0.001", 1, 0.3, 0.7)}
    assert table["final model: dann lr=0.001"][task] == {0: ("dann lr=0.001", None, 0.7, 0.7)}
    # the rows as the table of final models hands them over (the mean class accuracy in the accuracy's place)
    for rows in by_label.values():
        rows[:] = [dict(r, accuracy=r["mean_class_accuracy"]) for r in rows]
    paths = selection_table.report(str(tmp_path), by_label, "dann lr=0.001", lambda s, t: "S→R", "title", "visda")
    shown = table_cells(open(paths[0], encoding="utf-8").read())
    assert shown["entropy"] == ["30.00", "30.00", "70.00", "40.00"]
    assert shown["final model: dann lr=0.001"] == shown[selection_table.ORACLE] == ["70.00", "70.00", "70.00", "0.00"]
    assert "Each cell: the target mean class accuracy (%)" in open(paths[0], encoding="utf-8").read()
    with open(paths[1], encoding="utf-8") as f:
        lines = list(csv.DictReader(f))
    assert [(line["choice"], line["target_class_acc"]) for line in lines] == [
        ("final model: dann lr=0.001", "70.0000"), ("entropy", "30.0000"), (selection_table.ORACLE, "70.0000")]
    figure = selection_table.draw(found, table, lambda s, t: "S→R", "mean class accuracy", str(tmp_path / "v.png"))
    [axis] = figure.axes
    assert axis.get_ylabel() == "target mean class accuracy (%)"
    points = [y for c in axis.collections if c.get_gid().startswith("points") for y in c.get_offsets()[:, 1]]
    assert sorted(points) == pytest.approx([30.0, 40.0, 70.0])


def test_runs_without_scores_are_named_and_no_oracle_or_gap_leaves_them_out_silently(tmp_path):
    """The default setting ran first with --validators=none, a grid with scores after: its final model is no
    candidate, so it is not set against an oracle that could not have picked it; the table names it, and says how
    to score it."""
    final = made(tmp_path, "a", 0, [{"target_acc": 0.2}, {"target_acc": 0.29}], accuracy=0.29)
    by_label = {"dann lr=0.001": [final, made(tmp_path, "a", 0, [{"target_acc": 0.5}], ("webcam", "amazon"),
                                              accuracy=0.5)],
                "dann lr=0.01": [made(tmp_path, "b", 0, scored((0.2, -1), (0.1, -2)), accuracy=0.1),
                                 made(tmp_path, "b", 1, scored((0.3, -1), (0.4, -2)), accuracy=0.4)]}
    found = selection_table.candidates(str(tmp_path), by_label)
    assert selection_table.unscored(found, by_label) == {"dann lr=0.001": {("amazon", "webcam"): [0],
                                                                      ("webcam", "amazon"): [0]}}
    table = selection_table.picks(found, by_label, "dann lr=0.001")
    assert table["final model: dann lr=0.001"] == {}  # no candidate: not beside an oracle of 20.00
    text = selection_table.markdown(table, lambda s, t: f"{s[0].upper()}→{t[0].upper()}", "title", "accuracy",
                              selection_table.unscored(found, by_label))
    assert table_cells(text)["final model: dann lr=0.001"] == ["-", "-", "-", "-"]
    spread = f"{statistics.stdev([20, 40]):.2f}"  # (the oracle's picks: 0.2 on seed 0, 0.4 on seed 1)
    assert table_cells(text)[selection_table.ORACLE] == [f"30.00 ± {spread}", "30.00", "30.00", "0.00"]
    assert ("No validator scores (run with --validators=none, or the run file is gone), so not among the candidates "
            "and in no number above, the final model's included: dann lr=0.001 (A→W seed 0, W→A seed 0). To score "
            "them, run those settings again with --rerun=True and --validators=auto (or --validators=entropy).") in text
    table = dict(table, source_val_acc=table["entropy"], dev=table["entropy"])  # held-out ones: refused without
    text = selection_table.markdown(table, lambda s, t: f"{s[0].upper()}→{t[0].upper()}", "title", "accuracy",  # a split
                              selection_table.unscored(found, by_label))
    assert "--rerun=True and --validators=auto (or --validators=entropy)." in text


def test_a_sweep_and_its_report_name_the_same_default_and_files_in_any_order(tmp_path, shifted, capsys):
    """The final model beside the validators is the flags' defaults' (source only), and the files the same, whether
    the sweep named dann first or the results file holds dann's row first."""
    argv = [f"--data_root={shifted}", f"--out_dir={tmp_path}", *TINY, "--epochs=1", "--tasks=A-W"]
    office31.main(argv)  # dann's row first in the results file
    capsys.readouterr()
    office31.main([*argv, "--method=dann,source_only"])
    swept = capsys.readouterr().out
    office31.main([*argv, "--method=source_only,dann", "--report=True"])
    reported = capsys.readouterr().out

    def written(printed):
        return sorted(re.search(r"^wrote (.*)$", printed, re.M).group(1).split(", "))
    for printed in (swept, reported):
        assert "| final model: source_only |" in printed.split("choosing without target labels")[1]
    assert written(swept) == written(reported)


@pytest.mark.slow
def test_the_default_run_without_scores_then_a_grid_with_them(tmp_path, shifted, capsys):
    """The sweep reuses the unscored run of the default setting (validators are no experiment flag): the selection
    table says so rather than set its final model against the other setting's oracle."""
    argv = [f"--data_root={shifted}", f"--out_dir={tmp_path}", *TINY, "--epochs=2", "--tasks=A-W"]
    office31.main([*argv, "--validators=none"])
    capsys.readouterr()
    office31.main([*argv, "--lr=0.001,0.01", "--validators=entropy,infomax"])
    text = capsys.readouterr().out.split("choosing without target labels")[1]
    assert table_cells(text)["final model: dann lr=0.001"] == ["-"] * 4
    assert "the final model's included: dann lr=0.001 (A→W seed 0). To score them, run those settings again with " \
           "--rerun=True and --validators=auto (or --validators=entropy,infomax)." in text


def test_a_validator_without_a_score_on_a_seed_is_compared_on_the_seeds_it_has(tmp_path):
    """snd has no score on the hard seed (outputs not finite): its cell says 1/2 seeds, and its gap is to the oracle
    on that seed only, not to the oracle's mean over both (which would put it above the oracle)."""
    def epoch(acc, entropy, snd):
        return {"target_acc": acc, "validators": {"entropy": entropy, "snd": snd}}
    by_label = {"dann": [made(tmp_path, "a", 0, [epoch(0.9, -1, 2), epoch(0.8, -2, 1)], accuracy=0.8),
                         made(tmp_path, "a", 1, [epoch(0.3, -1, None), epoch(0.2, -2, None)], accuracy=0.2)]}
    table = selection_table.picks(selection_table.candidates(str(tmp_path), by_label), by_label, "dann")
    assert list(table["snd"][("amazon", "webcam")]) == [0]
    means, average, oracle, gap = selection_table.cells(table)["snd"]
    assert means == {("amazon", "webcam"): (90.0, 1, 2)} and (average, oracle, gap) == pytest.approx((90, 90, 0))
    assert selection_table.cells(table)[selection_table.ORACLE][1:] == pytest.approx((60, 60, 0))
    text = selection_table.markdown(table, lambda s, t: "A→W", "title", "accuracy", {})
    assert table_cells(text)["snd"] == ["90.00 (1/2)", "90.00", "90.00", "0.00"]
    assert table_cells(text)["entropy"] == [f"60.00 ± {statistics.stdev([90, 30]):.2f}", "60.00", "60.00", "0.00"]
    assert "(k/n): over the k of the n seeds where it picked one" in text


def test_each_validators_gap_is_to_the_oracle_over_the_candidates_it_could_pick_from(tmp_path):
    """source_val_acc scores only the setting with a held-out source part; the best model is in the other: its gap is
    to the best of the candidates it scored, and the table says over what."""
    def epoch(acc, **scores):
        return {"target_acc": acc, "validators": scores}
    by_label = {"dann source_val=0.0": [made(tmp_path, "a", 0, [epoch(0.9, entropy=-2)], accuracy=0.9)],
                "dann source_val=0.1": [made(tmp_path, "b", 0, [epoch(0.6, entropy=-1, source_val_acc=0.5),
                                                                  epoch(0.7, entropy=-3, source_val_acc=0.4)],
                                             accuracy=0.7)]}
    table = selection_table.picks(selection_table.candidates(str(tmp_path), by_label), by_label, "dann source_val=0.0")
    text = selection_table.markdown(table, lambda s, t: "A→W", "title", "accuracy", {})
    assert table_cells(text)["source_val_acc"] == ["60.00", "60.00", "70.00", "10.00"]  # not 30.00: 90 it could not pick
    assert table_cells(text)["entropy"] == ["60.00", "60.00", "90.00", "30.00"]
    assert table_cells(text)[selection_table.ORACLE] == ["90.00", "90.00", "90.00", "0.00"]
    assert "its oracle: the best among the candidates the row picked from" in text
    assert "source_val_acc, dev: runs with --source_val > 0" in text


# -------------------------------------------------------------------------------------------------------------------
# --analyze


@pytest.mark.slow
def test_analyze_a_saved_run_prints_the_proxy_a_distance_and_writes_its_t_sne(tmp_path, shifted, capsys):
    argv = [f"--data_root={shifted}", f"--out_dir={tmp_path}", *TINY, "--epochs=1", "--eval_every=0"]
    with pytest.raises(SystemExit, match=r"there is no finished run of it there"):
        office31.main([*argv, "--analyze"])
    office31.main(argv)
    with pytest.raises(SystemExit, match=r"its weights were not saved: run it again with --save_model=True"):
        office31.main([*argv, "--analyze"])
    office31.main([*argv, "--save_model", "--rerun"])
    capsys.readouterr()
    [found] = office31.main([*argv, "--analyze"])["runs"]
    line = capsys.readouterr().out
    shown = re.search(r"A→W proxy A-distance: (-?[\d.]+) \(a linear domain classifier's test error ([\d.]+)%; "
                      r"features: the classifier's input: the 256-wide bottleneck's output; 24 source and 18 target "
                      r"images", line)
    assert shown and float(shown[1]) == round(found["proxy_a_distance"], 3)
    assert found["proxy_a_distance"] == pytest.approx(2 * (1 - 2 * found["domain_error"]))
    figure = os.path.join(tmp_path, f"tsne_{found['run_file'][:-len('.json')]}.png")
    assert os.path.getsize(figure) > 0 and os.path.basename(figure).startswith("tsne_amazon-webcam")
    with pytest.raises(SystemExit, match=r"--analyze=True reads one finished run"):
        office31.main([*argv, "--analyze", "--seeds=2"])


def test_proxy_a_distance_is_two_for_separable_domains_and_near_zero_for_one():
    from selection.analysis import proxy_a_distance
    generator = torch.Generator().manual_seed(6)
    same = torch.randn(400, 4, generator=generator)
    assert proxy_a_distance(same[:200], same[200:])[0] < 0.4
    assert proxy_a_distance(same[:200], same[200:] + 10)[0] == 2.0


def test_the_proxy_a_distance_takes_devs_domain_classifier_and_scikit_learns_numbers():
    """One linear domain classifier (validators.domain_classifier) for DEV and the proxy A-distance: on the same
    split, the test error of scikit-learn's standardised LogisticRegression, which the proxy A-distance once fitted."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from selection.analysis import proxy_a_distance
    generator = torch.Generator().manual_seed(7)
    for shift, dimensions in ((0.2, 8), (0.5, 32), (1.0, 4)):
        source = torch.randn(120, dimensions, generator=generator)
        target = torch.randn(90, dimensions, generator=generator) + shift
        y = [0] * 120 + [1] * 90
        x_fit, x_test, y_fit, y_test = train_test_split(torch.cat([source, target]).numpy(), y, test_size=0.5,
                                                        stratify=y, random_state=0)
        error = 1 - make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_fit, y_fit).score(
            x_test, y_test)
        assert proxy_a_distance(source, target)[1] == pytest.approx(error)
    x = torch.cat([torch.zeros(10, 2), torch.ones(10, 2)]) + 0.1 * torch.randn(20, 2, generator=generator)
    w, b, accuracy = validators.domain_classifier(x, torch.tensor([0.0] * 10 + [1.0] * 10), torch.arange(0, 20, 2),
                                                  torch.arange(1, 20, 2), validators.DOMAIN_DECAYS)
    assert accuracy == 1.0 and bool(((x @ w + b > 0) == torch.arange(20).ge(10)).all())
