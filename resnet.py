"""torchvision ResNet-18/34/50/101/152 with ImageNet weights and a new `fc` sized to the number of classes.

    model = build_resnet("resnet50", num_classes=31, weights="IMAGENET1K_V1")  # V2 for 50/101/152; "none"
    new = new_layer(model)      # the freshly initialised fc (and bottleneck): it gets lr_mult x the learning rate
    layers(model)               # {"pool": ...} or {"bottleneck": ...}: the features adaptation methods read
    blocks(model)               # the stem, layer1 ... layer4: the blocks --freeze counts

IMAGENET1K_V1 (top-1 76.13 for ResNet-50) is what every paper-era PyTorch baseline used; IMAGENET1K_V2
(80.86, a newer recipe) has no published Office-31 number.
"""
from torch import nn
from torchvision import models

from common.layers import new_head

DEPTHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
BLOCKS = ("stem", "layer1", "layer2", "layer3", "layer4")  # what --freeze counts, in order


def weight_names(name):
    """The weight choices torchvision has for this ResNet, plus "none" for random init."""
    return tuple(w.name for w in models.get_model_weights(name)) + ("none",)


def build_resnet(name, num_classes, weights="IMAGENET1K_V1", bottleneck=0):
    enum = None if weights == "none" else models.get_model_weights(name)[weights]
    model = models.get_model(name, weights=enum)  # loads the 1000-class ImageNet fc too...
    model.fc = new_head(model.fc.in_features, num_classes, bottleneck)  # ...which is replaced here
    return model


def new_layer(model):
    return model.fc


def blocks(model):
    """The modules of BLOCKS: the stem (conv1 and bn1), then each stage."""
    return [nn.ModuleList([model.conv1, model.bn1]), model.layer1, model.layer2, model.layer3, model.layer4]


def layers(model):
    """The features adaptation reads, the last feeding the classifier: the bottleneck's output when there is
    one, else the pooled features."""
    if hasattr(model.fc, "in_features"):
        return {"pool": model.avgpool}
    return {"bottleneck": model.fc[2]}
