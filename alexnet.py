"""torchvision AlexNet with ImageNet weights and a new last layer (fc8) sized to the number of classes.

    model = build_alexnet(num_classes=31, weights="IMAGENET1K_V1")   # or weights="none" for random init
    new = new_layer(model)      # the freshly initialised fc8: it gets lr_mult x the learning rate

Note: this is torchvision's AlexNet (64-192-384-256-256 channels, no LRN), not the Caffe AlexNet of the
DAN-era papers; the two have different weights, so expect a lower A->W number than the papers' 61.6%.
"""
from torch import nn
from torchvision import models

WEIGHTS = ("IMAGENET1K_V1", "none")


def build_alexnet(num_classes, weights="IMAGENET1K_V1"):
    enum = None if weights == "none" else models.AlexNet_Weights[weights]
    model = models.alexnet(weights=enum)  # loads all 1000-class ImageNet weights, fc8 included...
    model.classifier[6] = nn.Linear(model.classifier[6].in_features, num_classes)  # ...then replaces fc8
    return model


def new_layer(model):
    return model.classifier[6]
