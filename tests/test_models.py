"""Our networks are torchvision's, with a new last layer; ImageNet weights load from the hub cache offline."""
import os

import pytest
import torch
from torch import nn
from torchvision import models

import alexnet
import resnet


@pytest.mark.parametrize("name", ["alexnet", "resnet18", "resnet50"])
@pytest.mark.parametrize("num_classes", [31, 65])
def test_output_shape(name, num_classes):
    model = alexnet.build_alexnet(num_classes, "none") if name == "alexnet" else \
        resnet.build_resnet(name, num_classes, "none")
    assert model.eval()(torch.randn(2, 3, 224, 224)).shape == (2, num_classes)


@pytest.mark.parametrize("name", ["alexnet", "resnet18"])
def test_features_equal_torchvision_with_same_weights(name):
    ours = alexnet.build_alexnet(31, "none") if name == "alexnet" else resnet.build_resnet(name, 31, "none")
    reference = models.get_model(name, weights=None)
    new = "classifier.6." if name == "alexnet" else "fc."
    # moco-style check: same keys as torchvision's model, and only the new last layer has another shape
    ours_state, reference_state = ours.state_dict(), reference.state_dict()
    assert ours_state.keys() == reference_state.keys()
    assert [k for k in ours_state if ours_state[k].shape != reference_state[k].shape] == [new + "weight", new + "bias"]
    for model in (ours, reference):
        if name == "alexnet":
            model.classifier[6] = nn.Identity()
        else:
            model.fc = nn.Identity()
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 224, 224)
    assert torch.allclose(ours.eval()(x), reference.eval()(x), atol=1e-6)


def write_checkpoint(name, weights_enum):
    """A random 1000-class state dict saved where torch looks for the real file: loads with no download."""
    torch.manual_seed(1)
    state = models.get_model(name, weights=None).state_dict()
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(folder, exist_ok=True)
    torch.save(state, os.path.join(folder, os.path.basename(weights_enum.url)))
    return state


@pytest.mark.parametrize("name, enum", [("resnet18", models.ResNet18_Weights.IMAGENET1K_V1),
                                        ("alexnet", models.AlexNet_Weights.IMAGENET1K_V1)])
def test_imagenet_weights_load_offline_from_hub_cache(name, enum, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    state = write_checkpoint(name, enum)
    model = alexnet.build_alexnet(31, "IMAGENET1K_V1") if name == "alexnet" else \
        resnet.build_resnet(name, 31, "IMAGENET1K_V1")
    new = "classifier.6." if name == "alexnet" else "fc."
    loaded = model.state_dict()
    for key, value in state.items():
        if not key.startswith(new):
            assert torch.equal(loaded[key], value), key
    assert loaded[new + "weight"].shape[0] == 31


def test_weight_choices_follow_torchvision():
    assert resnet.weight_names("resnet18") == ("IMAGENET1K_V1", "none")
    assert resnet.weight_names("resnet50") == ("IMAGENET1K_V1", "IMAGENET1K_V2", "none")
    assert alexnet.WEIGHTS == tuple(w.name for w in models.AlexNet_Weights) + ("none",)
