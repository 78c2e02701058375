"""One run on several processes (GPUs) through torch.distributed:

    torchrun --nproc_per_node=4 office31.py --dataset=visda2017 --method=dann     # one node, 4 GPUs (NCCL)
    torchrun --nproc_per_node=2 office31.py --device=cpu ...                      # 2 CPU processes (gloo)

Every process draws the same global batch of --batch_size images (the same seeds, the same crops and flips) and
trains on its slice, batch_size / N images: the network is wrapped in DistributedDataParallel, which averages its
gradients over the processes, and the method's own layers (a discriminator) are averaged after each backward pass,
so the update is the one of the global batch. The learning-rate schedule, steps and epochs are the flags' as for one
process. On CUDA, BatchNorm layers become SyncBatchNorm (statistics over the global batch); on the CPU (gloo) each
process normalises over its slice. Process 0 evaluates every target image once, computes the validators, saves
checkpoints and writes the results; the others print nothing. AFN (two forward passes a step) and --compile are
refused under torchrun.
"""
import os

import torch
import torch.distributed as dist

from errors import UserError


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
    if "afn" in c["method"]:
        raise UserError("--method=afn passes each domain through the network on its own, twice a step, which "
                        "DistributedDataParallel does not take: run AFN on one process.")
    if c["compile"]:
        raise UserError("--compile=True is not taken under torchrun here: run with --compile=False.")


def start(device):
    """Join the process group torchrun set up (NCCL on CUDA, gloo on the CPU); returns this process's device."""
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def size():
    return dist.get_world_size() if dist.is_initialized() else 1


def wrap(net, device):
    """The network as DistributedDataParallel trains it (SyncBatchNorm first, on CUDA)."""
    if device.type == "cuda":
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)


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


def mean(value):
    """The mean over the processes of a number each computed on its (equal) slice."""
    t = torch.tensor([float(value)], dtype=torch.float64,
                     device="cuda" if dist.get_backend() == "nccl" else "cpu")  # (NCCL reduces on the GPU only)
    dist.all_reduce(t)
    return t.item() / size()


def decide(value=None):
    """Process 0's value, on every process (whether a run goes ahead); the value itself on one process."""
    if size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
