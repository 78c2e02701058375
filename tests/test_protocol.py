"""The protocol, checked by behaviour: schedule at every step, train/eval modes, the final model's number,
the centre crop, the shuffled passes, and the table's arithmetic. Each would change every number reported."""
import json

import pytest
import torch
from torchvision import transforms

import data_loader
import office31
from results import experiments
from conftest import make_tree
from data_loader import load_domain
from test_train import TINY


def test_learning_rate_follows_the_formula_at_every_step_of_the_whole_run(tree, tmp_path, monkeypatch):
    seen, step = [], torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        seen.append([group["lr"] for group in self.param_groups])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    office31.main([f"--data_root={tree}", *TINY, "--epochs=3", "--iters_per_epoch=4", "--lr=0.003",
                   "--lr_mult=10", f"--out_dir={tmp_path}"])
    total = 3 * 4
    expected = [[0.003 * (1 + 10 * k / total) ** -0.75, 0.03 * (1 + 10 * k / total) ** -0.75] for k in range(total)]
    assert len(seen) == total
    for step, (got, want) in enumerate(zip(seen, expected)):
        assert got == pytest.approx(want, rel=1e-12), step


def record_modes(monkeypatch):
    """(module.training of every module agrees, model.training, inside inference mode) at each forward."""
    calls, build = [], office31.build_model

    def build_with_hook(*args):
        model, new_layer = build(*args)

        def hook(module, inputs):
            modes = {m.training for m in module.modules()}
            calls.append((len(modes) == 1, module.training, torch.is_inference_mode_enabled()))
        model.register_forward_pre_hook(hook)
        return model, new_layer
    monkeypatch.setattr(office31, "build_model", build_with_hook)
    return calls


def test_training_steps_run_in_train_mode_and_evaluation_in_eval_mode(tree, tmp_path, monkeypatch):
    calls = record_modes(monkeypatch)
    office31.main([f"--data_root={tree}", *TINY, "--epochs=2", "--iters_per_epoch=3", "--eval_every=1",
                   "--eval_batch_size=4", f"--out_dir={tmp_path}"])
    training = [c for c in calls if not c[2]]
    evaluating = [c for c in calls if c[2]]
    assert training == [(True, True, False)] * 6  # every step: every module in train mode
    assert evaluating == [(True, False, True)] * (2 * 4)  # webcam's 15 images in batches of 4, twice


def test_evaluation_leaves_batchnorm_statistics_untouched(tree):
    domain = load_domain(tree, "webcam", 40, True, 0, "cpu")
    model, _ = office31.build_model("resnet18", 3, "none")
    model.train()(torch.randn(8, 3, 32, 32))  # some statistics that are not the initial ones
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    office31.evaluate(model, domain.test_batches(4, 32), False, torch.contiguous_format)
    after = model.state_dict()
    assert before and all(torch.equal(value, after[key]) for key, value in before.items())


def test_reported_accuracy_is_the_final_models_even_when_an_earlier_epoch_scored_higher(tree, tmp_path,
                                                                                          monkeypatch, capsys):
    scores = iter([(14, 15), (3, 15), (5, 15)])  # the best epoch is the first; the final model scores 5/15
    evaluate = office31.evaluate

    def scored(*args):  # the real outputs, with these counts
        correct, total = next(scores)
        return evaluate(*args)._replace(correct=correct, total=total)
    monkeypatch.setattr(office31, "evaluate", scored)
    [result] = office31.main([f"--data_root={tree}", *TINY, "--epochs=3", "--eval_every=1",
                              f"--out_dir={tmp_path}"])
    assert (result["correct"], result["total"]) == (5, 15) and result["accuracy"] == 5 / 15
    assert [e["target_acc"] for e in result["epochs"]] == [14 / 15, 3 / 15, 5 / 15]
    assert capsys.readouterr().out.splitlines()[-1] == "A→W accuracy: 33.33% (5/15)"
    [row] = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert (row["correct"], row["accuracy"]) == (5, 5 / 15)


@pytest.mark.parametrize("size, crop", [(256, 224), (256, 227), (256, 229), (40, 33), (41, 32), (45, 32),
                                        (10, 3), (9, 6), (7, 7)])
def test_cached_centre_crop_equals_torchvision_center_crop(size, crop):
    # margins 32, 29, 27, 7, 9, 13, 7, 3, 0: odd ones put the crop half a pixel off, rounded as CenterCrop does
    images = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8)
    got = data_loader.center_crop_batch(images, torch.arange(3), crop)
    assert torch.equal(got, torch.stack([transforms.CenterCrop(crop)(image) for image in images]))


@pytest.mark.parametrize("resize, crop", [(45, 33), (45, 32), (44, 29)])
def test_test_batches_equal_between_paths_for_odd_and_even_margins(tmp_path, resize, crop):
    root = make_tree(tmp_path / "d", {"amazon": 2}, size=(61, 37))
    cached, classic = (load_domain(root, "amazon", resize, cache, 0, "cpu") for cache in (True, False))
    (x1, y1), (x2, y2) = next(cached.test_batches(100, crop)), next(classic.test_batches(100, crop))
    assert torch.equal(y1, y2) and torch.allclose(x1, x2, atol=1e-5)


def test_cached_training_batches_are_a_fresh_permutation_every_pass():
    n, passes = 10, 4
    domain = object.__new__(data_loader.CachedDomain)  # a cache whose image i is filled with the value 10 * i
    domain.images = (10 * torch.arange(n, dtype=torch.uint8)).view(n, 1, 1, 1).expand(n, 3, 6, 6).contiguous()
    domain.labels = torch.zeros(n, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    x = torch.cat([x for x, _ in domain.train_batches(passes * n // 5, 5, 4, g)])
    mean, std = data_loader.IMAGENET_MEAN[0], data_loader.IMAGENET_STD[0]
    served = ((x[:, 0, 0, 0] * std + mean) * 255 / 10).round().long().tolist()
    orders = [served[k * n:(k + 1) * n] for k in range(passes)]
    assert all(sorted(order) == list(range(n)) for order in orders)  # every image once a pass
    assert list(range(n)) not in orders and len({tuple(order) for order in orders}) == passes


def rows_for(accuracies):
    """Hand-made results rows: {(source, target): [accuracy per seed, in order written]}; seed 2 of W-A twice."""
    return [{"source": source, "target": target, "seed": seed, "accuracy": accuracy}
            for (source, target), values in accuracies.items() for seed, accuracy in values]


def short(source, target):
    return f"{source[0].upper()}→{target[0].upper()}"


def test_table_uses_sample_std_and_lets_a_rerun_replace_its_row():
    from results.tables import markdown_table
    rows = rows_for({("amazon", "webcam"): [(0, 0.5), (1, 0.6), (2, 0.9)],
                     ("webcam", "amazon"): [(0, 0.7), (1, 0.7), (2, 0.4), (2, 0.1)]})  # seed 2 re-run: 0.1
    # A→W: 50, 60, 90: mean 66.67, sample std sqrt(866.67 / 2) = 20.82 (the population std would be 17.00)
    # W→A: 70, 70, 10 (the re-run replaces 40): mean 50, std sqrt(2400 / 2) = 34.64
    # average: per seed (50+70)/2, (60+70)/2, (90+10)/2 = 60, 65, 50: mean 58.33, std sqrt(116.67 / 2) = 7.64
    assert markdown_table(rows, short).splitlines() == [
        "| task | accuracy (%) | seeds |", "|---|---|---|",
        "| A→W | 66.67 ± 20.82 | 3 |", "| W→A | 50.00 ± 34.64 | 3 |", "| average | 58.33 ± 7.64 | 3 |"]


def test_table_average_is_the_mean_of_the_cells_shown():
    from results.tables import markdown_table
    rows = rows_for({("amazon", "webcam"): [(0, 0.5), (1, 0.6)], ("amazon", "dslr"): [(0, 0.25)]})
    assert markdown_table(rows, short).splitlines()[2:] == [  # seeds differ: no spread over seeds, no count
        "| A→W | 55.00 ± 7.07 | 2 |", "| A→D | 25.00 | 1 |", "| average | 40.00 | - |"]


def test_report_prints_the_expected_cells_from_a_results_file(tree, tmp_path, capsys):
    c = office31.parse_flags([f"--data_root={tree}", f"--out_dir={tmp_path}", *TINY])
    dataset, config = experiments.experiment(office31.with_method(dict(c, precision="fp32"), "source_only"))
    data = {name: data_loader.fingerprint(tree, name) for name in ("amazon", "webcam")}
    lines = []
    for (source, target), runs in {("amazon", "webcam"): [(0, 0.5), (1, 0.6), (2, 0.9)],
                                   ("webcam", "amazon"): [(0, 0.7), (1, 0.7), (2, 0.4), (2, 0.1)]}.items():
        for seed, accuracy in runs:
            lines.append(json.dumps({"dataset": dataset, "model": "resnet18", "weights": "none", "source": source,
                                     "target": target, "seed": seed, "accuracy": accuracy, "correct": 0,
                                     "total": 0, "config": config, "data": {source: data[source], target: data[target]},
                                     "date": "2026-01-01T00:00:00"}, ensure_ascii=False))
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    office31.main([f"--data_root={tree}", f"--out_dir={tmp_path}", *TINY, "--report=True", "--tasks=A-W,W-A",
                   "--seeds=3"])
    table = capsys.readouterr().out.split("| task |", 1)[1].strip().splitlines()
    assert table[2:5] == ["| A→W | 66.67 ± 20.82 | 3 |", "| W→A | 50.00 ± 34.64 | 3 |",
                         "| average | 58.33 ± 7.64 | 3 |"]
