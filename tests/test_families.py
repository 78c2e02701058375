"""Every network torchvision lists: it builds with and without its default weights, only its new layers learn at
lr_mult, and it trains a step (a real one, on a tiny tree, for one network of each family; on the meta device for
every name, at its own input size) or is refused before any work, with the reason."""
import os

import pytest
import torch
import torch.nn.functional as F
import torchvision

from networks import caffe_alexnet
from runs import checks
import office31
from networks.models import MODELS, architecture, block_names, build_model, on_meta
from test_backbones import FAMILIES, weights_before_and_after

pytestmark = pytest.mark.slow

# one network of each family, trained for real on a tiny tree at the smallest crop the family takes
# (the families of test_backbones.FAMILIES train there)
TRAINED = {"googlenet": 32, "inception_v3": 75, "shufflenet_v2_x0_5": 32, "mnasnet0_5": 32, "vgg11_bn": 32,
           "vgg11": 32, "maxvit_t": 224, "swin_v2_t": 32, "efficientnet_v2_s": 33, "regnet_x_400mf": 32,
           "resnext50_32x4d": 32, "wide_resnet50_2": 32, "mobilenet_v2": 32, "alexnet": 63}
REFUSED = {"squeezenet1_0": "has no linear classifier to replace", "squeezenet1_1": "has no linear classifier"}


def family(name):
    """vit_b_16 -> vit, efficientnet_v2_s -> efficientnet_v2, resnet50 -> resnet, shufflenet_v2_x0_5 -> shufflenet_v2"""
    parts = name.split("_")
    head = parts[0].rstrip("0123456789")
    return f"{head}_{parts[1]}" if len(parts) > 1 and parts[1] in ("v2", "v3", "x", "y") else head


def test_every_family_torchvision_lists_has_a_network_trained_here():
    covered = {family(n) for n in [*TRAINED, *(f[0] for f in FAMILIES), "resnet18", "caffe_alexnet",
                                   *REFUSED]}
    listed = {family(n) for n in torchvision.models.list_models(module=torchvision.models)}
    assert listed <= covered, f"no trained test for {sorted(listed - covered)}: add one network of each to TRAINED"
    assert set(torchvision.models.list_models(module=torchvision.models)) <= set(MODELS)


@pytest.fixture
def no_weights_loaded(monkeypatch):
    """Building "with weights" builds the network as those weights need it (sizes, auxiliary heads) and hands it a
    state dict; here the state dict is a stand-in and loading it does nothing (the meta device has no values)."""
    loaded = []
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", lambda self, *a, **k: {"stand-in": self})
    monkeypatch.setattr(caffe_alexnet, "converted_weights", lambda weights: {"stand-in": weights})
    monkeypatch.setattr(torch.nn.Module, "load_state_dict",
                        lambda self, state, strict=True, assign=False: loaded.append(state))
    return loaded


@pytest.mark.parametrize("name", MODELS)
def test_every_network_builds_with_and_without_weights_and_takes_a_step(name, no_weights_loaded):
    c = office31.resolve(dict(office31.FLAGS, model=name, method="dann", num_workers=0, device="cpu"))
    if name in REFUSED:
        with pytest.raises(office31.UserError, match=REFUSED[name]):
            checks.check_config(c)
        return
    checks.check_config(c)  # its default weights' input size (ViT-H/14 SWAG: 518) is one it takes
    c = office31.with_method(c, "dann")
    for weights in ("none", c["weights"]):  # the step below is taken with the default weights' network
        with on_meta():
            net, new_layer = build_model(name, 5, weights, c["bottleneck"])
        assert [list(state) for state in no_weights_loaded] == ([["stand-in"]] if weights != "none" else [])
        no_weights_loaded.clear()
        device = torch.device("meta")
        adaptation, new = office31.make_adaptation(c, net, new_layer(net), 5, device)
        optimizer = office31.make_optimizer(net, new, c)
        names = {id(p): n for n, p in net.named_parameters()}
        pretrained, fresh = optimizer.param_groups
        assert {names.get(id(p), "method") for p in fresh["params"]} == \
            {f"{prefix(net, new_layer)}{n}" for n, _ in new_layer(net).named_parameters()} | {"method"}
        assert len(pretrained["params"]) + len(fresh["params"]) == len(names) + len(list(adaptation.parameters()))
        assert fresh["initial_lr"] == pytest.approx(c["lr_mult"] * pretrained["initial_lr"])
    # one step of the loop's arithmetic on the meta device at the network's own crop: shapes agree end to end
    net.train()
    joint = net(torch.empty(4, 3, c["crop_size"], c["crop_size"], device=device))
    assert joint.shape == (4, 5)
    loss = F.cross_entropy(joint[:2], torch.zeros(2, dtype=torch.long, device=device)) + adaptation(joint, 0.5)
    loss.backward()
    optimizer.step()
    assert all(p.grad is not None for p in fresh["params"])


def prefix(net, new_layer):
    """The state-dict path of the new layer ("fc.", "classifier.6.", "heads.head.1.")."""
    module = new_layer(net)
    return next(f"{n}." for n, m in net.named_modules() if m is module)


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_one_network_of_each_family_trains_on_a_tiny_tree(tree, tmp_path, name):
    crop = TRAINED[name]
    [result] = office31.main([f"--data_root={tree}", f"--model={name}", "--weights=none", f"--resize_size={crop + 4}",
                              f"--crop_size={crop}", "--epochs=1", "--iters_per_epoch=1", "--batch_size=2",
                              "--num_workers=0", "--device=cpu", "--amp=off", "--eval_every=0",
                              f"--out_dir={tmp_path}"])
    assert result["total"] == 15 and result["config"]["model"] == name


@pytest.mark.parametrize("name", [n for n in MODELS if n not in REFUSED])
def test_freeze_is_counted_in_stages_or_refused_with_the_reason(name):
    names = block_names(name)
    c = office31.resolve(dict(office31.FLAGS, model=name, freeze=1))
    if names is None:
        with pytest.raises(office31.UserError, match=f"{name}'s stages are not named here"):
            checks.check_config(c)
        return
    checks.check_config(c)
    with on_meta():
        net, _ = build_model(name, 5, "none", 0, freeze=1)
    first = architecture(name).blocks(net)[0]
    frozen = {id(p) for p in first.parameters()}
    assert frozen and all(not p.requires_grad for p in first.parameters())
    assert all(p.requires_grad for p in net.parameters() if id(p) not in frozen)
    # a stage is a convolution with its BatchNorm: no BatchNorm left training behind a frozen convolution
    batchnorms = [m for m in first.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    convolutions = [m for m in first.modules() if isinstance(m, torch.nn.Conv2d)]
    following = dict(zip(list(net.modules()), list(net.modules())[1:]))
    for conv in convolutions:
        after = following.get(conv)
        if isinstance(after, torch.nn.modules.batchnorm._BatchNorm):
            assert after in batchnorms, f"{name}: the BatchNorm after a frozen convolution trains"


def test_vgg_bn_freezes_a_convolution_with_its_batchnorm_statistics(tree, tmp_path, monkeypatch):
    built = weights_before_and_after(monkeypatch)
    office31.main([f"--data_root={tree}", "--model=vgg11_bn", "--weights=none", "--resize_size=36", "--crop_size=32",
                   "--epochs=1", "--iters_per_epoch=2", "--batch_size=2", "--num_workers=0", "--device=cpu",
                   "--amp=off", "--eval_every=0", "--freeze=1", f"--out_dir={tmp_path}"])
    [(model, before)] = built
    after = model.state_dict()
    assert block_names("vgg11_bn")[:2] == ("features.0", "features.4")  # conv, BatchNorm, ReLU, pool: one stage
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("features.0.", "features.1.")))
    assert not torch.equal(before["features.5.running_mean"], after["features.5.running_mean"])
    assert os.path.exists(tmp_path / "results.jsonl")
