"""TENT: test-time adaptation of a trained model's BatchNorm layers by entropy minimisation, in one online pass."""
import collections
import time

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import Diverged, Stopped
from data_loader import part, shuffled
from methods.method import Method, in_fp32

# The pass's predictions, as office31.py's evaluate returns a model's: what the accuracy is of
Online = collections.namedtuple("Online", "correct total logits labels features")


class TENT(Method):
    """TENT (Wang, Shelhamer, Liu, Olshausen and Darrell, "Tent: Fully Test-Time Adaptation by Entropy
    Minimization", ICLR 2021; its code's tent.py): from a trained model (SHOT's source model, ShotSource, or
    --start_from), one online pass over the target's tested images in test crops, each image once, in an order the
    seed draws: every BatchNorm layer normalises with the batch's own statistics (its running ones dropped), and only
    the BatchNorm layers' affine parameters (scale and shift) are updated, one step a batch, to minimise the mean
    entropy of the batch's predictions, H(p) = -sum_k p_k log p_k. The accuracy is that of the predictions made
    during the pass (online): each batch is predicted with the updates of the batches before it, then updates.

    Its settings are the paper's for ImageNet (Sec. 4: SGD, momentum 0.9, lr 0.00025, batches of 64) and its
    code's for SGD (conf.py: Nesterov momentum, no dampening, no weight decay; one step a batch, not episodic), whatever the flags, which train the source stage;
    a last batch of one image joins the batch before it (batches).
    Its code adapts BatchNorm2d layers; the paper's normalisation layers here are every BatchNorm, the bottleneck's
    BatchNorm1d too."""
    starts_from = "shot_source"
    kind = "test-time"
    adapts = False  # (no term on the source loop: adapt() is its pass)
    bottleneck = 256  # (its start's: SHOT's source model)
    head = None  # (its start's)
    adapts_batchnorm = True
    colour = "#7b4173"
    batch_size, lr, momentum = 64, 0.00025, 0.9

    @staticmethod
    @in_fp32
    def mean_entropy(logits):
        """mean_i H(softmax(z_i)), computed from the log-probabilities."""
        return -(F.softmax(logits, dim=1) * F.log_softmax(logits, dim=1)).sum(1).mean()

    @staticmethod
    def norms(net):
        """The network's BatchNorm layers, set to normalise with each batch's statistics, their affine parameters
        alone left to train (its code's configure_model, every BatchNorm)."""
        net.train()
        net.requires_grad_(False)
        found = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for norm in found:
            norm.requires_grad_(True)
            norm.track_running_stats, norm.running_mean, norm.running_var = False, None, None
        return found

    @classmethod
    def batches(cls, count):
        """The positions of each batch of a stream of count images: batch_size at a time, a last batch of one image
        joined to the one before (a BatchNorm1d cannot take the statistics of one image: Office-31's amazon has
        44 x 64 + 1 images)."""
        chunks = torch.arange(count).split(cls.batch_size)
        return chunks[:-2] + (torch.cat(chunks[-2:]),) if len(chunks) > 1 and len(chunks[-1]) == 1 else chunks

    @classmethod
    def adapt(cls, c, run, target, evaluate, stop):
        params = [p for norm in cls.norms(run.net) for p in norm.parameters()]
        optimizer = torch.optim.SGD(params, lr=cls.lr, momentum=cls.momentum, nesterov=True)
        start, sums, seen = time.time(), 0.0, 0
        logits, labels = [], []
        stream = shuffled(target, run.generators[1])
        for step, chunk in enumerate(cls.batches(len(stream))):
            (x, y), = part(stream, chunk).test_batches(len(chunk), c["crop_size"], run.pixels)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=run.amp):
                out = run.net(x.contiguous(memory_format=run.memory_format))
            loss = cls.mean_entropy(out)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if not torch.isfinite(loss):
                raise Diverged(f"tent's entropy is not finite at batch {step + 1} ({float(loss)}): this run writes "
                               "no result. Its settings are TENT's own; try --amp=off if it ran in bf16.")
            sums, seen = sums + float(loss.detach()) * len(x), seen + len(x)
            logits.append(out.detach().float().cpu())
            labels.append(y.cpu())  # (read by the accuracy alone, below)
            if stop is not None and stop.requested:
                raise Stopped(f"{stop.who()} stopped tent's pass; it starts again from its start when the same "
                              "command runs again.")
        logits, labels = torch.cat(logits), torch.cat(labels)
        correct = int((logits.argmax(1) == labels).sum())
        history = [{"epoch": 1, "loss": sums / seen, "adaptation_loss": None, "source_acc": None, "target_acc": None,
                    "seconds": time.time() - start}]
        print(f"tent: one pass over {seen} target images, mean entropy {sums / seen:.3f}  "
              f"{history[0]['seconds']:.1f}s")
        return history, Online(correct, seen, logits, labels, None)
