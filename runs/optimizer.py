"""The training step's protocol around its forward and backward pass: SGD with Nesterov momentum and the new layers
at lr_mult x the learning rate (make_optimizer; the learning rate annealed every iteration: common/schedule.py), and
the check after each step that its loss is finite, under torchrun on every process alike (check_finite).

    optimizer = make_optimizer(net, new_layers, c)     # c: lr, lr_mult, momentum, weight_decay
    stopping = check_finite(step, {"classification": loss}, several, stop_requested)   # or raises Diverged
"""
import math

import torch

from runs import distributed
from common.errors import Diverged


def make_optimizer(model, new_layer, c, fused=True):
    """SGD with two groups: pretrained layers at lr, the new layers at lr * lr_mult (new_layer: the new last
    layer, or a ModuleList of it with the bottleneck and a domain discriminator). The fused kernel is the same
    update in one pass over all parameters (AlexNet's 61M make the per-tensor loop costly)."""
    new = list(new_layer.parameters())
    new_ids = {id(p) for p in new}
    pretrained = [p for p in model.parameters() if id(p) not in new_ids and p.requires_grad]  # not the frozen
    groups = [{"params": pretrained, "initial_lr": c["lr"]}, {"params": new, "initial_lr": c["lr"] * c["lr_mult"]}]
    fused = fused and next(model.parameters()).device.type in ("cpu", "cuda")
    return torch.optim.SGD(groups, lr=c["lr"], momentum=c["momentum"], weight_decay=c["weight_decay"],
                           nesterov=c["momentum"] > 0, fused=fused)


def check_finite(step, terms, several=False, stopping=False):
    """terms: {name: loss tensor} of one step; raises Diverged(step, {name: value}) if any is nan or inf. Returns
    stopping: whether this process was asked to stop. several: both are decided on every process alike (a loss not
    finite on any, a stop asked of any), in one all-reduce, so that every process stops at the same step, else the
    others would wait for it at their next collective."""
    values = {name: float(value) for name, value in terms.items()}
    finite = all(math.isfinite(value) for value in values.values())
    if several:
        diverged, stopping = distributed.anywhere(not finite, stopping)
        finite = not diverged
    if not finite:
        raise Diverged(step, values)
    return stopping

