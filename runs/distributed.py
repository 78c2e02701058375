"""One run on several processes (GPUs) through torch.distributed:

    torchrun --nproc_per_node=4 office31.py --dataset=visda2017 --method=dann     # one node, 4 GPUs (NCCL)
    torchrun --nproc_per_node=2 office31.py --device=cpu ...                      # 2 CPU processes (gloo)

Every process draws the same global batch of --batch_size images (the same seeds, the same crops and flips) and
trains on its slice, batch_size / N images: the network is wrapped in DistributedDataParallel, which averages its
gradients over the processes, and the method's own layers (a discriminator) are averaged after each backward pass,
so the update is the one of the global batch. The learning-rate schedule, steps and epochs are the flags' as for one
process. BatchNorm normalises over the global batch: SyncBatchNorm on CUDA, GlobalBatchNorm (below) on the CPU. So
a run without dropout is the one-process run up to rounding; dropout (AlexNet's classifier, the discriminators of
DANN and CDAN) draws each slice's mask from the same stream, so such a run is another draw of it. Process 0
evaluates every target image once, computes the validators, saves checkpoints and writes the results; the others
print nothing, and wait for it in a collective of their own (wait_for_first), which waits as long as that can take.
AFN (two forward passes a step) and --compile are refused under torchrun.
"""
import datetime
import os

import torch
import torch.distributed as dist

from common.errors import UserError
from methods import METHODS, methods


# How long a collective of training (a step, an epoch's means, the decisions between runs) waits for the other
# processes before the run fails: steps take seconds, but the processes may reach a run's first step minutes apart,
# each decoding its domains on its own (torch's default: 10 minutes on NCCL, 30 on gloo).
TIMEOUT = datetime.timedelta(minutes=30)
# How long the others wait while process 0 evaluates alone (the target, the held-out images, DEV's pass over every
# source image and its fits) and saves the checkpoint: on DomainNet (up to 175,000 target images, DEV's pass over
# 120,000 source ones) tens of minutes on a GPU, hours where decoding is slow, more than TIMEOUT. A process 0 that
# fails ends the others at once (torchrun), so this long wait bounds only a process 0 that hangs.
EVALUATION_TIMEOUT = datetime.timedelta(hours=12)
waiting = None  # the gloo group they wait in (start), whose timeout is EVALUATION_TIMEOUT


def launched():
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check(c):
    """What a run on several processes cannot take, said before any work."""
    size = launched()
    if size == 1:
        return
    if c["batch_size"] % size:
        raise UserError(f"--batch_size={c['batch_size']} is the global batch, split evenly over the {size} processes "
                        f"torchrun started: give a multiple of {size}.")
    for name in methods(c):
        if METHODS[name].separate_domains:
            raise UserError(f"--method={name} passes each domain through the network on its own, twice a step, which "
                            f"DistributedDataParallel does not take: run {METHODS[name].__name__} on one process.")
    if c["compile"]:
        raise UserError("--compile=True is not taken under torchrun here: run with --compile=False.")


def start(device):
    """Join the process group torchrun set up: NCCL with one GPU a process; gloo on the CPU, and where a node runs more
    processes than it has GPUs, which then share them (NCCL refuses two processes on one GPU). Returns this process's
    device."""
    cuda = device != "cpu" and torch.cuda.is_available()
    gpus = torch.cuda.device_count() if cuda else 0
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % gpus)
    shared = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > gpus
    dist.init_process_group("nccl" if cuda and not shared else "gloo", timeout=TIMEOUT)
    global waiting
    waiting = dist.new_group(backend="gloo", timeout=EVALUATION_TIMEOUT)  # (every process makes it, at once)
    return torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def size():
    return dist.get_world_size() if dist.is_initialized() else 1


def wrap(net, device):
    """The network as DistributedDataParallel trains it, its BatchNorm layers normalising over the global batch:
    SyncBatchNorm on a GPU, GlobalBatchNorm on the CPU, where SyncBatchNorm does not run. Both replace the layers in
    place and keep their parameters and statistics (the optimizer's, the checkpoints')."""
    if device.type == "cuda":
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    else:
        global_batchnorm(net)
    return torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are over the global batch, on the CPU: the per-channel sums are added
    over the processes (Summed), so forward and backward are those of one process holding the whole batch (the mean
    first, then the variance around it, in fp32 whatever the input's precision)."""

    def _check_input_dim(self, x):  # (BatchNorm1d and 2d alike: channels are dimension 1)
        pass

    def forward(self, x):
        if not self.training and self.track_running_stats:
            return super().forward(x)
        dims, shape = [d for d in range(x.dim()) if d != 1], [1, -1] + [1] * (x.dim() - 2)
        count, x32 = x.numel() // x.shape[1] * size(), x.float()
        mean = Summed.apply(x32.sum(dims)) / count
        centred = x32 - mean.view(shape)
        var = Summed.apply(centred.square().sum(dims)) / count
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked.item()
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * count / (count - 1), momentum)  # (unbiased, as BatchNorm keeps it)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        return (out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out).to(x.dtype)


class Summed(torch.autograd.Function):
    """A tensor summed over the processes. Every process's loss depends on every process's tensor through the sum,
    so the gradient of each is the sum of the gradients the processes computed for the sum."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def global_batchnorm(module):
    """Replace every BatchNorm under module by a GlobalBatchNorm holding the same parameters and statistics."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
            layer = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            for key, value in [*child.named_parameters(recurse=False), *child.named_buffers(recurse=False)]:
                setattr(layer, key, value)
            setattr(module, name, layer.train(child.training))
        else:
            global_batchnorm(child)


def wait_for_first():
    """Every process waits here until process 0 gets here too: the others, while it evaluates and saves alone, for
    up to EVALUATION_TIMEOUT (in a collective of the default group they would fail after TIMEOUT)."""
    dist.barrier(group=waiting)


def shard(batches):
    """This process's slice of every global batch: (x, y), or ((x, y), x_target) when adapting."""
    def cut(x):
        return x.chunk(size())[rank()]
    for batch in batches:
        if isinstance(batch[0], tuple):
            (x, y), x_target = batch
            yield (cut(x), cut(y)), cut(x_target)
        else:
            yield cut(batch[0]), cut(batch[1])


def average_gradients(module):
    """Average the gradients of a module DistributedDataParallel does not hold (the method's own layers)."""
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= size()


def summed(values):
    """Each of these numbers summed over the processes (one all-reduce for all of them)."""
    t = torch.tensor([float(value) for value in values], dtype=torch.float64,
                     device="cuda" if dist.get_backend() == "nccl" else "cpu")  # (NCCL reduces on the GPU only)
    dist.all_reduce(t)
    return t.tolist()


def mean(value):
    """The mean over the processes of a number each computed on its (equal) slice."""
    return summed([value])[0] / size()


def anywhere(*flags):
    """For each flag, whether any process has it set (this process's flags where it runs alone)."""
    if size() == 1:
        return [bool(flag) for flag in flags]
    return [total > 0 for total in summed(bool(flag) for flag in flags)]


def decide(value=None):
    """Process 0's value, on every process (whether a run goes ahead); the value itself on one process."""
    if size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
