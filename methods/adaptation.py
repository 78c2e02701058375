"""The domain-adaptation losses, each next to its paper's formula, and the one object the training loop uses.

    features = tap(layers)      # {name: module} of the network -> {name: its output at the latest forward}
    method = Adaptation("dann", 256, num_classes=31, trade_off=1.0, entropy_conditioning=False, features=features)
    loss = method(model(torch.cat([source_x, target_x])), progress)   # or ddc, dan, coral, cdan, bsp, jan, ...

Every method sees one batch of source images followed by one batch of target images, pushed through the network
together, and returns the adaptation term that office31.py adds to the source classification loss. Target labels
never reach this file. The distances and regularisers (DDC, DAN, Deep CORAL, JAN, MCC, AFN) return trade_off x
their value; the adversarial methods (DANN, CDAN, MDD) return the loss of their adversary (a domain discriminator,
MDD's second classifier), whose gradient reaches the network reversed and scaled by trade_off x (2 / (1 +
exp(-10 p)) - 1), the DANN ramp over training progress p (MDD: 0.1 x that). BSP is CDAN's term plus a penalty on
the features' largest singular values.
"""
import contextlib
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("source_only", "ddc", "dan", "coral", "dann", "cdan", "bsp", "jan", "mcc", "mdd", "afn")
# Each method's constants, as the Transfer-Learning-Library's Office-31 script for it sets them (README)
BSP_WEIGHT = 2e-4  # the penalty's weight
JAN_BANDWIDTH = 2 * 0.92 ** 2  # 2 sigma^2 of JAN's Gaussian kernel on the predictions (JAN's own code: 1.68)
MCC_TEMPERATURE = 2.5
MDD_MARGIN = 4.0  # gamma on Office-31
MDD_REVERSAL = 0.1  # the largest reversed-gradient coefficient (the library's warm-start reversal rises to 0.1)
AFN_STEP, AFN_WEIGHT = 1.0, 0.05  # Delta r and lambda of SAFN
AFN_ENTROPY_WEIGHT = 0.1  # target entropy minimisation alongside SAFN


def in_fp32(loss):
    """Compute a loss with autocast off and its inputs in fp32: under bf16 autocast a matrix product is recast to
    bf16 whatever its inputs' dtype, and bf16's 8-bit mantissa rounds off the small differences these distances
    are made of (Deep CORAL on a nearly aligned pair: 6-9% off in value, 19% in gradient)."""
    @functools.wraps(loss)
    def fp32_loss(*tensors, **kwargs):
        with without_autocast(tensors[0]):
            return loss(*(x.float() for x in tensors), **kwargs)
    return fp32_loss


def without_autocast(x):
    """Autocast off on x's device (where autocast exists: not on the meta device that shape checks use)."""
    if torch.amp.is_autocast_available(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


@in_fp32
def linear_mmd(source, target):
    """DDC (Tzeng et al., "Deep Domain Confusion", 2014): MMD with a linear kernel, the squared distance between
    the source and target feature means: || mean(x_s) - mean(x_t) ||^2."""
    return (source.mean(0) - target.mean(0)).pow(2).sum()


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


@in_fp32
def multi_kernel_mmd(source, target):
    """DAN (Long et al., "Learning Transferable Features with Deep Adaptation Networks", ICML 2015): MMD with
    the sum of Gaussian kernels of gaussian_kernels."""
    return mmd(gaussian_kernels(torch.cat([source, target])), len(source))


@in_fp32
def joint_mmd(source, target, source_predictions, target_predictions):
    """JAN (Long et al., "Deep Transfer Learning with Joint Adaptation Networks", ICML 2017): MMD of the joint
    distribution of features and predictions, with the product kernel k(a, b) = k_f(a_f, b_f) x k_g(a_g, b_g):
    DAN's multi-kernel on the features, and one Gaussian exp(-||g - g'||^2 / JAN_BANDWIDTH) on the softmax
    predictions, through which the gradient flows too."""
    features = gaussian_kernels(torch.cat([source, target]))
    predictions = torch.exp(-squared_distances(torch.cat([source_predictions, target_predictions])) / JAN_BANDWIDTH)
    return mmd(features * predictions, len(source))


@in_fp32
def coral(source, target):
    """Deep CORAL (Sun & Saenko, ECCV 2016 workshops): the distance between the source and target feature
    covariances, || C_s - C_t ||_F^2 / (4 d^2), with C = (X^T X - (1^T X)^T (1^T X) / n) / (n - 1)."""
    def covariance(x):
        centred = x - x.mean(0, keepdim=True)
        return centred.T @ centred / (len(x) - 1)

    d = source.shape[1]
    return (covariance(source) - covariance(target)).pow(2).sum() / (4 * d * d)


@in_fp32
def batch_spectral_penalty(source, target, k=1):
    """BSP (Chen et al., "Transferability vs. Discriminability: Batch Spectral Penalization", ICML 2019): the k
    largest squared singular values of the source and of the target feature matrix (a batch, one row an image),
    sum_i sigma_i(F_s)^2 + sigma_i(F_t)^2, with k = 1 as in the paper. Penalising the dominant directions lets
    the others, which adversarial alignment shrinks, carry more of the features."""
    return sum(torch.linalg.svdvals(x)[:k].pow(2).sum() for x in (source, target))


def entropy(probabilities):
    """-sum_k p_k log p_k of each row (log(p + 1e-5), as CDAN's and MCC's code, so that p = 0 stays finite)."""
    return -(probabilities * torch.log(probabilities + 1e-5)).sum(1)


@in_fp32
def class_confusion(logits, temperature=MCC_TEMPERATURE):
    """MCC (Jin et al., "Minimum Class Confusion for Versatile Domain Adaptation", ECCV 2020), on a batch of target
    logits Z (B images x K classes): the predictions Y = softmax(Z / T); each image weighted by
    W_i = B (1 + exp(-H(Y_i))) / sum_i' (1 + exp(-H(Y_i'))), H the entropy, so confident predictions count more
    (the weights take no gradient); the class confusion C = Y^T W Y, each row normalised to sum 1; the loss is its
    off-diagonal mass over K: sum_j sum_j'!=j C_jj' / K."""
    y = F.softmax(logits / temperature, dim=1)
    w = (1 + torch.exp(-entropy(y))).detach()
    w = len(y) * w / w.sum()
    confusion = (y * w[:, None]).T @ y
    confusion = confusion / confusion.sum(1, keepdim=True)
    return (confusion.sum() - confusion.trace()) / y.shape[1]


@in_fp32
def margin_disparity(source_logits, source_adversary, target_logits, target_adversary, margin=MDD_MARGIN):
    """MDD (Zhang et al., "Bridging Theory and Algorithm for Domain Adaptation", ICML 2019): the loss of the
    adversarial classifier f', -D_gamma = gamma E_s CE(f'(x), h_f(x)) - E_t log(1 - softmax(f'(x))[h_f(x)]), where
    h_f is the main classifier's predicted class (an argmax: no gradient reaches the main classifier). f' learns to
    agree with h_f on the source and to disagree on the target; the features, behind gradient reversal, make
    that disagreement impossible. The log is shifted as the Transfer-Learning-Library's shift_log does,
    log(min(1 - p + 1e-6, 1)), so that a certain f' (p = 1) stays finite."""
    source = F.cross_entropy(source_adversary, source_logits.argmax(1))
    agreement = F.softmax(target_adversary, dim=1).gather(1, target_logits.argmax(1, keepdim=True)).squeeze(1)
    return margin * source - torch.log((1 - agreement + 1e-6).clamp(max=1)).mean()


@in_fp32
def feature_norm_step(source, target, step=AFN_STEP):
    """AFN's stepwise adaptive feature norm, SAFN (Xu et al., "Larger Norm More Transferable", ICCV 2019): for the
    source and the target batch, mean_i (||f_i|| - (||f_i||' + Delta r))^2, with ||f_i||' the norm at this step
    held fixed: each step pulls every feature's norm Delta r beyond where it is (the value is always 2 Delta r^2;
    the gradient is what moves)."""
    return sum((x.norm(dim=1) - (x.norm(dim=1).detach() + step)).pow(2).mean() for x in (source, target))


@in_fp32
def mean_entropy(logits):
    """The mean entropy of the softmax predictions (AFN's entropy minimisation on the target)."""
    return entropy(F.softmax(logits, dim=1)).mean()


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




def tap(layers):
    """Record each layer's output at every forward pass: {name: module} -> {name: latest output, flattened}."""
    outputs = {}
    for name, module in layers.items():
        module.register_forward_hook(lambda m, inputs, out, name=name: outputs.__setitem__(name, out.flatten(1)))
    return outputs


class Adaptation(nn.Module):
    """The adaptation term of one method, as a module: DANN, CDAN and BSP hold their discriminator, MDD its
    adversarial classifier (new layers, trained at lr_mult x with the rest). features: the tapped layers {name: rows
    of [source; target]} in network order, the last one feeding the classifier, filled by the network's forward
    pass (see tap and network). Called with the logits of the same joint batch and the training progress p; returns
    the term to add to the source loss. It runs in fp32 under bf16 autocast, as the losses do: the discriminators,
    CDAN's map and MDD's classifier are new layers small next to the backbone, and the term is made of their
    outputs' small differences."""

    def __init__(self, method, feature_size, num_classes, trade_off, entropy_conditioning, features):
        super().__init__()
        self.method, self.trade_off, self.entropy_conditioning = method, trade_off, entropy_conditioning
        self.features = features
        if method == "dann":
            self.discriminator = discriminator(feature_size)
        if method in ("cdan", "bsp"):  # BSP: on top of CDAN, as in the paper's BSP+CDAN
            self.map = MultilinearMap(feature_size, num_classes)
            self.discriminator = discriminator(self.map.out_features)
        if method == "mdd":  # f' is of the main classifier's kind, as the theory asks: here one linear layer
            self.adversary = nn.Linear(feature_size, num_classes)
        # AFN's code passes each domain through the network on its own (the others, one joint batch): BatchNorm
        # then normalises each domain with its own statistics, which is what AFN's feature norms are measured on
        self.separate_domains = method == "afn"

    def network(self, model, source, target, memory_format=torch.contiguous_format):
        """The network's logits for [source; target], with the tapped features of both in that order: one forward
        pass of the joint batch, or for AFN one per domain (its BatchNorm running statistics then take the source
        batch's, then the target batch's)."""
        if not self.separate_domains:
            return model(torch.cat([source, target]).contiguous(memory_format=memory_format))
        source_logits = model(source.contiguous(memory_format=memory_format))
        source_features = dict(self.features)
        target_logits = model(target.contiguous(memory_format=memory_format))
        self.features.update({name: torch.cat([source_features[name], x]) for name, x in self.features.items()})
        return torch.cat([source_logits, target_logits])

    def forward(self, logits, progress):
        with without_autocast(logits):
            return self.term({name: x.float() for name, x in self.features.items()}, logits.float(), progress)

    def term(self, features, logits, progress):
        half, feature = len(logits) // 2, list(features.values())[-1]
        if self.method == "ddc":  # the layer that feeds the classifier: the bottleneck, or AlexNet's fc7
            return self.trade_off * linear_mmd(feature[:half], feature[half:])
        if self.method == "dan":  # every tapped layer and the logits: fc6, fc7, fc8 of AlexNet; bottleneck, fc
            return self.trade_off * sum(multi_kernel_mmd(x[:half], x[half:]) for x in [*features.values(), logits])
        if self.method == "coral":  # Deep CORAL aligns the last layer (fc8 in the paper): the logits
            return self.trade_off * coral(logits[:half], logits[half:])
        if self.method == "jan":  # the features that feed the classifier, jointly with the predictions
            predictions = F.softmax(logits, dim=1)
            return self.trade_off * joint_mmd(feature[:half], feature[half:], predictions[:half], predictions[half:])
        if self.method == "mcc":  # the target's predictions only
            return self.trade_off * class_confusion(logits[half:])
        if self.method == "afn":  # both domains' feature norms; the target's predictions
            return self.trade_off * (AFN_WEIGHT * feature_norm_step(feature[:half], feature[half:]) +
                                     AFN_ENTROPY_WEIGHT * mean_entropy(logits[half:]))
        reversal = self.trade_off * ramp(progress) * (MDD_REVERSAL if self.method == "mdd" else 1)
        f = ReverseGradient.apply(feature, reversal)
        if self.method == "mdd":
            adversary = self.adversary(f)
            return margin_disparity(logits[:half], adversary[:half], logits[half:], adversary[half:])
        if self.method == "dann":
            return domain_loss(self.discriminator(f))
        g = F.softmax(logits, dim=1).detach()  # CDAN conditions on the predictions, not through them
        weights = 1 + torch.exp(-entropy(g)) if self.entropy_conditioning else None  # CDAN+E: confident ones count more
        term = domain_loss(self.discriminator(self.map(f, g)), weights)
        if self.method == "bsp":  # the penalty acts on the features themselves, not through the reversal
            term = term + BSP_WEIGHT * batch_spectral_penalty(feature[:half], feature[half:])
        return term


# The papers' setups: a 256-wide bottleneck before the classifier for DDC (its "adaptation layer"), DANN, CDAN,
# BSP, JAN and DAN on ResNet-50; DAN on AlexNet adapts fc6-fc8 directly, Deep CORAL aligns fc8, and source only has
# none. MCC and MDD use 1,024 and AFN 1,000 (the Transfer-Learning-Library's Office-31 scripts).
BOTTLENECK = {"source_only": 0, "ddc": 256, "dan": 256, "coral": 0, "dann": 256, "cdan": 256, "bsp": 256, "jan": 256,
              "mcc": 1024, "mdd": 1024, "afn": 1000}


def methods(c):
    """The methods a --method value names: one, or several separated by commas (a sweep)."""
    return [m.strip() for m in c["method"].split(",") if m.strip()]


def with_method(c, method):
    """The config of one method's runs: its name, the bottleneck width resolved from "auto", and the flags that
    do not apply to it set to what it does (source only adds no loss; only CDAN conditions on entropy), so that
    they do not split one experiment into several."""
    width = c["bottleneck"]
    if width == "auto":
        width = 0 if method == "dan" and "alexnet" in c["model"] else BOTTLENECK[method]
    return dict(c, method=method, bottleneck=int(width), trade_off=0.0 if method == "source_only" else c["trade_off"],
                entropy=c["entropy"] and method == "cdan")
