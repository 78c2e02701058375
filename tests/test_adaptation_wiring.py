"""How the adaptation losses are wired into training: which images, layers, coefficients and weights they get.

Each test here fails on one plausible wiring mistake that the loss-by-loss tests in test_adaptation.py miss."""
import os

import pytest
import torch
from PIL import Image

from methods import parts
from networks import caffe_alexnet
import office31
from methods.bsp import BSP
from methods.dan import DAN
from methods.jan import JAN
from test_adaptation import build
from test_train import TINY

CLASSES = ["back_pack", "bike", "calculator"]


def uniform_tree(root, levels):
    """domains {name: grey level}: every image of a domain one flat grey, so a batch tells its domain by its mean."""
    for domain, level in levels.items():
        for name in CLASSES:
            folder = os.path.join(root, domain, name)
            os.makedirs(folder)
            for i in range(3):
                Image.new("RGB", (40, 40), (level + i, level, level)).save(os.path.join(folder, f"{i}.png"))
    return str(root)


def test_the_second_half_of_every_adapting_batch_is_the_targets(tmp_path, monkeypatch):
    root = uniform_tree(tmp_path / "office31", {"amazon": 20, "webcam": 235, "dslr": 128})  # source dark, target light
    seen = []
    real = office31.make_adaptation

    def spy(c, net, new_layer, num_classes, device):  # what the network receives at every training step
        net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()) if module.training else None)
        return real(c, net, new_layer, num_classes, device)
    monkeypatch.setattr(office31, "make_adaptation", spy)
    office31.main([f"--data_root={root}", *TINY, "--epochs=1", "--method=coral", "--eval_every=0",
                   f"--out_dir={tmp_path / 'out'}"])
    assert len(seen) == 4
    for joint in seen:  # normalised pixels: grey 20 is below -1.5 in every channel, grey 235 above +1.5
        source, target = joint[:8], joint[8:]
        assert len(target) == 8 and source.mean(dim=(1, 2, 3)).max() < -1.5 and target.mean(dim=(1, 2, 3)).min() > 1.5


def test_the_reversed_gradient_follows_the_ramp_of_the_runs_progress(tmp_path, monkeypatch, tree):
    """Through fine_tune: at step k of n the coefficient is trade_off * (2 / (1 + exp(-10 k / n)) - 1)."""
    coefficients = []
    real = parts.ReverseGradient.apply

    def spy(x, coefficient):
        coefficients.append(coefficient)
        return real(x, coefficient)
    monkeypatch.setattr(parts.ReverseGradient, "apply", spy)
    office31.main([f"--data_root={tree}", *TINY, "--epochs=2", "--iters_per_epoch=2", "--method=dann",
                   "--trade_off=0.5", "--eval_every=0", f"--out_dir={tmp_path}"])
    assert coefficients[0] == 0  # p = 0: no reversed gradient at the start
    assert coefficients[2] == pytest.approx(0.5 * 0.98661, abs=1e-5)  # p = 0.5: the paper's 0.9866
    assert coefficients[3] == pytest.approx(0.5 * 0.99889, abs=1e-5)  # p = 0.75: close to trade_off
    assert coefficients == [0.5 * parts.ramp(k / 4) for k in range(4)]


class Fixed(torch.nn.Module):
    """A discriminator that says the same whatever it sees."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


def test_cdan_e_weights_a_confident_prediction_more_than_an_uncertain_one():
    """Two source images, one predicted with confidence and one not: the loss grows more when the confident one is
    misjudged by the discriminator (CDAN+E's w = 1 + exp(-H) favours confident predictions)."""
    logits = torch.tensor([[8.0, -8.0, -8.0], [0.1, 0.0, -0.1], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    features = {"bottleneck": torch.randn(4, 5)}
    method = build("cdan", 5, 3, 1.0, True, features)
    losses = {}
    for misjudged in (0, 1):  # the discriminator calls this source image "target" (logit -4), the other rightly
        domain_logits = torch.tensor([[4.0], [4.0], [-4.0], [-4.0]])
        domain_logits[misjudged] = -4.0
        method.discriminator = Fixed(domain_logits)
        losses[misjudged] = method(logits, 0.5).item()
    assert losses[0] > losses[1]  # misjudging the confident image costs more


def test_dan_aligns_fc6_fc7_and_the_logits_on_alexnet_and_the_bottleneck_and_logits_on_resnet(monkeypatch):
    calls = []
    real = DAN.multi_kernel_mmd
    monkeypatch.setattr(DAN, "multi_kernel_mmd", staticmethod(lambda s, t: calls.append(torch.cat([s, t])) or real(s, t)))
    for name, size, expected in [("alexnet", 64, ("fc6", "fc7", "logits")), ("resnet18", 32, ("bottleneck", "logits"))]:
        c = office31.with_method(dict(office31.FLAGS, model=name), "dan")
        net, new_layer = office31.build_model(name, 3, "none", c["bottleneck"])
        module, _ = office31.make_adaptation(c, net, new_layer(net), 3, torch.device("cpu"))
        outputs = {}
        layers = {"fc6": net.classifier[2], "fc7": net.classifier[5]} if name == "alexnet" else \
            {"bottleneck": net.fc[2]}  # after their ReLU
        for layer_name, layer in layers.items():
            layer.register_forward_hook(lambda m, i, out, n=layer_name: outputs.__setitem__(n, out.flatten(1)))
        net.eval()  # no dropout: the hooks and the method see the same tensors
        calls.clear()
        logits = net(torch.randn(4, 3, size, size))
        module(logits, 0.5)
        outputs["logits"] = logits
        assert len(calls) == len(expected), (name, len(calls))
        for aligned, layer_name in zip(calls, expected):
            assert torch.equal(aligned, outputs[layer_name].float()), (name, layer_name)


def test_jan_aligns_the_last_tapped_layer_jointly_with_the_softmax_and_its_gradient_reaches_the_logits():
    g = torch.Generator().manual_seed(1)
    fc7, bottleneck, logits = (torch.randn(8, n, generator=g) for n in (7, 6, 3))
    x = logits.clone().requires_grad_()
    build("jan", 6, 3, 1.0, False, {"fc7": fc7, "bottleneck": bottleneck})(x, 0.5).backward()
    y = logits.clone().requires_grad_()
    p = torch.softmax(y, 1)
    expected = JAN.joint_mmd(bottleneck[:4], bottleneck[4:], p[:4], p[4:])
    expected.backward()
    assert y.grad.abs().sum() > 0 and torch.allclose(x.grad, y.grad, atol=1e-7)


@pytest.mark.parametrize("method", ["ddc", "dan", "coral", "dann", "cdan", "bsp", "jan", "mcc", "mdd", "afn"])
def test_doubling_trade_off_doubles_the_term_or_the_reversed_gradient(method):
    g = torch.Generator().manual_seed(0)
    feature = torch.randn(8, 6, generator=g)
    logits = torch.randn(8, 3, generator=g)
    terms, gradients = [], []
    for trade_off in (1.0, 2.0):
        torch.manual_seed(0)  # the same discriminator for both
        x = feature.clone().requires_grad_()
        module = build(method, 6, 3, trade_off, False, {"bottleneck": x}).eval()  # eval: no dropout
        term = module(logits.clone().requires_grad_(), 0.5)  # (Deep CORAL reads the logits alone)
        term.backward()
        terms.append(term.item())
        gradients.append(x.grad)
    if method == "bsp":  # CDAN's reversed gradient doubles; the spectral penalty's own gradient stays as it is
        x = feature.clone().requires_grad_()
        (BSP.weight * BSP.batch_spectral_penalty(x[:4], x[4:])).backward()
        assert torch.allclose(gradients[1] - x.grad, 2 * (gradients[0] - x.grad), atol=1e-6)
        assert (gradients[0] - x.grad).abs().sum() > 0
    elif method in ("dann", "cdan", "mdd"):  # the adversary's loss is the same; what reaches the features doubles
        assert terms[1] == pytest.approx(terms[0])
        assert torch.allclose(gradients[1], 2 * gradients[0]) and gradients[0].abs().sum() > 0
    else:
        assert terms[1] == pytest.approx(2 * terms[0]) and terms[0] > 0


def test_each_caffe_weights_name_builds_its_own_lrn_order(monkeypatch):
    """bvlc_alexnet: ReLU, LRN, pool; CaffeNet (bvlc_reference_caffenet): ReLU, pool, LRN."""
    shapes = caffe_alexnet.expected_shapes()
    monkeypatch.setattr(caffe_alexnet, "converted_weights",
                        lambda weights: {k: torch.zeros(s) for k, s in shapes.items()})  # no caffemodel needed
    orders = {}
    for weights in ("bvlc_alexnet", "bvlc_reference_caffenet"):
        features = caffe_alexnet.build_caffe_alexnet(5, weights).features
        orders[weights] = [name for name, _ in features.named_children()][:8]
    assert orders["bvlc_alexnet"] == ["conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2"]
    assert orders["bvlc_reference_caffenet"] == ["conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2",
                                                 "norm2"]
