"""Office-31-shaped trees and checkpoints made by the tests themselves: nothing is downloaded."""
import os
import sys

import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CLASSES = ["back_pack", "bike", "calculator"]
# Colours far apart, so a small network separates the classes quickly ("easy" domains).
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 60, 220), (220, 220, 40), (200, 40, 220), (40, 220, 220)]


def draw(class_index, size, shift, seed):
    """A flat class colour (shifted per domain) with a little noise and a random grey square."""
    g = torch.Generator().manual_seed(seed)
    w, h = size
    base = torch.tensor(COLOURS[class_index % len(COLOURS)], dtype=torch.float32) + shift
    pixels = base.view(1, 1, 3) + 20 * torch.randn(h, w, 3, generator=g)
    x, y = (int(v) for v in torch.randint(0, max(1, min(w, h) // 2), (2,), generator=g))
    pixels[y:y + h // 4, x:x + w // 4] = 128
    return Image.fromarray(pixels.clamp(0, 255).to(torch.uint8).numpy())


def make_tree(root, domains, classes=CLASSES, layout="official", size=(48, 40), start_seed=0, shift=10):
    """domains: {name: images per class}; layout 'official' (<d>/images/<c>/) or 'flat' (<d>/<c>/); each domain's
    colours moved by `shift` more than the previous one's."""
    seed = start_seed
    for shift_index, (domain, per_class) in enumerate(domains.items()):
        for k, name in enumerate(classes):
            parts = (domain, "images", name) if layout == "official" else (domain, name)
            folder = os.path.join(root, *parts)
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                draw(k, size, shift * shift_index, seed).save(os.path.join(folder, f"frame_{i:04d}.jpg"))
                seed += 1
    return str(root)


@pytest.fixture(params=[2.5, 0.6], ids=["bf16-faster", "bf16-slower"])
def cpu_bf16_speedup(request, monkeypatch):
    """What --amp=auto measures on a CPU, made to say that bf16 runs 2.5x or 0.6x as fast as fp32 on a CPU with
    bf16 kernels, whatever CPU runs the tests: both branches of the choice are tested on every machine. Every other
    test pins --amp=off (or bf16) where its numbers or titles depend on the precision."""
    import precision
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: request.param)
    return request.param


@pytest.fixture
def tree(tmp_path):
    """A small three-domain tree in the official layout: amazon 7, webcam 5, dslr 3 images per class."""
    return make_tree(tmp_path / "office31", {"amazon": 7, "webcam": 5, "dslr": 3})


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every fetch fails (datasets, ImageNet checkpoints, caffemodels) unless a test serves its own files."""
    import download

    def offline(*args, **kwargs):
        raise OSError("the tests never touch the network")
    monkeypatch.setattr(download, "fetch_drive_archive", offline)
    monkeypatch.setattr(download, "fetch_url", offline)
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)


@pytest.fixture(autouse=True)
def offline_torch_home(tmp_path, monkeypatch):
    """Every test gets its own empty torch hub cache, so nothing reads or writes the user's."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    torch.hub.set_dir(str(tmp_path / "torch_home" / "hub"))
