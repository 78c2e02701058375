"""docs/new_method.md, done literally: a copy of the repository gets the page's example method, dataset entry and
validator where the page says to put them, and runs the page's sweeps; and a method registered in METHODS alone is
taken by the checks, the config, the module and the figures, with no other edit."""
import ast
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import methods as registry
import office31
from conftest import CLASSES, ROOT, make_tree
from methods.method import Method
from networks.models import make_adaptation
from results import curves, experiments
from runs import checks

PAGE = os.path.join(ROOT, "docs", "new_method.md")
# The page's sweeps made small: what the test adds to the command it copies
SMALL = ["--model=resnet18", "--weights=none", "--resize_size=16", "--crop_size=16", "--epochs=1",
         "--iters_per_epoch=2", "--batch_size=4", "--num_workers=0", "--device=cpu", "--amp=off", "--seeds=1",
         "--eval_every=1"]
# Runs office31.main on the flags given, recording what make_adaptation built and each optimizer's groups; prints
# {"runs": [[method class, ids of its module's parameters, of the new layers', of the lr_mult group's], ...]}
DRIVER = r"""
import json, sys
# BEFORE
import torch
from networks import models
built, runs = [], []
real_make, real_sgd = models.make_adaptation, torch.optim.SGD.__init__

def make(*args):
    module, new = real_make(*args)
    built.append((module, new))
    return module, new

def sgd(self, groups, *args, **kwargs):
    module, new = built[-1]
    runs.append([type(module).__name__, sorted(map(id, module.parameters())) if module else [],
                 sorted(map(id, new.parameters())), sorted(map(id, groups[1]["params"]))])
    real_sgd(self, groups, *args, **kwargs)

models.make_adaptation, torch.optim.SGD.__init__ = make, sgd
import office31
office31.main(sys.argv[1:])
print(json.dumps({"runs": runs}))
"""


def page():
    with open(PAGE, encoding="utf-8") as f:
        return f.read()


def block_after(phrase):
    """The first fenced block after the page's sentence `phrase`, as its lines say."""
    text = page()
    assert phrase in text, f"docs/new_method.md no longer says {phrase!r}"
    return re.search(r"```[a-z]*\n(.*?)```", text[text.index(phrase):], re.S).group(1)


def copy_repository(folder):
    """The repository's files (git ls-files: tracked, and new ones git does not ignore, such as a method just added
    by this page), copied into folder: a checkout to add to."""
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(os.path.join(folder, os.path.dirname(name)), exist_ok=True)
            shutil.copy(os.path.join(ROOT, name), os.path.join(folder, name))
    return str(folder)


def add_to_mapping(path, opening, lines):
    """lines put last in the mapping that begins with the line `opening` (before its closing brace)."""
    with open(path, encoding="utf-8") as f:
        text = f.read().splitlines(keepends=True)
    start = next(i for i, line in enumerate(text) if line.startswith(opening))
    end = next(i for i in range(start, len(text)) if text[i].rstrip() == "}")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(text[:end] + [lines] + text[end:])


def add_method(repo, file="entmin.py", its_import="add the import with the others at the top",
               its_line="its line at the end of `METHODS`"):
    """What the page's method section says: the file, the import with the others, the line at the end of METHODS
    (the blocks after the page's phrases its_import and its_line)."""
    with open(os.path.join(repo, "methods", file), "w", encoding="utf-8") as f:
        f.write(block_after(f"Save this as `methods/{file}`:"))
    path = os.path.join(repo, "methods", "__init__.py")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    last = max(i for i, line in enumerate(lines) if line.startswith("from methods."))
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines[:last + 1] + [block_after(its_import)] + lines[last + 1:])
    add_to_mapping(path, "METHODS = {", block_after(its_line))


def page_command(phrase):
    """The flags of the page's `python office31.py ...` line after `phrase` (the last, where the block has several)."""
    line = block_after(phrase).strip().splitlines()[-1]
    assert line.startswith("python office31.py ")
    return line.split()[2:]


def run(repo, args, before=""):
    """The driver in the copy, by subprocess, with the code `before` run first: (its stdout, the runs it recorded)."""
    done = subprocess.run([sys.executable, "-c", DRIVER.replace("# BEFORE", before), *args], cwd=repo,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, json.loads(done.stdout.splitlines()[-1])["runs"]


def table_rows(out):
    """{method: its row} of the methods table a sweep printed."""
    table = out.split("| method |", 1)[1].split("\n\n", 1)[0].splitlines()
    return {line.split(" | ")[0].strip("| "): line for line in table[2:]}


def test_a_method_in_methods_alone_is_checked_configured_built_and_drawn(monkeypatch):
    """The registry is what every part asks: a class added to METHODS, and nowhere else, is a valid --method, gets
    its bottleneck and its own switch, is built with its layers among the lr_mult ones, and has a colour."""
    class Toy(Method):
        bottleneck = 48
        flags = {"entropy": "the toy's switch"}

        def __init__(self, feature_size, num_classes, trade_off, features, entropy=False):
            super().__init__(feature_size, num_classes, trade_off, features)
            self.switch, self.layer = entropy, torch.nn.Linear(feature_size, 1)

        def term(self, features, logits, progress):
            return self.layer(list(features.values())[-1]).mean()

    monkeypatch.setitem(registry.METHODS, "toy", Toy)
    c = office31.resolve(dict(office31.FLAGS, method="source_only,toy", entropy=True, model="resnet18"))
    checks.check_config(c)  # (--entropy: taken, as the toy reads it)
    config = registry.with_method(c, "toy")
    assert (config["bottleneck"], config["entropy"], registry.with_method(c, "cdan")["entropy"]) == (48, True, True)
    net, new_layer = office31.build_model("resnet18", 3, "none", config["bottleneck"])
    module, new = make_adaptation(config, net, new_layer(net), 3, torch.device("cpu"))
    assert isinstance(module, Toy) and module.switch
    assert {id(p) for p in module.layer.parameters()} <= {id(p) for p in new.parameters()}
    assert re.fullmatch(r"C\d", curves.colour("toy"))  # no colour declared: one fixed by its name
    monkeypatch.delitem(registry.METHODS, "toy")
    with pytest.raises(office31.UserError, match="toy is not among"):
        checks.check_config(c)


def test_the_pages_method_runs_in_a_sweep_beside_source_only_its_layers_at_lr_mult(tmp_path):
    repo = copy_repository(tmp_path / "repo")
    add_method(repo)
    root = make_tree(tmp_path / "office31", {"amazon": 2, "dslr": 2, "webcam": 2}, size=(20, 20))
    args = page_command("only in a sweep (here on Office-31's A→W and D→A")
    assert args[0] == "--method=source_only,entmin"
    out, runs = run(repo, [*args, *SMALL, f"--data_root={root}", f"--out_dir={tmp_path / 'out'}"])
    rows = table_rows(out)
    assert list(rows) == ["source_only", "entmin"], out
    assert re.fullmatch(r"\| entmin \| \d+\.\d\d \| \d+\.\d\d \| \d+\.\d\d \|", rows["entmin"]), rows
    entmin = [r for r in runs if r[0] == "EntMin"]
    assert len(entmin) == 2 and [r[0] for r in runs].count("NoneType") == 2  # a run a task, source only: no module
    for _, own, new, lr_mult in runs:
        assert set(own) <= set(new) == set(lr_mult)  # the new layers, the method's own with them, at lr_mult
    with open(tmp_path / "out" / "results.jsonl", encoding="utf-8") as f:
        widths = {json.loads(line)["config"]["method"]: json.loads(line)["config"]["bottleneck"] for line in f}
    assert widths == {"source_only": 0, "entmin": 256}  # the page's bottleneck, the class's


@pytest.mark.slow
def test_the_pages_source_free_method_starts_from_the_source_stage_shot_trains_once(tmp_path):
    repo = copy_repository(tmp_path / "repo")
    add_method(repo, "shot_im.py", "register it as above, with its import", "and its line at the end of `METHODS`:")
    root = make_tree(tmp_path / "office31", {"amazon": 2, "dslr": 2, "webcam": 2}, size=(20, 20))
    args = page_command("and compare it with SHOT: the sweep trains `shot_source` once")
    assert args[0] == "--method=shot,shot_im"
    out, _ = run(repo, [*args, *SMALL, f"--data_root={root}", f"--out_dir={tmp_path / 'out'}"],
                 before="from methods.shot import SHOT\nSHOT.epochs = 2")  # (its 15 target epochs: 2 are enough here)
    assert list(table_rows(out)) == ["shot_source", "shot", "shot_im"], out
    assert "source-free: shot (from shot_source), shot_im (from shot_source)" in out
    with open(tmp_path / "out" / "results.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert sorted(r["config"]["method"] for r in rows) == ["shot", "shot", "shot_im", "shot_im", "shot_source",
                                                            "shot_source"]  # one source stage a task, shared
    sources = {(r["source"], r["target"]): r["run_file"] for r in rows if r["config"]["method"] == "shot_source"}
    for r in rows:
        if r["config"]["method"] != "shot_source":
            with open(tmp_path / "out" / r["run_file"], encoding="utf-8") as f:
                started = json.load(f)["started_from"]
            assert started["run_file"] == sources[(r["source"], r["target"])]
            with open(tmp_path / "out" / r["run_file"], encoding="utf-8") as f:
                history = json.load(f)["epochs"]
            pseudo = [e["loss"] for e in history]
            assert (max(pseudo) == 0.0) == (r["config"]["method"] == "shot_im")  # SHOT-IM: no pseudo-label term


@pytest.mark.slow
def test_the_pages_validator_has_its_row_in_the_selection_table(tmp_path):
    repo = copy_repository(tmp_path / "repo")
    path = os.path.join(repo, "selection", "validators.py")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert text.count("\nON_PREDICTIONS = {") == 1
    with open(path, "w", encoding="utf-8") as f:  # the function above ON_PREDICTIONS
        f.write(text.replace("\nON_PREDICTIONS = {", "\n" + block_after("Put the function above `ON_PREDICTIONS`")
                             + "\n\nON_PREDICTIONS = {"))
    add_to_mapping(path, "ON_PREDICTIONS = {", block_after("its line at the end of `ON_PREDICTIONS`"))
    root = make_tree(tmp_path / "office31", {"amazon": 2, "dslr": 2, "webcam": 2}, size=(20, 20))
    out, _ = run(repo, ["--method=source_only,dann", "--tasks=A-W", *SMALL, f"--data_root={root}",
                        f"--out_dir={tmp_path / 'out'}"])
    selection = out.split("choosing without target labels", 1)[1]
    [row] = [line for line in selection.splitlines() if line.startswith("| confidence |")]
    assert re.search(r"\d+\.\d\d", row), selection


@pytest.mark.slow
def test_the_pages_dataset_entry_downloads_and_runs_its_sweep(tmp_path):
    """The page's DATASETS entry, served from local archives in place of its server (the test touches no network),
    and the page's sweep on it, with the page's method."""
    repo = copy_repository(tmp_path / "repo")
    add_method(repo)
    entry = block_after("sketched, the entry is:")
    add_to_mapping(os.path.join(repo, "datasets", "download.py"), "DATASETS = {", entry)
    [(name, spec)] = ast.literal_eval("{" + entry + "}").items()
    tree = make_tree(tmp_path / "made", {domain: count // spec["classes"] for domain, count in spec["domains"].items()},
                     classes=CLASSES[:spec["classes"]], size=(20, 20))
    served = tmp_path / "served"
    for domain, (url, inside, _) in spec["archives"].items():
        shutil.make_archive(str(served / os.path.splitext(os.path.basename(url))[0]), "zip", tree, inside)
    serve = ("import os, shutil\nfrom datasets import download\n"  # each archive from its local copy
             f"download.fetch_url = lambda url, folder, filename: shutil.copy(os.path.join({str(served)!r}, "
             "os.path.basename(url)), os.path.join(folder, filename))")
    args = page_command("Then this downloads it into `data/toys`")
    assert args[0] == f"--dataset={name}"
    out, _ = run(repo, [*args, *SMALL, f"--data_root={tmp_path / 'data' / name}", f"--out_dir={tmp_path / 'out'}"],
                 serve)
    assert "Toys is in" in out
    rows = table_rows(out)
    assert list(rows) == ["source_only", "entmin"] and out.count("| method | P→S | S→P | average |") == 1, out


def test_a_new_methods_own_switch_keeps_its_runs_apart_and_names_them(monkeypatch):
    """A switch only a new method reads (its `flags`, a name other than --entropy) is part of the experiment: runs
    with it on and off are two experiments, with two labels and two file stems; rows written before the method
    existed read as having it off."""
    class Toy(Method):
        flags = {"both": "the toy's switch"}

        def term(self, features, logits, progress):
            return logits.sum() * 0

    monkeypatch.setitem(registry.METHODS, "toy", Toy)
    c = office31.resolve(dict(office31.FLAGS, both=False, source="amazon", target="webcam", precision="fp32"))
    off, on = (registry.with_method(dict(c, both=value), "toy") for value in (False, True))
    assert experiments.experiment(off) != experiments.experiment(on)
    assert (experiments.method_label(off), experiments.method_label(on)) == ("toy", "toy+both")
    assert experiments.run_stem(on).endswith("_toy+both_seed0") and "+both" not in experiments.run_stem(off)
    older = {k: v for k, v in registry.with_method(c, "dann").items() if k != "both"}  # a row before the toy came
    assert experiments.stored_config(older)["both"] is False
    assert experiments.experiment(registry.with_method(c, "dann")) == experiments.experiment(older)
    cdan = registry.with_method(dict(c, entropy=True), "cdan")  # the switch of old keeps its label
    assert experiments.method_label(cdan) == "cdan+e" and "both" not in experiments.experiment(cdan)[1]
