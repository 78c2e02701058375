"""A small Office-31-shaped dataset drawn on the spot, to try the repo offline in a minute, and the trees the tests
generate:

    python office31.py --dataset=demo        # draws data/demo once, then trains and prints "A→W accuracy: ..."
    make_demo("data/demo")                   # amazon, dslr, webcam: five classes of real JPEGs, Office-31's layout
    make_tree(root, {"amazon": 7, "webcam": 5})   # the tests' trees: flat class colours, shifted per domain

The demo's classes are shapes (a circle, a square, a triangle, a cross, a ring) in a colour near their class's,
and its domains photograph them differently: amazon on a white background, as catalogue pictures; webcam darker,
noisy and blurred; dslr sharp with a warm cast. The shift is visible, so the target is a real test of the source
model, and a ResNet-18 trained from scratch learns the shapes within the minute (FLAGS: the demo's defaults).
"""
import os

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from common.files import temporary

# Office-31 class names, drawn as shapes; images per class in proportion to Office-31's domains, scaled down
CLASSES = ("back_pack", "bike", "calculator", "headphones", "mug")
DOMAINS = {"amazon": 40, "dslr": 12, "webcam": 20}
SIZE = (96, 96)
# What --dataset=demo changes among the defaults (any flag given wins): a small network from scratch (no download),
# small images and a short schedule, about a minute on a laptop's CPU
FLAGS = {"model": "resnet18", "weights": "none", "resize_size": 64, "crop_size": 56, "epochs": 4,
         "iters_per_epoch": 20, "batch_size": 16, "num_workers": 0, "out_dir": os.path.join("out", "demo")}

# Colours far apart, so a small network separates the classes quickly ("easy" domains)
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 60, 220), (220, 220, 40), (200, 40, 220), (40, 220, 220)]


def draw(class_index, size, shift, seed):
    """The tests' image: a flat class colour (shifted per domain) with a little noise and a random grey square."""
    g = torch.Generator().manual_seed(seed)
    w, h = size
    base = torch.tensor(COLOURS[class_index % len(COLOURS)], dtype=torch.float32) + shift
    pixels = base.view(1, 1, 3) + 20 * torch.randn(h, w, 3, generator=g)
    x, y = (int(v) for v in torch.randint(0, max(1, min(w, h) // 2), (2,), generator=g))
    pixels[y:y + h // 4, x:x + w // 4] = 128
    return Image.fromarray(pixels.clamp(0, 255).to(torch.uint8).numpy())


def draw_object(class_index, size, domain_index, seed):
    """The demo's image: the class's shape, at a random place and size, in a colour near the class's, on the
    domain's background (0 amazon: white; 1 dslr: warm and sharp; 2 webcam: dark, noisy, blurred)."""
    g = torch.Generator().manual_seed(seed)
    w, h = size
    background = [(245, 245, 245), (225, 205, 180), (70, 70, 80)][domain_index % 3]
    image = Image.new("RGB", size, background)
    colour = tuple(int(c) for c in (torch.tensor(COLOURS[class_index % len(COLOURS)]) +
                                    torch.randint(-50, 51, (3,), generator=g)).clamp(0, 255))
    r = int(torch.randint(w // 5, w // 3, (1,), generator=g))
    cx, cy = (int(torch.randint(r, side - r, (1,), generator=g)) for side in (w, h))
    box = (cx - r, cy - r, cx + r, cy + r)
    pen = ImageDraw.Draw(image)
    shape = class_index % 5
    if shape == 0:
        pen.ellipse(box, fill=colour)
    elif shape == 1:
        pen.rectangle(box, fill=colour)
    elif shape == 2:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == 3:
        pen.rectangle((cx - r, cy - r // 3, cx + r, cy + r // 3), fill=colour)
        pen.rectangle((cx - r // 3, cy - r, cx + r // 3, cy + r), fill=colour)
    else:
        pen.ellipse(box, outline=colour, width=max(2, r // 3))
    if domain_index == 2:  # a webcam: blurred, and noisy
        image = image.filter(ImageFilter.GaussianBlur(1.5))
        noise = 25 * torch.randn(h, w, 3, generator=g)
        pixels = torch.from_numpy(np.array(image)).float() + noise
        image = Image.fromarray(pixels.clamp(0, 255).to(torch.uint8).numpy())
    return image


def make_tree(root, domains, classes=CLASSES, layout="official", size=(48, 40), start_seed=0, shift=10, picture=None):
    """domains: {name: images per class}; layout 'official' (<d>/images/<c>/) or 'flat' (<d>/<c>/). Each image is
    picture(class index, size, domain index, seed); by default the tests' draw, each domain's colours moved by
    `shift` more than the previous one's."""
    picture = picture or (lambda k, size, index, seed: draw(k, size, shift * index, seed))
    seed = start_seed
    for index, (domain, per_class) in enumerate(domains.items()):
        for k, name in enumerate(classes):
            parts = (domain, "images", name) if layout == "official" else (domain, name)
            folder = os.path.join(root, *parts)
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                picture(k, size, index, seed).save(os.path.join(folder, f"frame_{i:04d}.jpg"))
                seed += 1
    return str(root)


def make_demo(root):
    """Draw the demo dataset into root (a staging folder renamed into place: never half a tree; a drawing that
    fails leaves none)."""
    with temporary(os.path.abspath(root), os.getpid(), suffix=".drawing") as staging:
        make_tree(staging, DOMAINS, CLASSES, size=SIZE, picture=draw_object)
        os.replace(staging, root)
    return root
