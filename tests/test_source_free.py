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


def test_information_maximisation_is_mean_entropy_minus_entropy_of_the_mean_with_its_gradient():
    for name, logits in batches().items():
        value, grad = value_and_gradient(SHOT.information_maximisation, logits)
        expected, expected_grad = value_and_gradient(information_maximisation64, logits.double())
        assert value.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6), name
        assert torch.allclose(grad, expected_grad, rtol=1e-4, atol=1e-7), (name, grad, expected_grad)
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


def test_pseudo_labels_are_the_rounds_given():
    """One round and two differ on these data: the second round labels again from the first's centroids."""
    g = torch.Generator().manual_seed(11)
    logits, features = torch.randn(30, 4, generator=g), torch.randn(30, 5, generator=g)
    one, two = SHOT.pseudo_labels(logits, features, rounds=1), SHOT.pseudo_labels(logits, features)
    assert one.tolist() == obtain_label(logits, features, rounds=1).tolist()
    assert two.tolist() == obtain_label(logits, features, rounds=2).tolist() and one.tolist() != two.tolist()


def test_tents_mean_entropy_with_its_gradient():
    for name, logits in batches().items():
        value, grad = value_and_gradient(TENT.mean_entropy, logits)
        expected, expected_grad = value_and_gradient(mean_entropy64, logits.double())
        assert value.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6), name
        assert torch.allclose(grad, expected_grad, rtol=1e-4, atol=1e-7), (name, grad, expected_grad)
    assert mean_entropy64(batches()["uniform"].double()).item() == pytest.approx(np.log(5))  # (the reference)
