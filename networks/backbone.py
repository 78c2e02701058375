"""Any other torchvision classification network (ViT, Swin, ConvNeXt, EfficientNet, RegNet, DenseNet, MobileNet,
VGG, ...) with its ImageNet weights and a new last layer where the family keeps its own classifier.

    model = build("vit_b_16", num_classes=31, weights="IMAGENET1K_V1", bottleneck=256)
    new_layer(model)    # Flatten + the new classifier (behind the bottleneck), where heads.head was: lr_mult x lr
    layers(model)       # {"features": ...} or {"bottleneck": ...}: what the adaptation methods read
    blocks(model)       # the top-level stages --freeze counts, named by stage_names(model)

The family's classifier is found in one place, classifier_name: the network's last Linear layer (fc, classifier[-1],
heads.head, head). AlexNet, the five ResNets and the Caffe AlexNet keep their own files.
"""
from torch import nn
from torchvision import models

import resnet
from common.layers import new_head
from common.errors import UserError

# torchvision's two Inception-style networks carry auxiliary classifiers, which their ImageNet weights include
AUXILIARY = {"googlenet": ("aux1", "aux2"), "inception_v3": ("AuxLogits",)}


def weight_names(name):
    """The weight choices torchvision has for this network, plus "none" for random initialisation."""
    return tuple(w.name for w in models.get_model_weights(name)) + ("none",)


def classifier_name(model):
    """Where the family keeps its ImageNet classifier: the path of its last Linear layer."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise UserError(f"{type(model).__name__} has no linear classifier to replace (it classifies with a "
                        "convolution); choose another --model.")
    return names[-1]


def network(name, weights):
    """torchvision's network `name` with these weights ("none": random), without auxiliary classifiers: GoogLeNet
    and Inception-V3 must be built with them to load their weights (torchvision refuses aux_logits=False there),
    so they are dropped after loading. Training then uses the main logits only, not torchvision's recipe of 0.3 x
    (GoogLeNet) or 0.4 x (Inception-V3) the auxiliary losses added: the adaptation methods read one classifier."""
    enum = None if weights == "none" else models.get_model_weights(name)[weights]
    quiet = {"init_weights": True} if name in AUXILIARY and enum is None else {}  # their default, minus a warning
    model = models.get_model(name, weights=enum, **quiet)
    if name in AUXILIARY:
        for part in AUXILIARY[name]:
            setattr(model, part, None)
        model.aux_logits = False  # forward returns the main logits alone, in training too
    return model


def build(name, num_classes, weights="IMAGENET1K_V1", bottleneck=0):
    model = network(name, weights)  # with the 1000-class classifier...
    model.classifier_name = classifier_name(model)
    in_features = model.get_submodule(model.classifier_name).in_features
    # ...replaced here; Flatten hands the classifier's input to the adaptation methods as it is (see layers)
    model.set_submodule(model.classifier_name, nn.Sequential(nn.Flatten(), new_head(in_features, num_classes,
                                                                                      bottleneck)))
    return model


def new_layer(model):
    return model.get_submodule(model.classifier_name)


def layers(model):
    """The features adaptation reads: the bottleneck's output when there is one, else what the classifier receives
    (a ViT's class token, a ConvNeXt's normalised pooled features, ...), flattened."""
    flatten, head = new_layer(model)
    if isinstance(head, nn.Linear):
        return {"features": flatten}
    return {"bottleneck": head[2]}


def stages(model):
    """{name: module} of the network's top-level stages in order, or None where they cannot be named: a ViT's patch
    embedding (with the class token and position embeddings) and encoder layers; a ResNet-like's stem and layers
    (ResNeXt, Wide ResNet); a RegNet's stem and blocks; else the parts of `features` (Swin, ConvNeXt, EfficientNet,
    DenseNet, MobileNet, VGG; see feature_stages)."""
    if isinstance(model, models.VisionTransformer):
        embedding = nn.ModuleList([model.conv_proj, nn.ParameterList([model.class_token, model.encoder.pos_embedding])])
        return {"embedding": embedding, **dict(model.encoder.layers.named_children())}
    if isinstance(model, models.ResNet):
        return dict(zip(resnet.BLOCKS, resnet.blocks(model)))
    if isinstance(model, models.RegNet):
        return {"stem": model.stem, **dict(model.trunk_output.named_children())}
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return feature_stages(features)
    return None


def feature_stages(features):
    """The parts of `features` that have weights, each BatchNorm joined to the part before it: a stage is a
    convolution with its BatchNorm (VGG-BN's features.0 and .1; DenseNet's conv0 and norm0, its last block and
    norm5), so that freezing a convolution also freezes its normalisation and statistics."""
    found = {}
    for name, module in features.named_children():
        if not any(True for _ in module.parameters()):
            continue  # ReLU, pooling: nothing to freeze
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and found:
            last = next(reversed(found))
            found[last] = nn.ModuleList([*found[last], module])
        else:
            found[f"features.{name}"] = nn.ModuleList([module])
    return {name: parts[0] if len(parts) == 1 else parts for name, parts in found.items()}


def blocks(model):
    """The modules of the stages, in order; [] where none are named (--freeze is refused there)."""
    return list((stages(model) or {}).values())


def stage_names(model):
    """The names of the model's stages (what --freeze counts), or None where they cannot be named."""
    found = stages(model)
    return None if found is None else tuple(found)
