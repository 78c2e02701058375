"""Validators: scores that choose among models (a grid's settings, a run's epochs) without the target's labels, each
next to its paper's formula. Every score is higher-is-better (entropy and DEV, which papers minimise, are negated).

    scores = compute(["entropy", "snd"], target_logits)      # {"entropy": -0.41, "snd": 2.93}
    scores = compute(NAMES, target_logits, target_features, (logits, labels, features) of the held-out source,
                     features of the source's training images)
    scores = score(names, on_target, on_held, on_source)     # the same from evaluate()'s outputs (office31.py)

office31.py computes them at every evaluation (--validators), from the network's outputs on the target's training
images, the unlabelled ones adaptation sees (every target image; where the target has a test list, its train list)
and, for source_val_acc and DEV, on the source images that --source_val holds out of training. The target's labels
never reach this file: it is given the target's logits and features only. selection_table.py reads the scores back from
the run files and shows what each one would have chosen.
"""
import math

import torch
import torch.nn.functional as F


HELD_OUT = ("source_val_acc", "dev")  # read the labels of source images held out of training (--source_val)
# Each score's scale, as a figure's axis names it (selection_table.draw): (what it is, the factor to its unit); an
# accuracy in percent like the target's beside it, the others on their own scale
AXES = {"source_val_acc": ("held-out source accuracy (%)", 100),
        "dev": ("minus DEV, a weighted source loss (own scale)", 1),
        "entropy": ("minus the mean target entropy (nats)", 1),
        "infomax": ("information maximisation (nats)", 1),
        "bnm": ("batch nuclear norm / N (own scale)", 1),
        "snd": ("soft neighbourhood density (own scale)", 1)}
SND_TEMPERATURE = 0.05  # Saito et al.'s tau
DOMAIN_DECAYS = (1e-1, 1e-2, 1e-3)  # L2 weights tried for DEV's domain classifier, the best on its own held-out 20%


def entropies(probs):
    """-sum_k p_k log p_k of each row (0 log 0 = 0)."""
    return -torch.special.xlogy(probs, probs).sum(1)


def entropy(probs):
    """Minus the mean entropy of the target's predictions (Morerio, Cavazza and Murino, "Minimal-Entropy Correlation
    Alignment", ICLR 2018, choose the model whose target predictions are the most confident)."""
    return -entropies(probs).mean()


def infomax(probs):
    """Information maximisation: H(mean_i p_i) - mean_i H(p_i), confident predictions spread over the classes (the
    mutual information between inputs and predicted classes; Musgrave et al., ECCV 2022, rank it among the best)."""
    return entropies(probs.mean(0, keepdim=True))[0] - entropies(probs).mean()


def bnm(probs):
    """Batch nuclear norm (Cui et al., "Towards Discriminability and Diversity", CVPR 2020): ||P||_* / N, the sum of
    the singular values of the N x K prediction matrix over N; large when predictions are confident and diverse."""
    return torch.linalg.matrix_norm(probs, "nuc") / len(probs)


def snd(probs, temperature=SND_TEMPERATURE, chunk=1024):
    """Soft neighbourhood density (Saito et al., "Tune it the Right Way", ICCV 2021): the mean entropy of each target
    point's softmax over its cosine similarities to every other point, divided by tau = 0.05; high where points sit
    in dense neighbourhoods. On the softmax predictions, as the paper's code and Musgrave et al.'s do; the rows are
    taken chunk at a time, so memory is chunk x N."""
    x = F.normalize(probs, dim=1)
    if len(x) < 2:
        return torch.tensor(math.nan)  # a point without neighbours has no density (compute: no score)
    total = 0.0
    for start in range(0, len(x), chunk):
        similarity = x[start:start + chunk] @ x.T / temperature
        rows = torch.arange(len(similarity))
        similarity[rows, rows + start] = -math.inf  # a point is not its own neighbour
        total += entropies(F.softmax(similarity, dim=1)).sum()
    return total / len(x)


# The validators computed from the target's softmax predictions alone: {name: function of the N x K probabilities},
# in the selection table's order. A new one is a function above and a line here (docs/new_method.md).
ON_PREDICTIONS = {
    "entropy": entropy,
    "infomax": infomax,
    "bnm": bnm,
    "snd": snd,
}
NAMES = ("source_val_acc", "dev", *ON_PREDICTIONS)  # every validator, in the selection table's order


def dev(weights, losses):
    """Deep embedded validation (You et al., "Towards Accurate Model Selection in Deep Unsupervised Domain
    Adaptation", ICML 2019, Algorithm 1), as a risk (lower is better): the held-out source losses L_i weighted by the
    density ratios w_i = p_t(x_i)/p_s(x_i), with the control variate eta = -Cov(wL, w)/Var(w) (sample covariance and
    variance): mean(wL) + eta mean(w) - eta."""
    weighted = weights * losses
    variance = weights.var()  # (unbiased, as the paper's np.cov and np.var(ddof=1))
    covariance = ((weighted - weighted.mean()) * (weights - weights.mean())).sum() / (len(weights) - 1)
    eta = -covariance / variance if variance > 0 else torch.zeros(())
    return weighted.mean() + eta * weights.mean() - eta


def density_ratios(source_features, target_features, held_out_features, seed=0):
    """DEV's w(x) = p_t(x)/p_s(x) = (N_s/N_t) P(target|x)/P(source|x) on the held-out source features, from a domain
    classifier trained on the source's training features against the target's: a logistic regression on
    standardised features (the paper's code fits a small MLP), its L2 weight the best of DOMAIN_DECAYS on a seeded
    held-out 20% of those features, as the paper's code chooses it."""
    x = torch.cat([source_features, target_features])
    y = torch.cat([torch.zeros(len(source_features)), torch.ones(len(target_features))])
    mean, std = x.mean(0), x.std(0) + 1e-6
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    w, b, _ = domain_classifier((x - mean) / std, y, order[len(x) // 5:], order[:len(x) // 5], DOMAIN_DECAYS)
    log_odds = (held_out_features - mean) / std @ w + b  # log P(target|x)/P(source|x)
    return len(source_features) / len(target_features) * torch.exp(log_odds)


def domain_classifier(x, y, fit, check, decays):
    """The linear domain classifier of DEV and of the proxy A-distance (analysis.py): a logistic regression on the
    features x (standardised by the caller) telling the target's rows (y 1) from the source's (y 0), fitted on the
    rows `fit`, its L2 weight the one of decays most accurate on the rows `check` (the first of a tie). Returns
    (w, b, its accuracy on the check rows): x @ w + b is the log-odds log P(target|x)/P(source|x)."""
    best = None
    for decay in decays:
        w, b = logistic_regression(x[fit], y[fit], decay)
        accuracy = (((x[check] @ w + b) > 0).float() == y[check]).double().mean()
        if best is None or accuracy > best[0]:
            best = accuracy, w, b
    accuracy, w, b = best
    return w, b, float(accuracy)


def logistic_regression(x, y, decay, steps=100):
    """(w, b) minimising the mean logistic loss of x @ w + b on labels y (0/1) + decay/2 ||w||^2, by L-BFGS."""
    w = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros((), dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = F.binary_cross_entropy_with_logits(x @ w + b, y) + decay / 2 * w.pow(2).sum()
        value.backward()
        return value
    with torch.enable_grad():
        optimizer.step(loss)
    return w.detach(), b.detach()


def compute(names, target_logits, target_features=None, held_outputs=None, source_features=None):
    """{name: score} of the validators named (NAMES), higher better (None where an output is not finite).
    target_logits (and target_features, the input of the classifier, for DEV): the target's training images';
    held_outputs: (logits, labels, features) of the source images held out of training; source_features: those of
    the source's training images (DEV's domain classifier)."""
    outputs = [target_logits, target_features, *(held_outputs or ()), source_features]
    if not all(torch.isfinite(x).all() for x in outputs if x is not None and x.is_floating_point()):
        return dict.fromkeys(names)  # a model whose outputs are not finite is scored by none: None
    probs = F.softmax(target_logits.float(), dim=1)
    scores = {}
    for name in names:
        if name == "source_val_acc":
            logits, labels, _ = held_outputs
            scores[name] = (logits.argmax(1) == labels).float().mean()
        elif name == "dev":
            logits, labels, features = held_outputs
            weights = density_ratios(source_features, target_features, features)
            scores[name] = -dev(weights, F.cross_entropy(logits.float(), labels, reduction="none"))
        else:
            scores[name] = ON_PREDICTIONS[name](probs)
    return {name: float(score) if torch.isfinite(score) else None for name, score in scores.items()}  # (None: no
    # score, as for outputs that are not finite: a density ratio can overflow where the domains separate)


def score(names, on_target, on_held=None, on_source=None):
    """compute() for a model, from evaluate()'s outputs (office31.py: logits, labels, features) on the images the
    validators named read: on_target, the target's training images (the unlabelled ones adaptation sees, as
    pytorch-adapt and SND's paper score; where the target has a test list, its train list); on_held, the held-out
    source images (source_val_acc and DEV: reads_held_out); on_source, the source's training images (DEV's domain
    classifier: reads_features). None for a pass they do not read."""
    held_outputs = (on_held.logits, on_held.labels, on_held.features) if on_held is not None else None
    source_features = on_source.features if on_source is not None else None
    return compute(names, on_target.logits, on_target.features, held_outputs, source_features)


def reads_held_out(names):
    """Whether the validators named read the held-out source images (HELD_OUT: source_val_acc, DEV)."""
    return bool(set(names) & set(HELD_OUT))


def reads_features(names):
    """Whether they read features, the classifier's input (DEV): of every image scored, and of the source's training
    images too, for its domain classifier."""
    return "dev" in names


def scores_tested(target):
    """Whether the validators score the target's tested images, that is, its training images (a domain without a test
    list of its own): its evaluation then computes their features too, else one more pass scores its train list."""
    return target.test_index is None


def chosen(value, has_held_out):
    """The validators a --validators value names: auto (every one that applies: source_val_acc and DEV need a held-out
    source, has_held_out), none, or names separated by commas."""
    if value == "none":
        return []
    if value == "auto":
        return [name for name in NAMES if has_held_out or name not in HELD_OUT]
    return [name.strip() for name in value.split(",") if name.strip()]
