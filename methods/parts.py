"""The pieces several methods share: the kernels and MMD of DAN and JAN, the entropy of a prediction, DANN's gradient
reversal, ramp and domain discriminator (with its loss), and CDAN's multilinear map.

    f = ReverseGradient.apply(features, trade_off * ramp(progress))     # identity forward, -coefficient x gradient back
    loss = domain_loss(discriminator(256)(f))                            # the first half of the rows: source
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def squared_distances(x):
    """||a - b||^2 for every pair of rows, as ||a||^2 + ||b||^2 - 2 a.b: smooth at a = b, where a distance is not."""
    norms = x.pow(2).sum(1)
    return (norms[:, None] + norms[None, :] - 2 * x @ x.T).clamp(min=0)


def gaussian_kernels(x, scales=(0.25, 0.5, 1.0, 2.0, 4.0)):
    """DAN's multi-kernel on the rows of x: sum_u exp(-||a - b||^2 / (scale_u * sigma^2)), the scales 2^-2 ... 2^2,
    where sigma^2 is the mean squared distance between distinct rows: the sum over all pairs divided by N^2 - N, as
    the PyTorch MK-MMD most DAN and JAN code uses computes it (its `guassian_kernel`). The Transfer-Learning-Library
    divides by N^2, the zero diagonal counted, so its sigma^2 is (N - 1)/N of this one; its scales are the same."""
    squared = squared_distances(x)
    n = len(x)
    sigma2 = squared.sum().detach() / (n * n - n)  # a bandwidth, not something to learn through
    return sum(torch.exp(-squared / (scale * sigma2 + 1e-12)) for scale in scales)


def mmd(kernel, k):
    """The (biased) MMD^2 estimate over all pairs of a kernel matrix whose first k rows are the source:
    mean K(s, s') + mean K(t, t') - 2 mean K(s, t)."""
    return kernel[:k, :k].mean() + kernel[k:, k:].mean() - 2 * kernel[:k, k:].mean()


def entropy(probabilities):
    """-sum_k p_k log p_k of each row (log(p + 1e-5), as CDAN's and MCC's code, so that p = 0 stays finite)."""
    return -(probabilities * torch.log(probabilities + 1e-5)).sum(1)


class ReverseGradient(torch.autograd.Function):
    """The gradient reversal layer of DANN (Ganin et al., JMLR 2016): the identity going forward, the gradient
    times -coefficient going back."""

    @staticmethod
    def forward(ctx, x, coefficient):
        ctx.coefficient = coefficient
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coefficient * grad, None


def ramp(progress):
    """DANN's schedule for the reversed gradient's weight: 2 / (1 + exp(-10 p)) - 1, from 0 at p = 0 to ~1."""
    return 2 / (1 + math.exp(-10 * progress)) - 1


def discriminator(in_features):
    """The domain discriminator of DANN, CDAN and BSP: two hidden layers of 1024 with ReLU and dropout 0.5, one logit
    (source or target)."""
    return nn.Sequential(nn.Linear(in_features, 1024), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(1024, 1024), nn.ReLU(), nn.Dropout(0.5), nn.Linear(1024, 1))


def domain_loss(domain_logits, weights=None):
    """Binary cross-entropy of the discriminator: the first half of the batch is source (1), the rest target (0).
    weights: one per image (CDAN+E), normalised to sum to 1 within each domain; None: the plain mean."""
    half = len(domain_logits) // 2
    labels = torch.cat([torch.ones(half), torch.zeros(len(domain_logits) - half)]).to(domain_logits.device)
    losses = F.binary_cross_entropy_with_logits(domain_logits.squeeze(1).float(), labels, reduction="none")
    if weights is None:
        return losses.mean()
    weights = torch.cat([weights[:half] / weights[:half].sum(), weights[half:] / weights[half:].sum()])
    return (weights * losses).sum() / weights.sum()


class MultilinearMap(nn.Module):
    """CDAN (Long et al., "Conditional Adversarial Domain Adaptation", NeurIPS 2018): the discriminator sees
    f ⊗ g, the outer product of the features f and the class probabilities g, flattened. When that has more
    than 4,096 entries (the limit of the paper's code), the randomized map (R_f f) ⊙ (R_g g) / sqrt(size) with
    fixed Gaussian R_f, R_g of `size` (1,024) outputs stands in for it."""

    def __init__(self, feature_size, num_classes, size=1024):
        super().__init__()
        self.randomized = feature_size * num_classes > 4096
        self.out_features = size if self.randomized else feature_size * num_classes
        if self.randomized:  # buffers: fixed, never trained, saved with the state and moved with .to()
            self.register_buffer("r_f", torch.randn(feature_size, size))
            self.register_buffer("r_g", torch.randn(num_classes, size))

    def forward(self, f, g):
        if self.randomized:
            return (f @ self.r_f.to(f.dtype)) * (g @ self.r_g.to(g.dtype)) / math.sqrt(self.out_features)
        return torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).flatten(1)
