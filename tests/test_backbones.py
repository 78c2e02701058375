"""Any torchvision backbone: one network of each family trains, loads its ImageNet weights offline, gets its new
layer where the family keeps its classifier, freezes by stages, and takes every adaptation method."""
import math
import os

import pytest
import torch
from torchvision import models

from networks import backbone
from runs import checks
import office31
from methods import METHODS
from methods.method import tap
from data_loader import load_domain, normalize
from networks.models import block_names, build_model, input_size, network_pixels, weight_names

# one network of each family: (name, the smallest crop the tests give it, where its own classifier is)
FAMILIES = [("vit_b_16", 224, "heads.head"), ("swin_t", 32, "head"), ("convnext_tiny", 32, "classifier.2"),
            ("efficientnet_b0", 32, "classifier.1"), ("regnet_y_400mf", 32, "fc"), ("densenet121", 32, "classifier"),
            ("mobilenet_v3_small", 32, "classifier.3")]


# ViT-B/16 takes 224 crops only, a few seconds a test on a CPU: in the full suite, not the quick tier
FAMILY_PARAMS = [pytest.param(*f, marks=pytest.mark.slow) if f[0] == "vit_b_16" else f for f in FAMILIES]


def small_run(name, crop):
    return [f"--model={name}", "--weights=none", f"--resize_size={crop + 4}", f"--crop_size={crop}", "--epochs=1",
            "--iters_per_epoch=2", "--batch_size=2", "--num_workers=0", "--device=cpu", "--eval_every=0", "--amp=off"]


@pytest.mark.parametrize("name, crop, classifier", FAMILY_PARAMS, ids=[f[0] for f in FAMILIES])
def test_each_family_trains_end_to_end_at_its_smallest_input(tree, tmp_path, capsys, name, crop, classifier):
    [result] = office31.main([f"--data_root={tree}", *small_run(name, crop), f"--out_dir={tmp_path}"])
    assert capsys.readouterr().out.splitlines()[-1] == \
        f"A→W accuracy: {100 * result['accuracy']:.2f}% ({result['correct']}/15)"
    assert result["config"]["model"] == name and result["total"] == 15


def write_stand_in(name, weights):
    """A random 1000-class network of this architecture saved under the file name torchvision fetches for these
    weights: it loads from the hub cache with no download."""
    torch.manual_seed(1)
    stand_in = models.get_model(name, weights=None)  # (GoogLeNet's and Inception's with their auxiliary heads)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(folder, exist_ok=True)
    torch.save(stand_in.state_dict(), os.path.join(folder, os.path.basename(
        models.get_model_weights(name)[weights].url)))
    return stand_in


def classifier_input(model, classifier, x):
    """What the module at path `classifier` receives on input x, flattened (the features the new layer takes)."""
    seen = []
    hook = model.get_submodule(classifier).register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        model.eval()(x)
    hook.remove()
    return seen[0].flatten(1)


@pytest.mark.parametrize("name, crop, classifier", FAMILY_PARAMS, ids=[f[0] for f in FAMILIES])
def test_pretrained_weights_load_offline_and_only_the_new_layers_are_new(monkeypatch, name, crop, classifier):
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    stand_in = write_stand_in(name, "IMAGENET1K_V1")
    model, new_layer = build_model(name, 5, "IMAGENET1K_V1", bottleneck=16)
    ours, theirs = model.state_dict(), stand_in.state_dict()
    assert sorted(set(theirs) - set(ours)) == [f"{classifier}.bias", f"{classifier}.weight"]
    assert sorted(set(ours) - set(theirs)) == sorted(f"{classifier}.1.{k}" for k in new_layer(model)[1].state_dict())
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs if k in ours)
    x = torch.randn(2, 3, crop, crop)
    assert torch.equal(classifier_input(model, classifier, x), classifier_input(stand_in, classifier, x))
    assert model.eval()(x).shape == (2, 5)


@pytest.mark.parametrize("name, crop", [("googlenet", 32), ("inception_v3", 75)])
def test_inception_networks_load_their_weights_and_train_on_the_main_logits(monkeypatch, name, crop):
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    theirs = write_stand_in(name, "IMAGENET1K_V1").state_dict()
    model, _ = build_model(name, 5, "IMAGENET1K_V1")
    ours = model.state_dict()
    auxiliary = {k for k in theirs if k.startswith(("aux1.", "aux2.", "AuxLogits."))}
    assert auxiliary and sorted(set(theirs) - set(ours) - auxiliary) == ["fc.bias", "fc.weight"]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs if k in ours)
    logits = model.train()(torch.randn(2, 3, crop, crop))  # in training: the main logits alone, no auxiliary
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 5)


@pytest.mark.parametrize("name, crop, classifier", FAMILY_PARAMS, ids=[f[0] for f in FAMILIES])
def test_the_new_layers_alone_learn_at_lr_mult(name, crop, classifier):
    model, new_layer = build_model(name, 5, "none", bottleneck=8)
    optimizer = office31.make_optimizer(model, new_layer(model), dict(office31.FLAGS, lr=0.01, lr_mult=10.0))
    pretrained, new = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in new["params"]) == sorted(
        f"{classifier}.1.{k}" for k, _ in new_layer(model)[1].named_parameters())  # bottleneck and classifier
    assert len(pretrained["params"]) + len(new["params"]) == len(names)
    assert new["initial_lr"] == pytest.approx(10 * pretrained["initial_lr"])


def test_adaptation_reads_what_the_new_layer_receives_or_the_bottleneck():
    model, new_layer = build_model("convnext_tiny", 5, "none")
    assert list(backbone.layers(model)) == ["features"]
    features = tap(backbone.layers(model))
    x = torch.randn(2, 3, 32, 32)
    received = classifier_input(model, "classifier.2", x)  # (the forward pass fills the tapped features)
    assert torch.equal(features["features"], received)
    model, new_layer = build_model("convnext_tiny", 5, "none", bottleneck=8)
    assert backbone.layers(model) == {"bottleneck": new_layer(model)[1][2]}  # the bottleneck's ReLU


@pytest.mark.slow
@pytest.mark.parametrize("name, crop", [("vit_b_16", 224), ("convnext_tiny", 32)])
def test_every_adaptation_method_takes_a_step(name, crop):
    g = torch.Generator().manual_seed(0)
    x, y, x_target = torch.randn(2, 3, crop, crop, generator=g), torch.tensor([0, 1]), torch.randn(2, 3, crop, crop)
    built = {}  # one network per bottleneck width (a ViT-B/16 takes seconds to build), each method its new layers
    for method in [m for m, chosen in METHODS.items() if chosen.adapts]:  # (SHOT and TENT: no term on this loop)
        c = office31.with_method(dict(office31.FLAGS, model=name), method)
        if c["bottleneck"] not in built:
            built[c["bottleneck"]] = build_model(name, 3, "none", c["bottleneck"])
        net, new_layer = built[c["bottleneck"]]
        adaptation, new = office31.make_adaptation(c, net, new_layer(net), 3, torch.device("cpu"))
        optimizer = office31.make_optimizer(net, new, c)
        before = new_layer(net)[1].state_dict()["weight" if c["bottleneck"] == 0 else "3.weight"].clone()
        losses, _ = office31.train_one_epoch(net, optimizer, [((x, y), x_target)], 0, 10, False,
                                             torch.contiguous_format, adaptation)
        after = new_layer(net)[1].state_dict()["weight" if c["bottleneck"] == 0 else "3.weight"]
        assert torch.isfinite(torch.tensor(losses["adaptation"])) and not torch.equal(before, after), method


def weights_before_and_after(monkeypatch):
    """[(model, its state when built)] of every network office31 builds from now on: after the run, the model's
    state_dict() is its state after training."""
    built, real = [], office31.build_model

    def spy(*args, **kwargs):
        model, new_layer = real(*args, **kwargs)
        built.append((model, {k: v.clone() for k, v in model.state_dict().items()}))
        return model, new_layer
    monkeypatch.setattr(office31, "build_model", spy)
    return built


def test_freeze_fixes_the_leading_stages_and_their_batchnorm_statistics(tree, tmp_path, monkeypatch):
    built = weights_before_and_after(monkeypatch)
    office31.main([f"--data_root={tree}", *small_run("efficientnet_b0", 32), "--freeze=2", f"--out_dir={tmp_path}"])
    [(model, before)] = built
    after = model.state_dict()
    frozen = ("features.0.", "features.1.")  # the stem and the first stage, running statistics included
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(frozen))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("features.2."))
    assert block_names("efficientnet_b0")[:3] == ("features.0", "features.1", "features.2")


@pytest.mark.slow
def test_freeze_keeps_a_vits_patch_projection_class_token_and_position_embeddings(tree, tmp_path, monkeypatch):
    built = weights_before_and_after(monkeypatch)
    office31.main([f"--data_root={tree}", *small_run("vit_b_32", 224), "--iters_per_epoch=1", "--freeze=2",
                   f"--out_dir={tmp_path}"])
    [(model, before)] = built
    after = model.state_dict()
    frozen = ["class_token", "encoder.pos_embedding", "conv_proj.weight", "conv_proj.bias",
              *(k for k in before if k.startswith("encoder.layers.encoder_layer_0."))]
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["encoder.layers.encoder_layer_1.mlp.0.weight"],
                           after["encoder.layers.encoder_layer_1.mlp.0.weight"])
    assert block_names("vit_b_32")[:3] == ("embedding", "encoder_layer_0", "encoder_layer_1")


def test_auto_weights_and_input_sizes_come_from_each_network():
    assert [weight_names(n)[0] for n in ("vit_b_16", "swin_t", "efficientnet_v2_s", "resnet50")] == \
        ["IMAGENET1K_V1"] * 4
    assert input_size("vit_b_16", "IMAGENET1K_V1") == (256, 224, "bilinear")  # the protocol's 256 -> 224
    assert input_size("vit_b_16", "IMAGENET1K_SWAG_E2E_V1") == (384, 384, "bicubic")
    assert input_size("efficientnet_v2_s", "none") == (384, 384, "bilinear")
    assert input_size("swin_t", "IMAGENET1K_V1") == (256, 224, "bicubic")
    c = office31.resolve(dict(office31.FLAGS, model="efficientnet_v2_s"))
    assert (c["weights"], c["resize_size"], c["crop_size"]) == ("IMAGENET1K_V1", 384, 384)
    c = office31.resolve(dict(office31.FLAGS, model="resnet50"))  # unchanged for the papers' networks
    assert (c["weights"], c["resize_size"], c["crop_size"]) == ("IMAGENET1K_V1", 256, 224)
    assert [network_pixels(n, "none") for n in ("resnet50", "caffe_alexnet", "vit_b_16")] == \
        ["imagenet", "caffe", "imagenet"]
    half = (0.5, 0.5, 0.5)
    assert network_pixels("efficientnet_v2_l", "IMAGENET1K_V1") == (half, half)  # its weights' own statistics
    white = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    assert torch.allclose(normalize(white, (half, half)), torch.ones(1, 3, 2, 2))


def test_interpolation_reaches_both_data_paths(tree):
    for cache in (True, False):
        bicubic = load_domain(tree, "webcam", 20, cache, 0, "cpu", "bicubic")
        bilinear = load_domain(tree, "webcam", 20, cache, 0, "cpu", "bilinear")
        [(x_cubic, _)] = list(bicubic.test_batches(64, 16))
        [(x_linear, _)] = list(bilinear.test_batches(64, 16))
        assert not torch.equal(x_cubic, x_linear)
    resized = load_domain(tree, "webcam", 20, True, 0, "cpu", "bicubic").images
    per_sample = load_domain(tree, "webcam", 20, False, 0, "cpu", "bicubic")
    [(x, _)] = list(per_sample.test_batches(64, 20))
    assert torch.allclose(normalize(resized), x, atol=1e-5)


@pytest.mark.parametrize("argv, phrase", [
    (["--model=vit_b_16", "--crop_size=32", "--resize_size=40"],
     "--crop_size=32: vit_b_16 with IMAGENET1K_V1 takes exactly 224x224 inputs"),
    (["--model=vit_b_16", "--weights=IMAGENET1K_SWAG_E2E_V1"], None),  # 384 -> 384, its own size: fine
    (["--model=maxvit_t", "--crop_size=64", "--resize_size=70"], "--crop_size=64: maxvit_t cannot take 64x64 inputs"),
    (["--model=squeezenet1_0"], "has no linear classifier to replace"),
    (["--model=googlenet", "--freeze=2"], "--freeze=2: googlenet's stages are not named here"),
    (["--model=alexnet", "--crop_size=32", "--resize_size=40"], "--crop_size=32: alexnet cannot take 32x32 inputs"),
    (["--model=caffe_alexnet", "--crop_size=64", "--resize_size=256"], "caffe_alexnet cannot take 64x64 inputs"),
    (["--model=vit_h_14", "--weights=none"], None),  # torchvision builds it for 224 without weights: the default
    (["--model=vit_h_14", "--weights=none", "--crop_size=518", "--resize_size=518"],
     "--crop_size=518: vit_h_14 without weights takes exactly 224x224 inputs (its position embeddings are fixed); "
     "use --crop_size=0 or 224."),
    (["--model=convnext_tiny", "--freeze=9"], "--freeze=9: convnext_tiny has 8 blocks to freeze (features.0, "),
    (["--model=vit_b_16", "--weights=IMAGENET1K_V2"],
     "--weights=IMAGENET1K_V2: vit_b_16 has IMAGENET1K_V1, IMAGENET1K_SWAG_E2E_V1, IMAGENET1K_SWAG_LINEAR_V1, none"),
    (["--model=densenet121", "--batch_size=1"], "densenet121's BatchNorm layers normalise over the images"),
])
def test_what_a_network_cannot_take_stops_before_any_work(tmp_path, argv, phrase):
    c = office31.resolve(office31.parse_flags(argv))
    if phrase is None:
        return checks.check_config(c)
    with pytest.raises(office31.UserError) as error:
        checks.check_config(c)
    assert phrase in str(error.value)


@pytest.mark.parametrize("name", ["vit_b_16", "inception_v3", "googlenet"])
def test_offline_without_cached_weights_says_where_to_put_them(name):
    with pytest.raises(office31.UserError) as error:
        build_model(name, 5, "IMAGENET1K_V1")
    url = models.get_model_weights(name)["IMAGENET1K_V1"].url
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    assert f"Download {url} on a machine with internet and place it at {path}" in str(error.value)




@pytest.mark.parametrize("name", ["swin_t", "convnext_tiny"])
def test_both_memory_layouts_train(tree, tmp_path, name):
    for channels_last in (True, False):
        [result] = office31.main([f"--data_root={tree}", *small_run(name, 32), f"--channels_last={channels_last}",
                                  f"--out_dir={tmp_path / str(channels_last)}"])
        assert result["config"]["channels_last"] == channels_last and math.isfinite(result["epochs"][0]["loss"])


@pytest.mark.usefixtures("bf16_anywhere")
@pytest.mark.parametrize("name", ["swin_t", "convnext_tiny"])
def test_bf16_trains(tree, tmp_path, name):
    [result] = office31.main([f"--data_root={tree}", *small_run(name, 32), "--amp=bf16", f"--out_dir={tmp_path}"])
    assert result["precision"]["dtype"] == "bf16" and math.isfinite(result["epochs"][0]["loss"])
