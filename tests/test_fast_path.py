"""The cached path gives the per-sample path's tensors; bf16, channels_last and the fused SGD keep the protocol."""
import json
import os

import pytest
import torch
from torchvision import transforms

import data_loader
import office31
from runs import precision
from runs import machine
from conftest import make_tree
from data_loader import load_domain


@pytest.mark.parametrize("top, left, flip", [(0, 0, False), (8, 3, True), (8, 8, False), (5, 0, True)])
def test_cached_crop_equals_per_sample_transform(tree, monkeypatch, top, left, flip):
    cached = load_domain(tree, "amazon", 40, True, 0, "cpu")
    path, label = cached_samples(cached)[5]
    monkeypatch.setattr(transforms.RandomCrop, "get_params", staticmethod(lambda image, size: (top, left, 32, 32)))
    per_sample = data_loader.train_transform(40, 32)
    per_sample.transforms[2].p = 1.0 if flip else 0.0  # RandomHorizontalFlip
    expected = per_sample(data_loader.load_rgb(path))
    got = data_loader.normalize(data_loader.crop_batch(cached.images, torch.tensor([5]), torch.tensor([top]),
                                                       torch.tensor([left]), torch.tensor([flip]), 32))[0]
    assert torch.allclose(got, expected, atol=1e-5) and cached.labels[5] == label


def cached_samples(domain):
    return data_loader.datasets.ImageFolder(domain.root).samples


def test_test_batches_equal_between_paths(tmp_path):
    root = make_tree(tmp_path / "d", {"amazon": 4}, size=(61, 37))  # odd sizes: the resize and centre crop matter
    cached, classic = (load_domain(root, "amazon", 45, cache, 0, "cpu") for cache in (True, False))
    (x1, y1), (x2, y2) = next(cached.test_batches(100, 33)), next(classic.test_batches(100, 33))
    assert x1.shape == x2.shape == (12, 3, 33, 33)
    assert torch.equal(y1, y2) and torch.allclose(x1, x2, atol=1e-5)


def test_random_crops_cover_every_offset_and_flip_half_the_time():
    # pixel (y, x) holds 16 * y + x, so a crop's corner tells where it was cut and whether it was flipped
    size, crop = 10, 7
    grid = (16 * torch.arange(size)[:, None] + torch.arange(size)).to(torch.uint8)
    images = grid.expand(4, 3, size, size).contiguous()
    g = torch.Generator().manual_seed(0)
    index = torch.arange(4).repeat(500)
    crops = data_loader.random_crop_batch(images, index, crop, g)[:, 0]
    flipped = crops[:, 0, 0] > crops[:, 0, 1]
    corner = torch.where(flipped, crops[:, 0, -1], crops[:, 0, 0]).long()
    offsets = set(zip((corner // 16).tolist(), (corner % 16).tolist()))
    assert offsets == {(t, l) for t in range(size - crop + 1) for l in range(size - crop + 1)}
    assert 0.45 < flipped.float().mean() < 0.55
    # each crop is a contiguous window, flipped or not: no row or column is mixed between images
    expected = torch.stack([grid[t:t + crop, l:l + crop] for t, l in zip(corner // 16, corner % 16)])
    assert torch.equal(torch.where(flipped[:, None, None], crops.flip(-1), crops), expected)


def test_both_paths_sample_full_source_passes(tree):
    for cache in (True, False):
        domain = load_domain(tree, "dslr", 40, cache, 0, "cpu")  # 9 images
        g = torch.Generator().manual_seed(1)
        labels = torch.cat([y for _, y in domain.train_batches(6, 3, 32, g)])  # 18 draws: two whole passes
        counts = torch.bincount(labels, minlength=3)
        assert counts.tolist() == [6, 6, 6], (cache, counts)


def test_bf16_training_keeps_weights_and_batchnorm_in_fp32(tree):
    domain = load_domain(tree, "amazon", 40, True, 0, "cpu")
    model, new_layer = office31.build_model("resnet18", 3, "none")
    model = model.to(memory_format=torch.channels_last)
    optimizer = office31.make_optimizer(model, new_layer(model), office31.FLAGS)
    g = torch.Generator().manual_seed(0)
    loss, _ = office31.train_one_epoch(model, optimizer, domain.train_batches(2, 4, 32, g), 0, 2, True,
                                       torch.channels_last)
    assert loss == loss  # finite, not NaN
    assert all(t.dtype == torch.float32 for t in model.state_dict().values() if t.is_floating_point())
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert office31.evaluate(model, domain.test_batches(8, 32), True, torch.channels_last).total == 21


def test_fused_sgd_makes_the_same_updates():
    results = []
    for fused in (True, False):
        torch.manual_seed(0)
        model, new_layer = office31.build_model("resnet18", 3, "none")
        optimizer = office31.make_optimizer(model, new_layer(model), office31.FLAGS, fused=fused)
        x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
        office31.train_one_epoch(model, optimizer, [(x, y)] * 3, 0, 3, False, torch.contiguous_format)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-6)


def test_amp_auto_on_cpu_follows_the_measurement(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    for speedup, chosen in ((4.2, True), (1.3, True), (1.2, False), (0.6, False)):
        monkeypatch.setattr(precision, "machine_bf16_speedup", lambda: speedup)
        bf16, why = office31.choose_amp("auto", cpu)
        assert bf16 is chosen and f"{speedup:.1f}x fp32" in why
        assert office31.choose_amp("bf16", cpu)[0] is True and office31.choose_amp("off", cpu)[0] is False
    monkeypatch.setattr(precision, "machine_bf16_speedup", lambda: pytest.fail("measured without bf16 support"))
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert office31.choose_amp("auto", cpu)[0] is False
    with pytest.raises(data_loader.UserError, match="does not support bf16"):
        office31.choose_amp("bf16", cpu)


def test_amp_auto_measures_once_per_machine_so_the_processes_of_a_sweep_agree(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: 1.34)  # near the margin: the next could say 1.26
    assert office31.choose_amp("auto", cpu)[0] is True
    path = os.path.join(os.environ["TORCH_HOME"], "office31-bf16.json")
    with open(path, encoding="utf-8") as f:
        assert json.load(f) == {"cpu": machine.device_name(cpu), "torch": torch.__version__, "speedup": 1.34,
                                "bf16": True, "margin": 1.3}
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: pytest.fail("measured again"))
    assert office31.choose_amp("auto", cpu) == (True, "bf16 measured 1.3x fp32 on this CPU, 1.3x needed")
    assert office31.choose_amp("off", cpu)[0] is False  # forcing still forces
    monkeypatch.setattr(torch, "__version__", "9.9.9")  # another torch: measured again, and written
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: 1.26)
    assert office31.choose_amp("auto", cpu)[0] is False
    with open(path, encoding="utf-8") as f:
        assert json.load(f)["torch"] == "9.9.9"
    with open(path, "w", encoding="utf-8") as f:
        f.write("{not json")  # damaged: measured in this process, no error
    assert office31.choose_amp("auto", cpu)[0] is False


@pytest.mark.slow
def test_cpu_bf16_speedup_is_measured_once_per_process():
    precision.cpu_bf16_speedup.cache_clear()
    state = torch.get_rng_state()
    first = precision.cpu_bf16_speedup()
    assert torch.equal(torch.get_rng_state(), state)  # a run seeded before it draws the same numbers after
    assert first > 0 and precision.cpu_bf16_speedup() == first
    assert precision.cpu_bf16_speedup.cache_info().misses == 1


@pytest.mark.parametrize("capability, name, chosen", [((7, 5), "Tesla T4", False), ((7, 0), "Tesla V100", False),
                                                      ((8, 0), "NVIDIA A100", True), ((9, 0), "NVIDIA H100", True)])
def test_amp_auto_on_cuda_needs_native_bf16(monkeypatch, capability, name, chosen):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # True even where emulated
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d: asked.append(d) or capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: name)
    bf16, why = office31.choose_amp("auto", torch.device("cuda:1"))
    assert bf16 is chosen and name in why and f"{capability[0]}.{capability[1]}" in why
    assert asked == [torch.device("cuda:1")]  # judged on the device the run uses
    assert office31.choose_amp("bf16", torch.device("cuda:1"))[0] is True


def first_conv_dtypes(monkeypatch):
    """Record the dtype of the first convolution's output at every training forward pass."""
    dtypes, build = [], office31.build_model

    def build_with_hook(*args):
        model, new_layer = build(*args)
        model.conv1.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype) if m.training else None)
        return model, new_layer
    monkeypatch.setattr(office31, "build_model", build_with_hook)
    return dtypes


def test_amp_auto_trains_in_the_chosen_precision_and_says_so(tree, tmp_path, monkeypatch, capsys, cpu_bf16_speedup):
    from test_train import TINY
    speedup = cpu_bf16_speedup
    dtype = torch.bfloat16 if speedup >= precision.BF16_MARGIN else torch.float32
    dtypes = first_conv_dtypes(monkeypatch)
    [result] = office31.main([f"--data_root={tree}", *TINY, "--amp=auto", f"--out_dir={tmp_path}"])
    assert dtypes and set(dtypes) == {dtype}
    name = "bf16" if dtype == torch.bfloat16 else "fp32"
    config_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("config: "))
    assert f"amp=auto→{name} (bf16 measured {speedup:.1f}x fp32 on this CPU, 1.3x needed)" in config_line
    [saved] = tmp_path.glob("*.json")
    assert json.loads(saved.read_text())["precision"] == result["precision"] == {
        "dtype": name, "why": f"bf16 measured {speedup:.1f}x fp32 on this CPU, 1.3x needed"}


@pytest.mark.slow
@pytest.mark.usefixtures("bf16_anywhere")
def test_bf16_runs_repeat_and_learn_the_easy_pair(tmp_path):
    from test_train import TINY
    tree = make_tree(tmp_path / "easy", {"amazon": 12, "webcam": 8})
    args = [f"--data_root={tree}", *TINY, "--epochs=3", "--iters_per_epoch=6", "--eval_every=0", "--seed=3"]
    [first] = office31.main(args + ["--amp=bf16", f"--out_dir={tmp_path / 'a'}"])
    [second] = office31.main(args + ["--amp=bf16", f"--out_dir={tmp_path / 'b'}"])
    assert first["precision"]["dtype"] == "bf16"
    assert [(e["loss"], e["source_acc"]) for e in first["epochs"]] == \
           [(e["loss"], e["source_acc"]) for e in second["epochs"]]
    assert first["correct"] == second["correct"]
    assert first["accuracy"] > 0.8  # chance is 1/3; the fp32 run of test_train learns the same pair past 0.8


@pytest.mark.usefixtures("bf16_anywhere")
def test_per_sample_path_runs_end_to_end(tree, tmp_path, monkeypatch):
    """--cache=False (the boolean it was) is --cache=none: every batch decoded by PIL, per sample."""
    from test_train import TINY
    decoded, batches = [], data_loader.ImageFolderDomain.train_batches
    monkeypatch.setattr(data_loader.ImageFolderDomain, "train_batches",
                        lambda self, *args, **kwargs: decoded.append(self.name) or batches(self, *args, **kwargs))
    [result] = office31.main([f"--data_root={tree}", *TINY, "--cache=False", "--amp=bf16", f"--out_dir={tmp_path}"])
    assert result["total"] == 15 and result["config"]["cache"] == "none"
    assert decoded and set(decoded) == {"amazon"} and result["precision"]["dtype"] == "bf16"
