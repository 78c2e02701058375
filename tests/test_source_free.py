"""SHOT and TENT, their mathematics and their parameters: each loss against its paper's equation computed here in
float64 (value and gradient), SHOT's pseudo-labels against a numpy re-implementation of its code's obtain_label,
what SHOT's target stage trains and at which learning rates, what TENT changes, and SHOT's new layers."""
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import office31
import resnet
from data_loader import load_domain
from methods.method import tap
from methods.shot import SHOT
from methods.tent import TENT
from test_train import TINY

EPSILON = 1e-5  # SHOT's epsilon inside its entropies' logarithm


@pytest.fixture(autouse=True)
def one_thread():
    """A ResNet-18 on 32-pixel crops in batches of 8: one thread is several times faster than two or more contending
    for a busy machine's cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batches(classes=5):
    """Logits of a few kinds of batch, {name: fp32 tensor}: random, confident and diverse, confident on one class
    alone, uniform (every class equally likely), and a single image."""
    g = torch.Generator().manual_seed(0)
    confident = torch.full((2 * classes, classes), -8.0)
    confident[torch.arange(2 * classes), torch.arange(2 * classes) % classes] = 8.0
    one_class = torch.randn(6, classes, generator=g)
    one_class[:, 2] += 30
    return {"random": 3 * torch.randn(8, classes, generator=g), "confident": confident, "one_class": one_class,
            "uniform": torch.zeros(7, classes), "single": torch.randn(1, classes, generator=g)}


def softmax64(z):
    """Row softmax in float64, written out."""
    e = torch.exp(z - z.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def shot_entropy(p):
    """SHOT's entropy of each row of probabilities: -sum_k p_k log(p_k + epsilon)."""
    return -(p * torch.log(p + EPSILON)).sum(dim=-1)


def information_maximisation64(z):
    """The paper's L_ent + L_div in float64: mean_i H(p_i) - H(mean_i p_i)."""
    p = softmax64(z)
    return shot_entropy(p).mean() - shot_entropy(p.mean(0))


def cross_entropy64(z, labels):
    """mean_i -log p_i[y_i] in float64."""
    return -torch.log(softmax64(z)[torch.arange(len(z)), labels]).mean()


def mean_entropy64(z):
    """TENT's loss in float64: mean_i -sum_k p_ik log p_ik."""
    p = softmax64(z)
    return -(p * torch.log(p)).sum(1).mean()


def value_and_gradient(loss, logits, **kwargs):
    """(the loss, its gradient w.r.t. the logits) in float64, computed in the logits' own precision."""
    z = logits.clone().requires_grad_(True)
    value = loss(z, **kwargs)
    value.backward()
    return value.detach().double(), z.grad.double()


def assert_equal_on_every_batch(loss, reference):
    """loss (the product's) and reference (the test's float64 formula) agree in value and gradient on batches()."""
    for name, logits in batches().items():
        value, grad = value_and_gradient(loss, logits)
        expected, expected_grad = value_and_gradient(reference, logits.double())
        assert value.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6), name
        assert torch.allclose(grad, expected_grad, rtol=1e-4, atol=1e-7), (name, grad, expected_grad)


def test_information_maximisation_is_mean_entropy_minus_entropy_of_the_mean_with_its_gradient():
    assert_equal_on_every_batch(SHOT.information_maximisation, information_maximisation64)
    # the paper's extremes: confident and diverse, about -log K (below zero by the diversity); one class, about 0
    assert information_maximisation64(batches()["confident"].double()).item() == pytest.approx(-np.log(5), abs=1e-3)
    assert abs(information_maximisation64(batches()["one_class"].double()).item()) < 1e-3


def test_information_maximisations_gradient_matches_finite_differences():
    """A check of the float64 reference itself, and so of the product's gradient without autograd's help."""
    logits = batches()["random"].double()
    _, grad = value_and_gradient(SHOT.information_maximisation, logits.float())
    h = 1e-6
    for i, k in [(0, 0), (3, 2), (7, 4)]:
        up, down = logits.clone(), logits.clone()
        up[i, k] += h
        down[i, k] -= h
        numeric = (information_maximisation64(up) - information_maximisation64(down)) / (2 * h)
        assert grad[i, k].item() == pytest.approx(numeric.item(), rel=1e-3, abs=1e-6)


def test_pseudo_label_loss_is_the_cross_entropy_with_its_gradient():
    g = torch.Generator().manual_seed(1)
    for name, logits in batches().items():
        labels = torch.randint(0, 5, (len(logits),), generator=g)
        # (the labels by name, as SHOT.step gives them: in_fp32 casts every tensor given by position)
        value, grad = value_and_gradient(SHOT.pseudo_label_loss, logits, pseudo=labels)
        assert value.item() == pytest.approx(cross_entropy64(logits.double(), labels).item(), rel=1e-5, abs=1e-6)
        # d/dz_i of mean_i -log p_i[y_i] = (p_i - onehot(y_i)) / n
        expected = (softmax64(logits.double()) - F.one_hot(labels, 5).double()) / len(logits)
        assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-7), name


def test_shots_step_weights_the_pseudo_labels_by_0_3_and_information_maximisation_by_1():
    """One step of SHOT.step on a linear network: the terms it returns and the gradient it applies are
    0.3 x the cross-entropy and 1.0 x the information maximisation (its code's cls_par and ent_par)."""
    g = torch.Generator().manual_seed(2)
    net = nn.Linear(4, 5)
    x, pseudo = torch.randn(9, 4, generator=g), torch.randint(0, 5, (9,), generator=g)
    z = (x.double() @ net.weight.detach().double().T + net.bias.detach().double()).requires_grad_(True)
    (0.3 * cross_entropy64(z, pseudo) + 1.0 * information_maximisation64(z)).backward()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)  # the gradient is kept, the weights stay
    run = types.SimpleNamespace(net=net, amp=False, memory_format=torch.contiguous_format)
    terms = SHOT.step(run, optimizer, x, pseudo)
    logits = z.detach()
    assert terms["pseudo_label"].item() == pytest.approx(0.3 * cross_entropy64(logits, pseudo).item(), rel=1e-5)
    assert terms["information_maximisation"].item() == pytest.approx(information_maximisation64(logits).item(),
                                                                     rel=1e-5, abs=1e-6)
    assert torch.allclose(net.weight.grad.double(), z.grad.T @ x.double(), rtol=1e-4, atol=1e-7)
    assert torch.allclose(net.bias.grad.double(), z.grad.sum(0), rtol=1e-4, atol=1e-7)


def obtain_label(logits, features, rounds=2, every_class=False):
    """SHOT's obtain_label in numpy (cosine distance, threshold 0): the features with a ones column appended and
    scaled to unit length; aff the softmax; then each round: centroids aff^T f / (1e-8 + aff.sum(0)), the labelset
    the classes some image is predicted as, each image the labelset class of its nearest centroid in cosine distance,
    aff its one-hot. every_class: every class in the labelset (not SHOT's: for the tests to show that the data tell
    the difference)."""
    logits, features = np.asarray(logits, dtype=np.float64), np.asarray(features, dtype=np.float64)
    f = np.concatenate([features, np.ones((len(features), 1))], axis=1)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    aff = e / e.sum(axis=1, keepdims=True)
    classes = aff.shape[1]
    predict = aff.argmax(axis=1)
    for _ in range(rounds):
        initc = aff.T @ f / (1e-8 + aff.sum(axis=0)[:, None])
        labelset = np.arange(classes) if every_class else np.where(np.eye(classes)[predict].sum(0) > 0)[0]
        chosen = initc[labelset]
        cosine = f @ chosen.T / (np.linalg.norm(f, axis=1)[:, None] * np.linalg.norm(chosen, axis=1)[None, :])
        predict = labelset[(1 - cosine).argmin(axis=1)]
        aff = np.eye(classes)[predict]
    return predict


def test_pseudo_labels_match_shots_obtain_label_where_a_class_is_never_predicted():
    """Random features and logits, the last class never the softmax's choice: it is left out of the labelset, so no
    image is labelled with it, though its centroid is the nearest for some (the labelset is what keeps it out)."""
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        logits, features = torch.randn(40, 5, generator=g), torch.randn(40, 6, generator=g)
        logits[:, 4] -= 10
        found = SHOT.pseudo_labels(logits, features)
        assert found.tolist() == obtain_label(logits, features).tolist(), seed
        assert 4 not in found.tolist()
        assert 4 in obtain_label(logits, features, rounds=1, every_class=True).tolist(), seed  # (the data matter)
        assert found.tolist() != logits.argmax(1).tolist()  # (the rounds moved some labels)


def test_pseudo_labels_recover_the_clusters_of_the_features():
    """Features in three tight clusters, the softmax right for two images in three: the pseudo-labels are the
    clusters, every image's, after the rounds."""
    g = torch.Generator().manual_seed(3)
    truth = torch.arange(60) % 3
    centres = 5 * torch.eye(3, 8)
    features = centres[truth] + 0.3 * torch.randn(60, 8, generator=g)
    logits = 2 * F.one_hot(truth, 3).float() + 0.2 * torch.randn(60, 3, generator=g)
    wrong = torch.arange(60) % 3 == torch.arange(60) // 3 % 3  # a third of the images predicted as another class
    logits[wrong] = logits[wrong].roll(1, dims=1)
    assert (logits.argmax(1) != truth).sum() == 20
    found = SHOT.pseudo_labels(logits, features)
    assert found.tolist() == truth.tolist()
    assert found.tolist() == obtain_label(logits, features).tolist()


def test_pseudo_labels_drop_a_class_that_the_first_round_left_empty():
    """Every class predicted by the softmax, but none labelled so by the first round: the second round's labelset
    leaves it out (its centroid would be 0, its cosine distance not a number), as obtain_label's labelset of the
    round's predictions does. (SHOT's released code keeps the softmax's labelset in the second round, where that
    class's empty centroid gives NaN distances.)"""
    g = torch.Generator().manual_seed(7)
    logits, features = torch.randn(12, 5, generator=g), torch.randn(12, 6, generator=g)
    emptied = set(logits.argmax(1).tolist()) - set(obtain_label(logits, features, rounds=1).tolist())
    assert emptied == {1}  # (the case this test is about)
    found = SHOT.pseudo_labels(logits, features)
    assert found.tolist() == obtain_label(logits, features).tolist() and 1 not in found.tolist()
    assert len(set(found.tolist())) == 4

def test_pseudo_labels_are_the_rounds_given():
    """One round and two differ on these data: the second round labels again from the first's centroids."""
    g = torch.Generator().manual_seed(11)
    logits, features = torch.randn(30, 4, generator=g), torch.randn(30, 5, generator=g)
    one, two = SHOT.pseudo_labels(logits, features, rounds=1), SHOT.pseudo_labels(logits, features)
    assert one.tolist() == obtain_label(logits, features, rounds=1).tolist()
    assert two.tolist() == obtain_label(logits, features, rounds=2).tolist() and one.tolist() != two.tolist()


def test_tents_mean_entropy_with_its_gradient():
    assert_equal_on_every_batch(TENT.mean_entropy, mean_entropy64)
    assert mean_entropy64(batches()["uniform"].double()).item() == pytest.approx(np.log(5))  # (the reference)


def started_run(tree, bottleneck=16):
    """(c, run, target) as office31.set_up makes them for a run that starts from SHOT's source model: a ResNet-18
    (no weights) with SHOT's new layers, the webcam of the tests' tree (15 images) as target, in fp32."""
    net, new_layer = office31.build_model("resnet18", 3, "none", bottleneck, 0, "shot")
    run = types.SimpleNamespace(net=net, head=new_layer(net), amp=False, memory_format=torch.contiguous_format,
                                pixels="imagenet", generators=[torch.Generator().manual_seed(s) for s in (0, 1)])
    c = {"crop_size": 32, "eval_batch_size": 8}
    return c, run, load_domain(tree, "webcam", 40, True, 0, "cpu")


def test_shots_target_stage_keeps_the_classifier_and_trains_the_rest_at_its_codes_rates(tree, monkeypatch):
    """Through SHOT.adapt (2 epochs of batches of 8 here: 4 steps): the weight-normalised classifier's g, v and bias
    come out bit-identical while the backbone and the bottleneck move; the backbone at lr 0.001 and the bottleneck at
    0.01, each step's lr annealed as lr0 (1 + 10 k / n)^-0.75 (k counted from 1), weight decay 1e-3, Nesterov
    momentum 0.9."""
    monkeypatch.setattr(SHOT, "epochs", 2)
    monkeypatch.setattr(SHOT, "batch_size", 8)
    c, run, target = started_run(tree)
    before = {name: p.detach().clone() for name, p in run.net.named_parameters()}
    optimizers, lrs = [], []
    real_optimizer, real_step = SHOT.optimizer, SHOT.step

    def optimizer(net, head):
        optimizers.append(real_optimizer(net, head))
        return optimizers[-1]

    def step(run, optimizer, x, pseudo):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        return real_step(run, optimizer, x, pseudo)
    monkeypatch.setattr(SHOT, "optimizer", optimizer)
    monkeypatch.setattr(SHOT, "step", step)
    history, outputs = SHOT.adapt(c, run, target, office31.evaluate, None)
    assert outputs is None and len(history) == 2

    classifier = ["fc.3.parametrizations.weight.original0", "fc.3.parametrizations.weight.original1", "fc.3.bias"]
    after = dict(run.net.named_parameters())
    assert sorted(name for name in after if name.startswith("fc.3.")) == sorted(classifier)
    for name in classifier:
        assert torch.equal(after[name], before[name]), name
    for name in ("conv1.weight", "layer4.1.bn2.weight", "fc.0.weight", "fc.0.bias", "fc.1.weight", "fc.1.bias"):
        assert not torch.equal(after[name], before[name]), name

    [optimizer] = optimizers
    backbone, bottleneck = optimizer.param_groups
    names = {id(p): name for name, p in run.net.named_parameters()}
    assert sorted(names[id(p)] for p in bottleneck["params"]) == ["fc.0.bias", "fc.0.weight", "fc.1.bias",
                                                                  "fc.1.weight"]
    assert sorted(names[id(p)] for p in backbone["params"]) == sorted(n for n in names.values()
                                                                      if not n.startswith("fc."))
    assert (backbone["initial_lr"], bottleneck["initial_lr"]) == (pytest.approx(0.001), pytest.approx(0.01))
    for group in (backbone, bottleneck):
        assert (group["weight_decay"], group["momentum"], group["nesterov"]) == (1e-3, 0.9, True)
    steps = 2 * 2  # 15 images in batches of 8: 8 and 7
    assert len(lrs) == steps
    for k, (backbone_lr, bottleneck_lr) in enumerate(lrs, 1):
        assert backbone_lr == pytest.approx(0.001 * (1 + 10 * k / steps) ** -0.75)
        assert bottleneck_lr == pytest.approx(0.01 * (1 + 10 * k / steps) ** -0.75)
    assert lrs[-1][1] == pytest.approx(0.01 * 11 ** -0.75)  # the last step's: 0.01 / 6.04


def test_tent_trains_the_batchnorm_scales_and_shifts_alone_with_batch_statistics(tree, monkeypatch):
    """Through TENT.adapt (batches of 4 here: 4 steps): every BatchNorm's weight and bias move, every other parameter
    and every remaining buffer stays bit-identical, the running statistics are dropped, and a BatchNorm normalises
    with its batch's own mean and (biased) variance."""
    monkeypatch.setattr(TENT, "batch_size", 4)
    c, run, target = started_run(tree)
    norms = {name for name, m in run.net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert "fc.1" in norms and "bn1" in norms  # (the bottleneck's BatchNorm1d and the stem's BatchNorm2d)
    params = {name: p.detach().clone() for name, p in run.net.named_parameters()}
    buffers = {name: b.clone() for name, b in run.net.named_buffers()}
    seen = []

    def record(module, inputs, out):  # (copies: the ReLU after bn1 works in place)
        seen.append((inputs[0].detach().clone(), out.detach().clone()))
    run.net.bn1.register_forward_hook(record)
    optimizers = []
    real_sgd = torch.optim.SGD.__init__

    def sgd(self, params, **kwargs):  # the optimiser TENT builds: its code's SGD (conf.py), the paper's rate
        optimizers.append(kwargs)
        real_sgd(self, params, **kwargs)
    monkeypatch.setattr(torch.optim.SGD, "__init__", sgd)
    history, online = TENT.adapt(c, run, target, office31.evaluate, None)
    assert online.total == 15 and len(history) == 1 and len(seen) == 4
    assert optimizers == [{"lr": 0.00025, "momentum": 0.9, "nesterov": True}]  # (no weight decay, no dampening)

    x, out = seen[0]  # the first batch, through bn1 as it was at the start
    mean, var = x.double().mean(dim=(0, 2, 3)), x.double().var(dim=(0, 2, 3), unbiased=False)
    expected = (x.double() - mean[:, None, None]) / torch.sqrt(var[:, None, None] + run.net.bn1.eps)
    expected = expected * params["bn1.weight"].double()[:, None, None] + params["bn1.bias"].double()[:, None, None]
    assert torch.allclose(out.double(), expected, atol=1e-4)

    trained = {name for name, p in run.net.named_parameters() if name.rpartition(".")[0] in norms}
    assert {name for name, p in run.net.named_parameters() if p.requires_grad} == trained  # (no other gradient)
    for name, p in run.net.named_parameters():
        if name in trained:
            assert not torch.equal(p, params[name]), name
        else:
            assert torch.equal(p, params[name]), name
    left = dict(run.net.named_buffers())
    assert set(left) == {name for name in buffers if not name.endswith(("running_mean", "running_var"))}
    for name, b in left.items():
        assert torch.equal(b, buffers[name]), name  # (num_batches_tracked: not counted on)
    for name, m in run.net.named_modules():
        if name in norms:
            assert m.running_mean is None and m.running_var is None and not m.track_running_stats, name


def test_tents_last_batch_of_one_image_joins_the_batch_before_it(tree, monkeypatch):
    """15 target images in batches of 7: the last image alone would give BatchNorm no batch statistics (Office-31's
    amazon, 2,817 images in batches of 64, ends so); it is predicted with the batch before it, every image once, in
    two steps."""
    monkeypatch.setattr(TENT, "batch_size", 7)
    c, run, target = started_run(tree)
    sizes = []
    run.net.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])))
    history, online = TENT.adapt(c, run, target, office31.evaluate, None)
    assert sizes == [7, 8] and online.total == 15 and len(online.logits) == 15
    assert sorted(online.labels.tolist()) == sorted(target.targets)


def test_shots_new_layers_have_no_relu_a_weight_normalised_classifier_and_still_tap():
    """shot_head on a ResNet-18's bottleneck: Linear, BatchNorm1d, Identity (where new_head has its ReLU), and a
    classifier whose weight is g v / ||v|| row by row; the tapped bottleneck (resnet.layers) is the BatchNorm's output,
    negative values kept, and is what the classifier reads."""
    torch.manual_seed(0)
    net, new_layer = office31.build_model("resnet18", 3, "none", 16, 0, "shot")
    head = new_layer(net)
    assert [type(m) for m in head[:3]] == [nn.Linear, nn.BatchNorm1d, nn.Identity]
    assert isinstance(head[3], nn.Linear) and not any(isinstance(m, nn.ReLU) for m in head.modules())
    plain, _ = office31.build_model("resnet18", 3, "none", 16)
    assert [type(m) for m in plain.fc] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]  # (what it replaces)
    classifier = head[3]
    assert parametrize.is_parametrized(classifier, "weight")
    g = classifier.parametrizations.weight.original0.detach().double()
    v = classifier.parametrizations.weight.original1.detach().double()
    assert g.shape == (3, 1) and v.shape == (3, 16)
    with torch.no_grad():
        classifier.parametrizations.weight.original0.mul_(torch.tensor([[2.0], [0.5], [3.0]]))  # g, apart from ||v||
    g = g * torch.tensor([[2.0], [0.5], [3.0]], dtype=torch.float64)
    expected = g * v / v.norm(dim=1, keepdim=True)
    assert torch.allclose(classifier.weight.double(), expected, atol=1e-6)

    features = tap(resnet.layers(net))
    read = []
    classifier.register_forward_pre_hook(lambda m, args: read.append(args[0].detach()))
    net.train()
    logits = net(torch.randn(6, 3, 32, 32))
    assert list(features) == ["bottleneck"] and features["bottleneck"].shape == (6, 16)
    assert torch.equal(features["bottleneck"], read[0]) and (features["bottleneck"] < 0).any()
    assert torch.allclose(logits, read[0] @ expected.float().T + classifier.bias, atol=1e-5)


def test_shot_sources_classification_loss_smooths_the_labels_by_0_1(tree, tmp_path, monkeypatch):
    """A shot_source run of one step: the loss it records is the cross-entropy against labels smoothed by 0.1,
    -sum_k ((1 - 0.1) [k = y] + 0.1 / K) log p_k, of the logits and labels of its one batch, not the plain one;
    and the network it trained and saved has SHOT's new layers."""
    batches, logits, losses = [], [], []
    real = office31.train_one_epoch

    def spy(model, optimizer, given, *args, **kwargs):
        batches.extend(given)
        hook = model.register_forward_hook(lambda m, inputs, out: logits.append(out.detach().double()))
        losses.append(real(model, optimizer, list(batches), *args, **kwargs)[0])
        hook.remove()
        return losses[-1], 0.0
    monkeypatch.setattr(office31, "train_one_epoch", spy)
    office31.main([f"--data_root={tree}", *TINY, "--epochs=1", "--iters_per_epoch=1", "--method=shot_source",
                   "--eval_every=0", "--validators=none", f"--out_dir={tmp_path / 'out'}"])
    [(_, y)], [z] = batches, logits[:1]
    p = softmax64(z)
    smoothed = 0.9 * F.one_hot(y, 3).double() + 0.1 / 3
    expected = -(smoothed * torch.log(p)).sum(1).mean().item()
    assert losses[0]["classification"] == pytest.approx(expected, rel=1e-5)
    assert abs(cross_entropy64(z, y).item() - expected) > 1e-3  # (the plain one is another number)
    [weights] = [f for f in (tmp_path / "out").iterdir() if f.suffix == ".pt"]
    saved = torch.load(weights, weights_only=True)
    assert "fc.3.parametrizations.weight.original0" in saved and "fc.3.weight" not in saved
