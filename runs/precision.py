"""The device a run trains on and the precision it trains in: --device and --amp resolved on the machine at hand.

    device = pick_device("auto")              # CUDA when present, else the CPU (with a notice)
    bf16, why = choose_amp("auto", device)    # bf16 autocast where it is the faster choice here, and why
"""
import functools
import json
import os
import time

import torch
import torch.nn.functional as F

from common.files import lock  # (Windows: no lock; processes starting together may each measure once)
from common.errors import UserError
from runs.machine import device_name


def pick_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        print("notice: no CUDA device found, training on the CPU (slow; see the README for a small CPU run).")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device={name}: expected auto, cpu, cuda, cuda:N or mps.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device={name} but PyTorch sees no CUDA device here; use --device=cpu or auto.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device={name}: this machine has {torch.cuda.device_count()} CUDA devices, "
                        f"cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device={name} but PyTorch has no MPS device here (Apple silicon, with a PyTorch built "
                        "for it); use --device=cpu or auto.")
    return device


BF16_MARGIN = 1.3  # "auto" picks bf16 on a CPU only when it measures at least this much faster than fp32


def choose_amp(amp, device):
    """(train under bf16 autocast?, why), for --amp=auto|bf16|off on this device. The weights and BatchNorm
    statistics stay fp32 either way. "auto" picks bf16 where it is the faster choice: on CUDA GPUs of compute
    capability 8.0 and up (A100, H100, RTX 30xx and later), which run it natively, not on older ones that
    emulate it slowly; on a CPU, when bf16 measures at least BF16_MARGIN x faster than fp32 there (CPUs of one
    kind differ: from 4x faster to 0.6x, docs/speed.md). The margin keeps a near-tie from flipping between runs, and
    the measurement is made once per machine (machine_bf16_speedup), so the processes of one sweep agree."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        supported, fast = torch.cuda.is_bf16_supported(), (major, minor) >= (8, 0)
        found = f"{torch.cuda.get_device_name(device)}, compute capability {major}.{minor}"
        why = f"{found}: bf16 {'runs natively' if fast else 'is emulated (slow)'}"
    else:
        supported = device.type == "cpu" and cpu_has_bf16()
        speedup = machine_bf16_speedup() if supported and amp == "auto" else None
        fast = speedup is not None and speedup >= BF16_MARGIN
        why = (f"bf16 measured {speedup:.1f}x fp32 on this CPU, {BF16_MARGIN}x needed" if speedup is not None
               else f"{device.type} {'supports' if supported else 'has no'} bf16")
    if amp == "bf16" and not supported:
        raise UserError(f"--amp=bf16 but {device} does not support bf16; use --amp=auto or --amp=off.")
    if amp != "auto":
        return amp == "bf16", f"--amp={amp}"
    return fast, why


def cpu_has_bf16():
    """Whether this CPU has bf16 kernels (AVX512-BF16 or AMX: oneDNN's check). Without them bf16 autocast still runs,
    converting to fp32 and back, only slower; --amp=bf16 is refused there."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def machine_bf16_speedup():
    """cpu_bf16_speedup, measured once per machine: the first process writes it to $TORCH_HOME/office31-bf16.json
    with the CPU and the torch version it was measured with (and the decision it makes), later processes on the
    same CPU and torch read it, so that two processes of one sweep never decide differently on a CPU near the
    margin. Delete the file to measure again. A file that cannot be read or written: measured per process."""
    path = os.path.join(os.path.dirname(torch.hub.get_dir()), "office31-bf16.json")
    key = {"cpu": device_name(torch.device("cpu")), "torch": torch.__version__}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a+", encoding="utf-8") as f:
            lock(f)  # the first of processes starting together measures; the others wait and read
            f.seek(0)
            saved = json.loads(f.read() or "{}")
            if {k: saved.get(k) for k in key} == key and isinstance(saved.get("speedup"), float):
                return saved["speedup"]
            speedup = cpu_bf16_speedup()
            f.seek(0)
            f.truncate()
            json.dump(dict(key, speedup=speedup, bf16=speedup >= BF16_MARGIN, margin=BF16_MARGIN), f)
            return speedup
    except (OSError, ValueError):  # read-only home, a damaged file: this process's own measurement
        return cpu_bf16_speedup()


@functools.cache
def cpu_bf16_speedup():
    """How much faster this CPU runs bf16 than fp32, measured once per process (about a second) on the work
    that dominates a training step: a 3x3 NHWC convolution (ResNet) and a matrix product (AlexNet's fully
    connected layers). The slower of the two ratios counts, so bf16 must win at both."""
    def best_seconds(run):
        run()  # warm-up: oneDNN picks and builds its kernels at the first call
        times = []
        for _ in range(3):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return min(times)

    seconds = {}
    generator = torch.Generator().manual_seed(0)  # not the global one: measuring changes no run's random numbers
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(32, 128, 28, 28, generator=generator).to(dtype, memory_format=torch.channels_last)
            w = torch.randn(128, 128, 3, 3, generator=generator).to(dtype, memory_format=torch.channels_last)
            a = torch.randn(1024, 1024, generator=generator).to(dtype)
            seconds[dtype] = (best_seconds(lambda: F.conv2d(x, w, padding=1)), best_seconds(lambda: a @ a))
    return min(fp32 / bf16 for fp32, bf16 in zip(seconds[torch.float32], seconds[torch.bfloat16]))
