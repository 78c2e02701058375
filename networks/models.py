"""The networks: which --model names exist, their --weights and input sizes, and building one with a new last layer.

    model, new_layer = build_model("resnet50", num_classes=31, weights="IMAGENET1K_V1", bottleneck=256, freeze=0)
    architecture("alexnet")     # the file that builds it: its blocks (what --freeze counts), layers, new_layer
    input_size("vit_b_16", "IMAGENET1K_V1")     # (256, 224, "bilinear"): resize, crop, interpolation

alexnet.py, caffe_alexnet.py and resnet.py each build their family, backbone.py every other torchvision
classification network; this file picks one by name, says what it takes, and turns a checkpoint that cannot be
fetched into a message saying what to do.
"""
import contextlib
import functools
import os
import pickle
from unittest import mock

import torch
import torchvision
from torch import nn

import alexnet
from networks import backbone
from networks import caffe_alexnet
import resnet
from methods import METHODS
from methods.method import tap
from common.errors import UserError
from common.layers import shot_head
from data_loader import IMAGENET_MEAN, IMAGENET_STD

OWN_FILES = ("alexnet", "caffe_alexnet") + resnet.DEPTHS  # the papers' networks, each with a file of its own
MODELS = OWN_FILES + tuple(name for name in torchvision.models.list_models(module=torchvision.models)
                           if name not in OWN_FILES)


def weight_names(name):
    """The --weights choices of model `name`, "none" (random initialisation) included; the first is what auto
    means: IMAGENET1K_V1 for every torchvision network (the weights its documentation lists first), CaffeNet for
    caffe_alexnet."""
    if name in resnet.DEPTHS:
        return resnet.weight_names(name)
    return {"alexnet": alexnet.WEIGHTS, "caffe_alexnet": caffe_alexnet.WEIGHTS}.get(name) or backbone.weight_names(name)


def architecture(name):
    """The file that builds this network: alexnet, caffe_alexnet, resnet or backbone (new_layer, layers, blocks)."""
    return {"alexnet": alexnet, "caffe_alexnet": caffe_alexnet}.get(name) or \
        (resnet if name in resnet.DEPTHS else backbone)


def block_names(name):
    """What --freeze counts for model `name`, in order; None where the family's stages cannot be named."""
    if name in OWN_FILES:
        return architecture(name).BLOCKS
    return backbone.stage_names(skeleton(name))


@contextlib.contextmanager
def on_meta():
    """Build networks on PyTorch's meta device: shapes without values, no memory, no time (a RegNet-Y-128GF takes
    24 s to build on a CPU). RegNet computes its stage widths with tensors whose values it reads, which the meta
    device has not: those few are computed on the CPU."""
    regnet = torchvision.models.regnet.BlockParams
    widths = regnet.from_init_params.__func__

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return widths(cls, *args, **kwargs)
    with mock.patch.object(regnet, "from_init_params", classmethod(on_cpu)), torch.device("meta"):
        yield


@functools.lru_cache(maxsize=None)
def skeleton(name):
    """Model `name` without weights, on the meta device: for asking what it is made of and which inputs it takes."""
    with on_meta():
        if name == "alexnet":
            return alexnet.build_alexnet(2, "none").eval()
        if name == "caffe_alexnet":
            return caffe_alexnet.build_caffe_alexnet(2, "none").eval()
        return backbone.network(name, "none").eval()


def has_batchnorm(name):
    if name in OWN_FILES:
        return name in resnet.DEPTHS
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in skeleton(name).modules())


def weights_transforms(name, weights):
    """The preprocessing torchvision gives these weights (weights=none: the model's first weights')."""
    choices = torchvision.models.get_model_weights(name)
    return (choices[weights] if weights != "none" else list(choices)[0]).transforms()


def input_size(name, weights):
    """(resize_size, crop_size, interpolation) the network takes: the Office-31 protocol's 256 -> 224 where it takes
    224 crops, else the sizes of its weights' own transforms, with their interpolation either way; caffe_alexnet:
    256 -> 227. A ViT without weights takes what torchvision builds it for (224), whatever its weights take."""
    if name == "caffe_alexnet":
        return 256, caffe_alexnet.CROP_SIZE, "bilinear"
    transforms = weights_transforms(name, weights)
    crop = fixed_size(name, weights) or transforms.crop_size[0]
    return (256 if crop == 224 else transforms.resize_size[0]), crop, transforms.interpolation.value


def network_pixels(name, weights):
    """What the network takes as pixels (data_loader): "caffe", "imagenet", or the (mean, std) its weights were
    trained with where they differ from ImageNet's (EfficientNet-V2-L's 0.5, 0.5, 0.5)."""
    if name == "caffe_alexnet":
        return "caffe"
    transforms = weights_transforms(name, weights)
    mean, std = tuple(transforms.mean), tuple(transforms.std)
    return "imagenet" if (mean, std) == (IMAGENET_MEAN, IMAGENET_STD) else (mean, std)


def fixed_size(name, weights):
    """The one input size a ViT takes (its position embeddings are made for it): its weights' (224, or 384 and 518
    for the SWAG ones), or torchvision's 224 without weights; None for other networks."""
    if not name.startswith("vit_"):
        return None
    if weights == "none":
        return skeleton(name).image_size
    return torchvision.models.get_model_weights(name)[weights].meta["min_size"][0]


def check_network(name, weights, crop_size):
    """A network that cannot be built as asked stops the run before any work: one without a linear classifier to
    replace, or a crop it cannot take (a ViT takes exactly the size its position embeddings were made for), tried
    on the network without weights, on the meta device, where it costs nothing."""
    if name not in OWN_FILES:
        backbone.classifier_name(skeleton(name))
    fixed = fixed_size(name, weights)
    if fixed:
        if crop_size != fixed:
            weighted = "without weights" if weights == "none" else f"with {weights}"
            raise UserError(f"--crop_size={crop_size}: {name} {weighted} takes exactly {fixed}x{fixed} inputs (its "
                            f"position embeddings are fixed); use --crop_size=0 or {fixed}.")
        return
    model = skeleton(name)
    try:
        with torch.no_grad():
            model(torch.empty(2, 3, crop_size, crop_size, device=next(model.parameters()).device))
    except (RuntimeError, ValueError, AssertionError) as e:
        _, default, _ = input_size(name, weights)
        why = str(e).splitlines()[0]
        raise UserError(f"--crop_size={crop_size}: {name} cannot take {crop_size}x{crop_size} inputs ({why}); use "
                        f"--crop_size=0 (its own, {default}) or another size.") from None


def build_model(name, num_classes, weights, bottleneck=0, freeze=0, head="plain"):
    """The network with a new last layer (behind a bottleneck of that width, if any) and its first `freeze`
    blocks fixed; a checkpoint that cannot be fetched is a UserError saying what to do. head: the new layers' form,
    "plain" (common/layers.py new_head) or "shot" (SHOT's: shot_head), as the method declares (Method.head)."""
    model = load_network(name, num_classes, weights, bottleneck)
    if head == "shot":
        shot_head(architecture(name).new_layer(model))
    if freeze:  # (a family whose stages are not named has none: check_config refuses --freeze>0 there)
        for block in architecture(name).blocks(model)[:freeze]:
            block.requires_grad_(False)  # fixed: make_optimizer leaves them out of every group
    return model, architecture(name).new_layer


def classifier(new_layer):
    """The new last Linear layer inside new_layer (the classifier, behind its bottleneck if any): the layer whose input
    the methods' features and the validators' are."""
    return [m for m in new_layer.modules() if isinstance(m, nn.Linear)][-1]


def make_adaptation(c, net, new_layer, num_classes, device):
    """(the method's module (methods/) reading the network's adapted layers, or None for source only; the new layers
    to train at lr_mult x: the new last layer, bottleneck and the method's own layers, such as the discriminator of
    DANN, CDAN and BSP or MDD's adversarial classifier). The method's switches (its `flags`) come from c."""
    method = METHODS[c["method"]]
    if not method.adapts:
        return None, new_layer
    features = tap(architecture(c["model"]).layers(net))
    adaptation = method(classifier(new_layer).in_features, num_classes, c["trade_off"], features,
                        **{flag: c[flag] for flag in method.flags}).to(device)
    return adaptation, nn.ModuleList([new_layer, adaptation])


def load_network(name, num_classes, weights, bottleneck):
    if name == "caffe_alexnet":  # its weights come converted from the Caffe model zoo, with messages of their own
        return caffe_alexnet.build_caffe_alexnet(num_classes, weights, bottleneck)
    try:
        if name == "alexnet":
            return alexnet.build_alexnet(num_classes, weights, bottleneck)
        if name in resnet.DEPTHS:
            return resnet.build_resnet(name, num_classes, weights, bottleneck)
        return backbone.build(name, num_classes, weights, bottleneck)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:  # offline (URLError), damaged file
        url = torchvision.models.get_model_weights(name)[weights].url
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
        raise UserError(f"could not load the {weights} weights of {name} ({type(e).__name__}: {e}). Download "
                        f"{url} on a machine with internet and place it at {path} (a damaged file there: delete "
                        "it), or run with --weights=none to train from random initialisation.") from None
