"""The networks: which --model names exist, their --weights, and building one with a new last layer.

    model, new_layer = build_model("resnet50", num_classes=31, weights="IMAGENET1K_V1", bottleneck=256, freeze=0)
    architecture("alexnet")     # the file that builds it: its BLOCKS (what --freeze counts), layers, new_layer

alexnet.py, caffe_alexnet.py and resnet.py each build their family; this file picks one by name and turns a
checkpoint that cannot be fetched into a message saying what to do.
"""
import os
import pickle

import torch
import torchvision

import alexnet
import caffe_alexnet
import resnet
from data_loader import UserError

MODELS = ("alexnet", "caffe_alexnet") + resnet.DEPTHS


def weight_names(name):
    """The --weights choices of model `name`, "none" (random initialisation) included."""
    return {"alexnet": alexnet.WEIGHTS, "caffe_alexnet": caffe_alexnet.WEIGHTS}.get(name) or resnet.weight_names(name)


def architecture(name):
    """The file that builds this network: alexnet, caffe_alexnet or resnet (new_layer, layers, blocks)."""
    return {"alexnet": alexnet, "caffe_alexnet": caffe_alexnet}.get(name, resnet)


def build_model(name, num_classes, weights, bottleneck=0, freeze=0):
    """The network with a new last layer (behind a bottleneck of that width, if any) and its first `freeze`
    blocks fixed; a checkpoint that cannot be fetched is a UserError saying what to do."""
    model = load_network(name, num_classes, weights, bottleneck)
    for block in architecture(name).blocks(model)[:freeze]:
        block.requires_grad_(False)  # fixed: make_optimizer leaves them out of every group
    return model, architecture(name).new_layer


def load_network(name, num_classes, weights, bottleneck):
    if name == "caffe_alexnet":  # its weights come converted from the Caffe model zoo, with messages of their own
        return caffe_alexnet.build_caffe_alexnet(num_classes, weights, bottleneck)
    try:
        if name == "alexnet":
            return alexnet.build_alexnet(num_classes, weights, bottleneck)
        return resnet.build_resnet(name, num_classes, weights, bottleneck)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:  # offline (URLError), damaged file
        url = torchvision.models.get_model_weights(name)[weights].url
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
        raise UserError(f"could not load the {weights} weights of {name} ({type(e).__name__}: {e}). Download "
                        f"{url} on a machine with internet and place it at {path} (a damaged file there: delete "
                        "it), or run with --weights=none to train from random initialisation.") from None
