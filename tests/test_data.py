"""Domains on disk: both layouts, initials, class matching, odd image files, transforms, the two paths."""
import os

import pytest
import torch
from PIL import Image

import data_loader
from datasets import download
from conftest import CLASSES, make_tree
from common.errors import user_message
from data_loader import UserError, check_same_classes, load_domain


@pytest.mark.parametrize("layout", ["official", "flat"])
@pytest.mark.parametrize("cache", [True, False])
def test_both_layouts_and_initials(tmp_path, layout, cache):
    root = make_tree(tmp_path / "d", {"amazon": 2, "webcam": 1}, layout=layout)
    for name in ("amazon", "A", "a", "AMAZON"):
        domain = load_domain(root, name, 40, cache, 0, "cpu")
        assert domain.name == "amazon" and domain.classes == CLASSES and len(domain) == 6
    assert data_loader.find_domains(root) == ["amazon", "webcam"]


def test_archive_folder_inside_data_root_is_found(tmp_path):
    make_tree(tmp_path / "root" / "domain_adaptation_images", {"amazon": 1, "dslr": 1})
    root = download.prepare_data_root(str(tmp_path / "root"), download=False)
    assert data_loader.find_domains(root) == ["amazon", "dslr"]


def test_unknown_domain_lists_the_found_ones(tree):
    with pytest.raises(UserError, match="domain 'clipart' was not found.*found: amazon, dslr, webcam"):
        load_domain(tree, "clipart", 40, True, 0, "cpu")


def test_classes_matched_by_name(tmp_path):
    make_tree(tmp_path / "d", {"amazon": 1}, classes=["bike", "mug", "pen"])
    make_tree(tmp_path / "d", {"webcam": 1}, classes=["bike", "mouse", "pen"])
    source, target = (load_domain(str(tmp_path / "d"), n, 40, True, 0, "cpu") for n in ("A", "W"))
    with pytest.raises(UserError, match="only in .*amazon.*: mug; only in .*webcam.*: mouse"):
        check_same_classes(source, target)
    check_same_classes(source, source)


def write_odd_images(folder):
    """Grayscale, CMYK, palette, PNG with alpha and an upper-case .JPG: all must load as RGB."""
    os.makedirs(folder, exist_ok=True)
    Image.new("L", (30, 20), 90).save(os.path.join(folder, "gray.jpg"))
    Image.new("CMYK", (30, 20), (10, 20, 30, 0)).save(os.path.join(folder, "cmyk.jpg"))
    Image.new("RGBA", (30, 20), (200, 10, 10, 128)).save(os.path.join(folder, "alpha.png"))
    Image.new("P", (30, 20), 3).save(os.path.join(folder, "palette.png"))
    Image.new("RGB", (30, 20), (1, 2, 3)).save(os.path.join(folder, "upper.JPG"))


@pytest.mark.parametrize("cache", [True, False])
def test_odd_image_modes_load_as_rgb(tmp_path, cache):
    write_odd_images(tmp_path / "d" / "amazon" / "mug")
    domain = load_domain(str(tmp_path / "d"), "amazon", 24, cache, 0, "cpu")
    assert len(domain) == 5
    x, y = next(domain.test_batches(8, 16))
    assert x.shape == (5, 3, 16, 16) and y.tolist() == [0] * 5


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_is_named(tmp_path, cache, workers):
    make_tree(tmp_path / "d", {"amazon": 2})
    bad = tmp_path / "d" / "amazon" / "images" / "bike" / "frame_0001.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(UserError) as error:
        domain = load_domain(str(tmp_path / "d"), "amazon", 24, cache, workers, "cpu")
        list(domain.test_batches(4, 16))
    message = user_message(error.value)
    assert message.startswith(f"cannot read image '{bad}'") and "Traceback" not in message


@pytest.mark.slow
def test_transforms_shapes_and_ranges():
    image = Image.new("RGB", (300, 200), (255, 0, 0))
    for transform in (data_loader.train_transform(64, 56), data_loader.test_transform(64, 56)):
        x = transform(image)
        assert x.shape == (3, 56, 56) and x.dtype == torch.float32
        expected = [(1 - m) / s if c == 0 else -m / s
                    for c, (m, s) in enumerate(zip(data_loader.IMAGENET_MEAN, data_loader.IMAGENET_STD))]
        assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-4)


def test_cached_batches_match_shapes_labels_and_counts(tree):
    domain = load_domain(tree, "webcam", 40, True, 0, "cpu")
    g = torch.Generator().manual_seed(0)
    batches = list(domain.train_batches(num_batches=5, batch_size=4, crop_size=32, generator=g))
    assert len(batches) == 5 and all(x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 for x, _ in batches)
    # 20 draws over 15 images: one whole shuffled pass first, so every image appears in it
    labels = torch.cat([y for _, y in batches])
    assert sorted(labels[:15].tolist()) == sorted(domain.labels.tolist())
    test = list(domain.test_batches(4, 32))
    assert sum(len(y) for _, y in test) == 15 and torch.equal(torch.cat([y for _, y in test]), domain.labels)


def test_fine_tune_called_directly_refuses_domains_whose_classes_differ(tmp_path, monkeypatch):
    """As tests/benchmark.py calls it: the check sits in fine_tune itself, before a network is built."""
    import office31
    root = make_tree(tmp_path / "d", {"amazon": 1, "webcam": 1}, classes=["bike", "mug"])
    make_tree(tmp_path / "d", {"webcam": 1}, classes=["pen"], start_seed=50)  # webcam: bike, mug and pen
    source, target = (load_domain(root, name, 20, True, 0, "cpu") for name in ("amazon", "webcam"))
    monkeypatch.setattr(office31, "build_model", lambda *a, **k: pytest.fail("built a network"))
    c = office31.resolve(dict(office31.FLAGS, model="resnet18", weights="none", out_dir=str(tmp_path / "out")))
    with pytest.raises(UserError) as error:
        office31.fine_tune(dict(c, precision="fp32"), source, target, torch.device("cpu"), "A→W")
    assert str(error.value).startswith("source and target have different classes: only in ")
    assert str(error.value).endswith("only in " + os.path.join(root, "webcam", "images") + ": pen. Classes are matched "
                                     "by folder name; rename or remove folders so both domains have the same set.")
    assert not (tmp_path / "out").exists()
