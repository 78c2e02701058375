"""torchvision AlexNet with ImageNet weights and a new last layer (fc8) sized to the number of classes.

    model = build_alexnet(num_classes=31, weights="IMAGENET1K_V1")   # or weights="none" for random init
    new = new_layer(model)      # the freshly initialised fc8 (and bottleneck): it gets lr_mult x the learning rate
    layers(model)               # {"fc6": ..., "fc7": ...}: the layers adaptation methods read (DAN adapts fc6-fc8)
    blocks(model)               # conv1 ... conv5, fc6, fc7: the blocks --freeze counts

Note: this is torchvision's AlexNet (64-192-384-256-256 channels, no LRN), not the Caffe AlexNet of the
DAN-era papers; the two have different weights, so expect a lower A->W number than the papers' 61.6%.
The papers' network is networks/caffe_alexnet.py (--model=caffe_alexnet).
"""
from torch import nn
from torchvision import models

from common.layers import new_head

WEIGHTS = ("IMAGENET1K_V1", "none")
BLOCKS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")  # what --freeze counts, in order


def build_alexnet(num_classes, weights="IMAGENET1K_V1", bottleneck=0):
    enum = None if weights == "none" else models.AlexNet_Weights[weights]
    model = models.alexnet(weights=enum)  # loads all 1000-class ImageNet weights, fc8 included...
    model.classifier[6] = new_head(model.classifier[6].in_features, num_classes, bottleneck)  # ...then replaces fc8
    return model


def new_layer(model):
    return model.classifier[6]


def blocks(model):
    """The modules of BLOCKS: the five convolutions, fc6 and fc7."""
    convolutions = [m for m in model.features if isinstance(m, nn.Conv2d)]
    return convolutions + [model.classifier[1], model.classifier[4]]


def layers(model):
    """The layers adaptation reads, in network order, the last feeding the classifier: fc6 and fc7 (after their
    ReLU), and the bottleneck when there is one."""
    found = {"fc6": model.classifier[2], "fc7": model.classifier[5]}
    if not hasattr(new_layer(model), "in_features"):  # a bottleneck: Linear, BatchNorm1d, ReLU, classifier
        found["bottleneck"] = new_layer(model)[2]
    return found
