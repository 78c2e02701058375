"""What produced a run, recorded with it: the device's name, the torch and torchvision versions, the git revision."""
import functools
import os
import platform
import subprocess


import torch
import torchvision



def machine(device):
    """What produced a run, recorded in its row: the device (GPU or CPU model), the torch and torchvision versions,
    and the code's git revision ("+changes" when tracked files differ from it; None outside a git checkout)."""
    return {"device": device_name(device), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "revision": code_revision()}


def device_name(device):
    """The GPU's name, or the CPU's model name with its family and model numbers (a virtual machine may name it
    only "AMD EPYC", and CPUs of one name differ: docs/speed.md)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            fields = {}
            for key, _, value in (line.partition(":") for line in f):
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine() or "unknown CPU"
    return f"{fields.get('model name')} (family {fields.get('cpu family')}, model {fields.get('model')})"


@functools.cache
def code_revision():
    def git(*args):
        return subprocess.run(["git", *args], cwd=os.path.dirname(os.path.abspath(__file__)), capture_output=True,
                              text=True, timeout=30)
    try:
        head, changes = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):  # no git here
        return None
    if head.returncode != 0:  # not a git checkout (an unpacked archive)
        return None
    return head.stdout.strip() + ("+changes" if changes.stdout.strip() else "")
