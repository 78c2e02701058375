"""What every method is: the base class Method (one joint forward pass, the term in fp32, the settings a method
declares), and tap, which hands it the network's layers. Each method's file subclasses Method (ddc.py, dann.py, ...).

    features = tap(layers)      # {name: module} of the network -> {name: its output at the latest forward}
    method = DANN(256, num_classes=31, trade_off=1.0, features=features)
    joint = method.network(model, source_x, target_x)     # the logits of [source; target], features tapped
    loss = method(joint, progress)                        # the adaptation term, added to the source loss

Every method sees one batch of source images followed by one batch of target images, pushed through the network
together, and returns the adaptation term that office31.py adds to the source classification loss. Target labels
never reach a method. A method that adapts a trained model on the target's images alone (SHOT, TENT: starts_from)
runs its own adapt() instead of the source loop.
"""
import contextlib
import functools

import torch
from torch import nn


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


def tap(layers):
    """Record each layer's output at every forward pass: {name: module} -> {name: latest output, flattened}."""
    outputs = {}
    for name, module in layers.items():
        module.register_forward_hook(lambda m, inputs, out, name=name: outputs.__setitem__(name, out.flatten(1)))
    return outputs


class Method(nn.Module):
    """One adaptation method: a subclass builds its layers in __init__ (new layers: trained at lr_mult x with the
    new classifier, saved in the checkpoint) and computes its term in term(). features: the tapped layers {name:
    rows of [source; target]} in network order, the last one feeding the classifier, filled by the network's forward
    pass (see tap and network). Called with the logits of the same joint batch and the training progress p, it
    returns the term to add to the source loss. It runs in fp32 under bf16 autocast, as the losses do: a method's
    layers are small next to the backbone, and the term is made of their outputs' small differences.

    What a method declares, as class attributes (the loop, the checks, the tables and the figures read them):
    """
    bottleneck = 0  # the width of the bottleneck before the classifier that --bottleneck=auto gives it; 0: none
    flags = {}  # the switches (boolean flags) only this method reads, {flag: what it is}; False for every other
    colour = None  # its lines in the learning-curve figures (None: a colour fixed by its name)
    flag_labels = {}  # how a table's labels name a switch of flags that is on ({"entropy": "+e"}); "+<flag>" if not
    label_colours = {}  # the colours of the labels its flags make ({"cdan+e": ...}: results.experiments.method_label)
    separate_domains = False  # True: the source and the target batch go through the network one after the other
    batch_of_two = None  # why a batch of one image cannot train it (said when --batch_size=1 is refused), or None
    adapts = True  # False for source only alone: no term, no module, the plain fine-tune loop
    head = "plain"  # the new layers' form: plain (common/layers.py new_head) or shot (shot_head); None: its start's
    label_smoothing = 0.0  # of the source classification loss (SHOT's source model: 0.1)
    saves_model = False  # True: its runs always write their weights (--save_model), for the methods starting from them
    # A method that adapts a trained model with no source image (SHOT, TENT) runs adapt() instead of the source loop:
    starts_from = None  # the method whose runs it starts from when --start_from is "" (trained first in a sweep)
    kind = ""  # what the tables' note calls its rows: "source-free", "test-time"
    adapts_batchnorm = False  # True: it trains the BatchNorm layers alone (TENT); a network without one is refused

    @classmethod
    def adapt(cls, c, run, target, evaluate, stop):
        """A starts_from method's whole training, on the target's images alone: (the history, one row an epoch;
        the outputs its accuracy is of, or None for the final model's evaluation). run: office31.py's set_up, its
        net loaded with the start's weights; evaluate: office31.py's; stop: a StopOnSignal."""
        raise NotImplementedError

    def __init__(self, feature_size, num_classes, trade_off, features):
        super().__init__()
        self.trade_off, self.features = trade_off, features

    @classmethod
    def default_bottleneck(cls, model):
        """The width --bottleneck=auto gives this method on --model=model."""
        return cls.bottleneck

    def network(self, model, source, target, memory_format=torch.contiguous_format):
        """The network's logits for [source; target], with the tapped features of both in that order: one forward
        pass of the joint batch, or with separate_domains one per domain (BatchNorm's running statistics then take
        the source batch's, then the target batch's)."""
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
        """The adaptation term from the tapped features ({name: [source; target] rows}, in fp32), the logits of
        the same rows (the first half the source's) and the training progress p in [0, 1]."""
        raise NotImplementedError
