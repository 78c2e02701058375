"""The fine-tune loop: schedule, the 10x layer, evaluation counts, end-to-end runs of office31.py."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from datasets import demo
from runs import flags
import office31
from conftest import ROOT, make_tree
from data_loader import load_domain
from common.schedule import annealed, set_progress
from runs.optimizer import make_optimizer

TINY = ["--model=resnet18", "--weights=none", "--resize_size=40", "--crop_size=32", "--epochs=2",
        "--iters_per_epoch=4", "--batch_size=8", "--num_workers=0", "--device=cpu", "--amp=off"]  # (auto: tested apart)
FINAL_LINE = re.compile(r"^([A-Z])→([A-Z]) accuracy: (\d+\.\d\d)% \((\d+)/(\d+)\)$")


def run_script(*args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, "office31.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_schedule_values():
    assert annealed(0.01, 0.0) == pytest.approx(0.01)
    assert annealed(0.01, 0.5) == pytest.approx(0.01 * 6 ** -0.75)
    assert annealed(0.01, 1.0) == pytest.approx(0.01 * 11 ** -0.75)


def test_new_layer_alone_gets_lr_mult_and_schedule_keeps_ratio():
    for name in ("alexnet", "resnet18"):
        model, new_layer = office31.build_model(name, 5, "none")
        c = dict(office31.FLAGS, lr=0.002, lr_mult=10.0)
        optimizer = make_optimizer(model, new_layer(model), c)
        pretrained, new = optimizer.param_groups
        names = {id(p): n for n, p in model.named_parameters()}
        prefix = "classifier.6." if name == "alexnet" else "fc."
        assert sorted(names[id(p)] for p in new["params"]) == [prefix + "bias", prefix + "weight"]
        assert new["params"][0].shape[0] == 5
        assert len(pretrained["params"]) + 2 == len(list(model.parameters()))
        assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.9
        assert optimizer.defaults["weight_decay"] == 5e-4
        for progress in (0.0, 0.3, 1.0):
            set_progress(optimizer, progress)
            assert pretrained["lr"] == pytest.approx(annealed(0.002, progress))
            assert new["lr"] == pytest.approx(10 * pretrained["lr"])


def test_evaluate_returns_every_images_logits_and_label_and_features_where_asked(tree):
    """What a pass computed comes back: the logits and label of every image in fp32 on the CPU, their count, and the
    features (the classifier's input) only where a layer is given, its hook gone after the pass."""
    domain = load_domain(tree, "webcam", 40, True, 0, "cpu")
    model, new_layer = office31.build_model("resnet18", 3, "none")
    model = model.to(memory_format=torch.channels_last)
    outputs = office31.evaluate(model, domain.test_batches(4, 32), False, torch.channels_last)
    assert outputs.logits.shape == (15, 3) and outputs.logits.dtype == torch.float32 and outputs.features is None
    assert torch.equal(outputs.labels, torch.cat([y for _, y in domain.test_batches(4, 32)]))
    assert (outputs.correct, outputs.total) == ((outputs.logits.argmax(1) == outputs.labels).sum().item(), 15)
    layer = office31.classifier(new_layer(model))
    with_features = office31.evaluate(model, domain.test_batches(4, 32), False, torch.channels_last, layer)
    assert with_features.features.shape == (15, 512) and torch.equal(with_features.logits, outputs.logits)
    assert not layer._forward_hooks


def test_every_target_image_counted_once(tree):
    domain = load_domain(tree, "webcam", 40, True, 0, "cpu")  # 15 images, batches of 4: the last holds 3
    model, _ = office31.build_model("resnet18", 3, "none")
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(len(x))
            return model(x)

    spy = Spy().to(memory_format=torch.channels_last)
    spy.p = torch.nn.Parameter(torch.zeros(1))
    outputs = office31.evaluate(spy, domain.test_batches(4, 32), False, torch.channels_last)
    assert seen == [4, 4, 4, 3] and outputs.total == 15 and 0 <= outputs.correct <= 15


@pytest.mark.slow
def test_end_to_end_prints_final_line_and_writes_json(tree, tmp_path):
    out = tmp_path / "out"
    result = run_script(f"--data_root={tree}", f"--out_dir={out}", "--source=A", "--target=D", *TINY)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    match = FINAL_LINE.match(lines[-1])
    assert match and match.group(1, 2) == ("A", "D") and match.group(5) == "9", lines[-1]
    assert float(match.group(3)) == pytest.approx(100 * int(match.group(4)) / 9, abs=0.005)
    assert sum(line.startswith("epoch ") for line in lines) == 2
    assert "config: " in result.stdout and "overriding: model = 'resnet18'" in result.stdout
    [saved] = list(out.glob("amazon-dslr_resnet18_source_only_seed0_*.json"))
    data = json.loads(saved.read_text())
    assert data["config"]["model"] == "resnet18" and data["task"] == "A→D"
    assert [e["epoch"] for e in data["epochs"]] == [1, 2]
    assert (data["correct"], data["total"]) == (int(match.group(4)), 9)


@pytest.mark.slow
def test_seeded_runs_repeat_and_learn_the_easy_pair(tmp_path):
    tree = make_tree(tmp_path / "easy", {"amazon": 12, "webcam": 8})
    args = [f"--data_root={tree}", *TINY, "--epochs=3", "--iters_per_epoch=6", "--eval_every=0", "--seed=3"]
    [first] = office31.main(args + [f"--out_dir={tmp_path / 'a'}"])
    [second] = office31.main(args + [f"--out_dir={tmp_path / 'b'}"])
    assert [(e["loss"], e["source_acc"]) for e in first["epochs"]] == \
           [(e["loss"], e["source_acc"]) for e in second["epochs"]]
    assert first["correct"] == second["correct"]
    assert first["accuracy"] > 0.8  # chance is 1/3


def test_save_model_writes_plain_state_dict(tree, tmp_path):
    out = tmp_path / "not_yet_made"
    office31.main([f"--data_root={tree}", *TINY, "--epochs=1", "--save_model=True", f"--out_dir={out}"])
    [path] = list(out.glob("*.pt"))
    state = torch.load(path, weights_only=True)
    assert state["fc.weight"].shape == (3, 512)


@pytest.mark.slow
def test_compiled_runs_repeat_learn_and_save_plain_state_dict(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # not the user's cache
    tree = make_tree(tmp_path / "easy", {"amazon": 12, "webcam": 8})
    args = [f"--data_root={tree}", *TINY, "--epochs=3", "--iters_per_epoch=6", "--eval_every=0", "--seed=3",
            "--compile=True"]
    [first] = office31.main(args + [f"--out_dir={tmp_path / 'a'}"])
    [second] = office31.main(args + [f"--out_dir={tmp_path / 'b'}", "--save_model=True"])
    assert [(e["loss"], e["source_acc"]) for e in first["epochs"]] == \
           [(e["loss"], e["source_acc"]) for e in second["epochs"]]
    assert first["correct"] == second["correct"] and first["total"] == 24
    assert first["accuracy"] > 0.8  # chance is 1/3
    [path] = list((tmp_path / "b").glob("*.pt"))
    assert "fc.weight" in torch.load(path, weights_only=True)  # no "_orig_mod." prefix from the compiled wrapper


@pytest.mark.slow
def test_benchmark_epoch_runs_on_both_pipelines(tree):
    """tests/benchmark.py is no test, but it must keep working: its one-epoch child, on a generated tree."""
    for kind in ("classic", "defaults"):
        result = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "benchmark.py"), f"--root={tree}",
                                 f"--epoch={kind}", "--workers=0"], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.strip().splitlines()[-1])["total"] == 15


def test_help_explains_every_flag_in_its_group(capsys):
    with pytest.raises(SystemExit) as stop:
        office31.main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    flags = text.split("flags (--name=value; each shown with its default):", 1)[1]
    groups = [line.split()[0].rstrip(":") for line in flags.splitlines() if line and not line.startswith("  ")]
    assert groups == ["data", "model", "adaptation", "optimisation", "input", "speed", "run", "sweeps"]
    for name, default in office31.FLAGS.items():
        [line] = [line for line in flags.splitlines() if line.startswith(f"  --{name}=")]
        assert line.startswith(f"  --{name}={default!r}: ") and len(line.split(": ", 1)[1]) > 10, line
    assert "Adaptation: --method adds a loss on the target's unlabelled images" in text
    assert "Sweeps: --tasks, --seeds and a comma-separated --method" in text


def test_help_and_a_mistyped_flag_answer_without_torch(tmp_path):
    """The flags are read before torch is imported: here torch and torchvision cannot be imported at all."""
    for package in ("torch", "torchvision"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(f"raise ImportError('{package} was imported')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    script = os.path.join(ROOT, "office31.py")
    shown = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "  --epochs=20: " in shown.stdout and "was imported" not in shown.stderr
    refused = subprocess.run([sys.executable, script, "--epoch", "3"], capture_output=True, text=True, env=env,
                             timeout=60)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("error: unknown argument '--epoch'. Did you mean --epochs?"), refused.stderr
    wrong_type = subprocess.run([sys.executable, script, "--epochs=three"], capture_output=True, text=True, env=env,
                                timeout=60)
    assert wrong_type.stderr.startswith("error: --epochs=three: expected int"), wrong_type.stderr
    started = subprocess.run([sys.executable, script, "--epochs=3"], capture_output=True, text=True, env=env,
                             timeout=60)
    assert "torch was imported" in started.stderr  # a valid command goes on to import torch (here: fails)


def test_the_readme_flag_table_lists_every_flag_with_its_default():
    readme = open(os.path.join(os.path.dirname(office31.__file__), "README.md"), encoding="utf-8").read()
    shown = {}
    for names, values in re.findall(r"^\| (`\w+`(?:, `\w+`)*) \| (`[^|]*`) \|", readme, re.M):
        for name, value in zip(re.findall(r"`(\w+)`", names), re.findall(r"`([^`]*)`", values)):
            shown[name] = value
    assert set(shown) == set(office31.FLAGS)
    for name, default in office31.FLAGS.items():
        text = "" if shown[name] == '""' else shown[name]
        assert flags.parse_value(name, text, default) == default, (name, shown[name])


def test_the_demo_draws_its_data_offline_and_runs_on_its_own_defaults(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data/demo and out/demo land here
    [result] = office31.main(["--dataset=demo", "--epochs=1", "--iters_per_epoch=2"])
    out = capsys.readouterr().out
    assert "drawing the demo dataset into 'data/demo'" in out and FINAL_LINE.match(out.splitlines()[-1])
    c = result["config"]
    assert (c["model"], c["weights"], c["crop_size"], c["batch_size"], c["epochs"]) == ("resnet18", "none", 56, 16, 1)
    assert result["total"] == 5 * demo.DOMAINS["webcam"] and os.path.exists("out/demo/results.jsonl")
    assert sorted(os.listdir("data/demo")) == ["amazon", "dslr", "webcam"]
    assert sorted(os.listdir("data/demo/amazon/images")) == sorted(demo.CLASSES)
    office31.main(["--dataset=demo", "--epochs=1", "--iters_per_epoch=1", "--model=resnet34"])  # a flag given wins
    out = capsys.readouterr().out
    assert "drawing" not in out and "model=resnet34" in out  # drawn once


def test_the_demo_domains_differ_visibly_and_its_classes_by_shape():
    """A corner is background: white on amazon, warm on dslr, dark on webcam; the classes' shapes cover different
    fractions of their bounding box (a square all of it, a circle pi/4, a triangle half, a ring less)."""
    from PIL import Image
    corners = {}
    for index, domain in enumerate(demo.DOMAINS):
        image = demo.draw_object(0, demo.SIZE, index, seed=3)
        assert isinstance(image, Image.Image) and image.size == demo.SIZE
        corners[domain] = torch.tensor(image.getpixel((0, 0)), dtype=torch.float32)
    assert corners["amazon"].min() > 200 and corners["webcam"].max() < 140
    assert corners["dslr"][0] > corners["dslr"][2] + 20  # warm: more red than blue
    filled = []
    for k in range(5):  # on amazon's clean background: the share of the shape's box its colour covers
        pixels = torch.from_numpy(np.array(demo.draw_object(k, demo.SIZE, 0, seed=11))).float()
        shape = (pixels - 245).abs().sum(2) > 60
        rows, columns = shape.any(1).nonzero(), shape.any(0).nonzero()
        box = shape[rows.min():rows.max() + 1, columns.min():columns.max() + 1]
        filled.append(box.float().mean().item())
    circle, square, triangle, cross, ring = filled
    assert square > 0.95 and 0.7 < circle < 0.85 and 0.4 < triangle < 0.6 and cross < 0.65 and ring < 0.7
