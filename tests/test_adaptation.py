"""Domain adaptation: each loss against a direct computation, target labels unread, every method end to end,
and adaptation beating source only on a generated shift."""
import math
import statistics

import pytest
import torch
from torch import nn

import adaptation
import office31
from adaptation import batch_spectral_penalty, coral, linear_mmd, multi_kernel_mmd
from conftest import make_tree
from data_loader import CachedDomain
from test_train import TINY

ADAPTING = ("ddc", "dan", "coral", "dann", "cdan", "bsp")


def test_mmd_of_a_batch_with_itself_is_zero_and_grows_with_a_mean_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 5, generator=g)
    y = torch.randn(16, 5, generator=g)
    for mmd in (linear_mmd, multi_kernel_mmd):
        assert mmd(x, x).item() == pytest.approx(0, abs=1e-6)
        distances = [mmd(x, y + shift).item() for shift in (0.0, 0.5, 1.0, 2.0)]
        assert distances == sorted(distances) and distances[-1] > 4 * distances[0], (mmd, distances)


def test_linear_mmd_is_the_squared_distance_of_the_means():
    x, y = torch.randn(8, 3), torch.randn(6, 3) + 1
    assert linear_mmd(x, y).item() == pytest.approx(((x.mean(0) - y.mean(0)) ** 2).sum().item(), rel=1e-6)


def test_multi_kernel_mmd_equals_the_sum_over_pairs():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g) + 0.7
    joint = torch.cat([s, t])
    d2 = [[float(((a - b) ** 2).sum()) for b in joint] for a in joint]
    sigma2 = sum(map(sum, d2)) / (8 * 8 - 8)  # the mean over pairs of distinct points

    def k(i, j):
        return sum(math.exp(-d2[i][j] / (scale * sigma2)) for scale in (0.25, 0.5, 1, 2, 4))

    mean = lambda pairs: sum(k(i, j) for i, j in pairs) / len(pairs)  # noqa: E731
    source, target = range(4), range(4, 8)
    expected = (mean([(i, j) for i in source for j in source]) + mean([(i, j) for i in target for j in target])
                - 2 * mean([(i, j) for i in source for j in target]))
    assert multi_kernel_mmd(s, t).item() == pytest.approx(expected, rel=1e-5)


def test_coral_equals_its_formula():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(10, 4, generator=g), 2 * torch.randn(7, 4, generator=g)
    expected = ((torch.cov(s.T) - torch.cov(t.T)) ** 2).sum() / (4 * 4 ** 2)
    assert coral(s, t).item() == pytest.approx(expected.item(), rel=1e-5)
    assert coral(s, s).item() == pytest.approx(0, abs=1e-7)


@pytest.mark.parametrize("loss", [linear_mmd, multi_kernel_mmd, coral, batch_spectral_penalty])
def test_mmd_type_losses_are_computed_in_fp32_under_bf16_autocast(loss):
    """Autocast recasts matrix products to bf16 whatever the inputs' dtype; these losses must not round so."""
    g = torch.Generator().manual_seed(3)
    source = torch.randn(32, 64, generator=g)
    target = source + 0.05 * torch.randn(32, 64, generator=g)  # nearly aligned: small differences that count
    values, gradients = [], []
    for autocast in (False, True):
        x = source.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            value = loss(x, target)
        value.backward()
        values.append(value)
        gradients.append(x.grad)
    assert values[1].dtype == torch.float32
    assert torch.equal(values[0], values[1]) and torch.equal(gradients[0], gradients[1])


def test_batch_spectral_penalty_is_the_largest_squared_singular_values_with_their_gradient():
    """Independently: sigma_1^2 is the largest eigenvalue of F^T F, and its gradient is 2 F v v^T (v: its
    eigenvector), for the source and the target matrix alike."""
    g = torch.Generator().manual_seed(4)
    source, target = torch.randn(8, 5, generator=g), 3 * torch.randn(8, 5, generator=g)
    expected_value, expected_gradients = 0.0, []
    for x in (source, target):
        values, vectors = torch.linalg.eigh(x.T @ x)  # ascending: the last is the largest
        v = vectors[:, -1:]
        expected_value += values[-1].item()
        expected_gradients.append(2 * x @ v @ v.T)
    s, t = source.clone().requires_grad_(), target.clone().requires_grad_()
    value = batch_spectral_penalty(s, t)
    value.backward()
    assert value.item() == pytest.approx(expected_value, rel=1e-5)
    assert torch.allclose(s.grad, expected_gradients[0], atol=1e-4) and torch.allclose(t.grad, expected_gradients[1],
                                                                                        atol=1e-4)


def test_bsp_is_cdan_plus_the_weighted_penalty_on_the_features():
    g = torch.Generator().manual_seed(5)
    feature, logits = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
    terms = {}
    for method in ("cdan", "bsp"):
        torch.manual_seed(0)  # the same discriminator
        terms[method] = adaptation.Adaptation(method, 6, 3, 1.0, False, {"bottleneck": feature}).eval()(logits, 0.5)
    penalty = batch_spectral_penalty(feature[:4], feature[4:])
    assert terms["bsp"].item() == pytest.approx(terms["cdan"].item() + 2e-4 * penalty.item(), rel=1e-6)


def test_gradient_reversal_returns_minus_coefficient_times_the_gradient():
    x = torch.randn(5, 3, requires_grad=True)
    upstream = torch.randn(5, 3)
    y = adaptation.ReverseGradient.apply(x, 0.3)
    assert torch.equal(y, x)
    y.backward(upstream)
    assert torch.equal(x.grad, -0.3 * upstream)


def test_ramp_values():
    assert adaptation.ramp(0) == 0
    assert adaptation.ramp(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)  # 0.9866
    assert adaptation.ramp(1) == pytest.approx(2 / (1 + math.exp(-10)) - 1)  # 0.99991


def test_multilinear_map_is_the_outer_product_or_its_randomized_stand_in():
    f, g = torch.randn(3, 4), torch.softmax(torch.randn(3, 5), 1)
    small = adaptation.MultilinearMap(4, 5)
    assert not small.randomized and small.out_features == 20
    assert torch.allclose(small(f, g), torch.stack([torch.outer(g[i], f[i]).flatten() for i in range(3)]))
    large = adaptation.MultilinearMap(256, 31)  # 7,936 > 4,096: randomized, 1,024 outputs
    f, g = torch.randn(3, 256), torch.softmax(torch.randn(3, 31), 1)
    expected = (f @ large.r_f) * (g @ large.r_g) / math.sqrt(1024)
    assert large.randomized and torch.allclose(large(f, g), expected)


def test_domain_loss_labels_source_one_and_target_zero_and_weights_each_domain_alike():
    logits = torch.tensor([[2.0], [1.0], [-1.0], [0.5]])
    bce = nn.functional.binary_cross_entropy_with_logits
    plain = bce(logits.squeeze(1), torch.tensor([1.0, 1, 0, 0]))
    assert adaptation.domain_loss(logits).item() == pytest.approx(plain.item())
    weights = torch.tensor([1.0, 3.0, 2.0, 2.0])
    each = bce(logits.squeeze(1), torch.tensor([1.0, 1, 0, 0]), reduction="none")
    expected = ((0.25 * each[0] + 0.75 * each[1]) + (0.5 * each[2] + 0.5 * each[3])) / 2
    assert adaptation.domain_loss(logits, weights).item() == pytest.approx(expected.item())


def test_new_layers_all_learn_at_lr_mult(tree, tmp_path, monkeypatch):
    groups = []
    real = office31.make_optimizer

    def spy(model, new_layer, c, fused=True):
        optimizer = real(model, new_layer, c, fused)
        groups.append((model, new_layer, optimizer))
        return optimizer

    monkeypatch.setattr(office31, "make_optimizer", spy)
    office31.main([f"--data_root={tree}", *TINY, "--epochs=1", "--method=cdan", "--bottleneck=16",
                   f"--out_dir={tmp_path}"])
    [(model, new_layers, optimizer)] = groups
    pretrained, new = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    new_ids = {id(p) for p in new["params"]}
    assert sorted(names[id(p)] for p in new["params"] if id(p) in names) == [
        "fc.0.bias", "fc.0.weight", "fc.1.bias", "fc.1.weight", "fc.3.bias", "fc.3.weight"]  # bottleneck, fc
    discriminator = list(new_layers[1].discriminator.parameters())
    assert discriminator and all(id(p) in new_ids for p in discriminator)
    assert len(new["params"]) == 6 + len(discriminator)
    assert not new_ids & {id(p) for p in pretrained["params"]}
    assert len(pretrained["params"]) == len(names) - 6
    assert new["lr"] == pytest.approx(10 * pretrained["lr"])


@pytest.mark.parametrize("method", ADAPTING)
def test_target_labels_are_never_read_in_training(tree, tmp_path, monkeypatch, method):
    runs = []
    for permute in (False, True):
        if permute:
            real = CachedDomain.__init__

            def shuffled_labels(self, *args):
                real(self, *args)
                if self.name == "webcam":  # the target: its labels scrambled
                    order = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(5))
                    self.labels = self.labels[order]
            monkeypatch.setattr(CachedDomain, "__init__", shuffled_labels)
        [result] = office31.main([f"--data_root={tree}", *TINY, f"--method={method}", "--eval_every=0",
                                  "--save_model=True", f"--out_dir={tmp_path / str(permute)}"])
        [weights] = (tmp_path / str(permute)).glob("*.pt")
        runs.append((result, torch.load(weights, weights_only=True)))
    (plain, plain_weights), (scrambled, scrambled_weights) = runs
    assert [e["loss"] for e in plain["epochs"]] == [e["loss"] for e in scrambled["epochs"]]
    assert all(torch.equal(plain_weights[k], scrambled_weights[k]) for k in plain_weights)


@pytest.mark.parametrize("method, model", [(m, "resnet18") for m in ADAPTING] + [("dan", "alexnet")])
def test_every_method_runs_end_to_end(tree, tmp_path, capsys, method, model):
    args = [f"--data_root={tree}", *TINY, f"--method={method}", f"--model={model}", f"--out_dir={tmp_path}"]
    if model == "alexnet":
        args += ["--resize_size=72", "--crop_size=64"]  # AlexNet's pooling needs at least 63 pixels
    if method == "cdan":
        args.append("--entropy=True")
    [result] = office31.main(args)
    out = capsys.readouterr().out
    label = "cdan+e" if method == "cdan" else method  # the method and seed follow the usual line
    assert out.splitlines()[-1] == \
        f"A→W accuracy: {100 * result['accuracy']:.2f}% ({result['correct']}/15)  {label} seed 0"
    assert f"  {method} " in [line for line in out.splitlines() if line.startswith("epoch 2/2")][0]
    assert all(math.isfinite(e["adaptation_loss"]) for e in result["epochs"])
    assert result["config"]["method"] == method
    expected_bottleneck = 0 if method == "coral" or (method, model) == ("dan", "alexnet") else 256
    assert result["config"]["bottleneck"] == expected_bottleneck


def test_source_only_is_the_plain_fine_tune_loop(tree, tmp_path):
    """The default path, written out as the simplest loop: the same model, batches, schedule and updates."""
    [result] = office31.main([f"--data_root={tree}", *TINY, "--epochs=1", "--eval_every=0",
                              "--channels_last=False", "--amp=off", f"--out_dir={tmp_path}"])
    assert result["config"]["method"] == "source_only" and result["config"]["bottleneck"] == 0
    source = office31.load_domain(tree, "amazon", 40, True, 0, torch.device("cpu"))
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model, new_layer = office31.build_model("resnet18", 3, "none")
    assert isinstance(model.fc, nn.Linear)  # no bottleneck: torchvision's network with a new fc
    c = office31.FLAGS
    new = list(model.fc.parameters())
    optimizer = torch.optim.SGD([{"params": [p for n, p in model.named_parameters() if not n.startswith("fc.")]},
                                 {"params": new}], lr=c["lr"], momentum=0.9, weight_decay=5e-4, nesterov=True)
    model.train()
    losses = []
    for step, (x, y) in enumerate(source.train_batches(4, 8, 32, generator)):
        for group, base in zip(optimizer.param_groups, (c["lr"], c["lr"] * 10)):
            group["lr"] = base * (1 + 10 * step / 4) ** -0.75
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert result["epochs"][0]["loss"] == pytest.approx(sum(losses) / 4, rel=1e-5)


@pytest.mark.parametrize("argv, phrase", [
    (["--method=mmd"], "--method=mmd: mmd is not among source_only, ddc, dan, coral, dann, cdan, bsp"),
    (["--method=dann,jan"], "jan is not among"),
    (["--bottleneck=-1"], "--bottleneck=-1: expected auto, 0"),
    (["--bottleneck=wide"], "--bottleneck=wide"),
    (["--trade_off=-0.5"], "--trade_off=-0.5: must be a finite number"),
    (["--trade_off=nan"], "--trade_off=nan"),
    (["--trade_off=inf"], "--trade_off=inf"),
    (["--entropy=True"], "--entropy=True is CDAN's entropy conditioning"),
])
def test_bad_adaptation_flags(tmp_path, argv, phrase):
    with pytest.raises(SystemExit) as stop:
        office31.main([*argv, f"--out_dir={tmp_path / 'out'}"])
    assert str(stop.value.code).startswith("error: ") and phrase in str(stop.value.code)
    assert not (tmp_path / "out").exists()


def two_blobs(n, shift, generator):
    """Two classes at x = -1 and x = +1 (spread 0.4) in the plane, everything moved by `shift`."""
    y = torch.randint(0, 2, (n,), generator=generator)
    x = 0.4 * torch.randn(n, 2, generator=generator)
    x[:, 0] += 2 * y.float() - 1
    return x + torch.tensor(shift), y


def target_accuracy_after_training(method, seed, steps=600):
    """A small network trained by office31's own loop and optimizer on source blobs, with the target's moved
    (1.6, 1.5): across the source's decision boundary, so that source-only training scores near chance there."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    (xs, ys), (xt, yt) = two_blobs(512, (0.0, 0.0), g), two_blobs(512, (1.6, 1.5), g)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    method_module, new = None, model
    if method != "source_only":
        features = adaptation.tap({"hidden": model[3]})
        method_module = adaptation.Adaptation(method, 32, 2, 1.0, False, features)
        new = nn.ModuleList([model, method_module])
    optimizer = office31.make_optimizer(model, new, dict(office31.FLAGS, lr=0.01, lr_mult=1.0))

    def batches():  # the target's labels yt are never handed to training
        for _ in range(steps):
            i, j = torch.randint(0, 512, (32,), generator=g), torch.randint(0, 512, (32,), generator=g)
            yield ((xs[i], ys[i]), xt[j]) if method_module else (xs[i], ys[i])

    office31.train_one_epoch(model, optimizer, batches(), 0, steps, False, torch.contiguous_format, method_module)
    with torch.no_grad():
        return (model.eval()(xt).argmax(1) == yt).float().mean().item()


def test_adaptation_beats_source_only_on_a_generated_shift():
    seeds = range(3)
    source_only = [target_accuracy_after_training("source_only", seed) for seed in seeds]
    assert max(source_only) < 0.65  # near chance: the shift crosses the source's decision boundary
    for method in ("dann", "cdan", "bsp"):  # adversarial alignment recovers the target on every seed
        accuracies = [target_accuracy_after_training(method, seed) for seed in seeds]
        assert min(accuracies) > 0.85, (method, accuracies, source_only)
    for method in ("ddc", "coral"):  # moment matching helps too, less (measured: about +15 and +10 points)
        accuracies = [target_accuracy_after_training(method, seed) for seed in seeds]
        assert sum(accuracies) / 3 > sum(source_only) / 3 + 0.05, (method, accuracies, source_only)


def test_bottleneck_auto_follows_the_papers():
    widths = {(model, method): office31.with_method(dict(office31.FLAGS, model=model), method)["bottleneck"]
              for model in ("resnet50", "alexnet", "caffe_alexnet") for method in ("source_only", *ADAPTING)}
    assert [m for (model, m), width in widths.items() if width == 0] == \
        ["source_only", "coral", "source_only", "dan", "coral", "source_only", "dan", "coral"]
    assert office31.with_method(dict(office31.FLAGS, bottleneck="64"), "dann")["bottleneck"] == 64


def test_a_sweep_of_methods_keys_each_and_prints_the_papers_layout(tmp_path, capsys):
    from test_sweep import rows_of, sweep
    root = make_tree(tmp_path / "office31", {"amazon": 2, "dslr": 2, "webcam": 2}, size=(20, 20))
    out = tmp_path / "out"
    done = sweep(root, out, "--tasks=all", "--seeds=2", "--method=source_only,dann,coral")
    assert len(done) == 3 * 6 * 2
    rows = rows_of(out)
    assert {(r["config"]["method"], r["config"]["bottleneck"]) for r in rows} == \
           {("source_only", 0), ("dann", 256), ("coral", 0)}
    assert sweep(root, out, "--tasks=all", "--seeds=2", "--method=dann") == []  # each method: its own key, done
    assert len(sweep(root, out, "--tasks=all", "--seeds=2", "--method=dann", "--trade_off=0.5")) == 12  # another
    capsys.readouterr()
    sweep(root, out, "--tasks=all", "--seeds=2", "--method=source_only,dann,coral", "--report=True")
    table = capsys.readouterr().out.split("| method |", 1)[1].splitlines()
    assert table[0] == " A→W | D→W | W→D | A→D | D→A | W→A | average |"
    order = [("amazon", "webcam"), ("dslr", "webcam"), ("webcam", "dslr"), ("amazon", "dslr"), ("dslr", "amazon"),
             ("webcam", "amazon")]
    for line, method in zip(table[2:], ("source_only", "dann", "coral")):
        mine = [r for r in rows if r["config"]["method"] == method]
        cells = []
        for task in order:
            values = [100 * r["accuracy"] for r in mine if (r["source"], r["target"]) == task]
            cells.append(f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}")
        per_seed = [statistics.mean(100 * r["accuracy"] for r in mine if r["seed"] == s) for s in (0, 1)]
        cells.append(f"{statistics.mean(per_seed):.2f} ± {statistics.stdev(per_seed):.2f}")
        assert line == f"| {method} | " + " | ".join(cells) + " |"


def test_methods_table_cells():
    from results import methods_table
    rows = {"source_only": [{"source": "amazon", "target": "webcam", "seed": s, "accuracy": a}
                            for s, a in ((0, 0.5), (1, 0.7))] +
                           [{"source": "webcam", "target": "amazon", "seed": 0, "accuracy": 0.4}],
            "dann": [{"source": "webcam", "target": "amazon", "seed": 0, "accuracy": 0.9}]}
    assert methods_table(rows, lambda s, t: f"{s[0].upper()}→{t[0].upper()}").splitlines() == [
        "| method | A→W | W→A | average |", "|---|---|---|---|",
        "| source_only | 60.00 ± 14.14 (2) | 40.00 (1) | 50.00 |",  # runs differ: counted; the cells' mean
        "| dann | - | 90.00 (1) | - |"]
