"""The cached path gives the per-sample path's tensors; bf16, channels_last and the fused SGD keep the protocol."""
import pytest
import torch
from torchvision import transforms

import data_loader
import office31
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
    correct, total = office31.evaluate(model, domain.test_batches(8, 32), True, torch.channels_last)
    assert total == 21


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


def test_amp_auto_follows_the_hardware(monkeypatch):
    cpu = torch.device("cpu")
    assert office31.use_bf16("off", cpu) is False
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert office31.use_bf16("auto", cpu) is False and office31.use_bf16("bf16", cpu) is True
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert office31.use_bf16("auto", cpu) is True
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(data_loader.UserError, match="does not support bf16"):
        office31.use_bf16("bf16", cpu)


def test_per_sample_path_runs_end_to_end(tree, tmp_path):
    from test_train import TINY
    [result] = office31.main([f"--data_root={tree}", *TINY, "--cache=False", "--amp=bf16", f"--out_dir={tmp_path}"])
    assert result["total"] == 15 and result["config"]["cache"] is False
