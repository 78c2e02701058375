"""Speed of this repo's defaults against the classic pipeline, measured side by side in one run.

    python tests/benchmark.py              # Office-31-sized: 2,817 source images ~300x300, 795 target 640x480
    python tests/benchmark.py --quick      # a tenth of the images and fewer steps, for a quick look

Not a test (pytest does not collect it): it prints images/s and ratios against the classic reference
(ImageFolder + PIL per sample, fp32, NCHW) measured on the same machine in the same run:
  1. data throughput over two source epochs: classic DataLoader vs the cached path in memory and on disk (its
     pages in the page cache, then dropped first), one reader's rate reading that file through, and, as root on
     Linux, an epoch from the disk cache by a process whose memory is limited to a quarter of the file (a memory
     cgroup): data larger than the memory given, with the cache's read-ahead and with a plain memory map;
  2. training-step throughput of alexnet and resnet50 (random init, default crop), the settings taking turns:
     fp32 NCHW vs defaults, the defaults in the other precision (bf16 and fp32 side by side, whichever
     --amp=auto chose) and --compile=True; and a ceiling: the images/s a step would reach if all its FLOPs
     ran at the fastest fp32 rate measured on this machine (a large matrix product or convolution);
  3. one full A->W alexnet epoch (train on the source + evaluate the whole target): wall time, peak memory;
  4. what each adaptation method costs: resnet50 training steps with the defaults, source images/s against
     source_only (an adapting step also pushes a target batch through the network); on --device (cpu, or cuda
     for a GPU's figures; parts 1-3 and 5 are CPU only);
  5. what a checkpoint costs: its size and the time to write one (network, momentum, random states; into --root)
     for alexnet and resnet50, against the time of a default epoch (250 steps) at the step rate measured here;
  6. other backbones: a source-only training step of vit_b_16, convnext_tiny and swin_t against resnet50 (random
     init, each at its own crop, --amp=auto), with channels_last on and off, on --device;
  7. what the validators add to one evaluation of A→W (795 target images; --source_val=0.1 holds out 282 of amazon's
     2,817) with resnet50's 2,048 features, against the evaluation pass itself: each validator's own computing,
     and the extra forward passes of source_val_acc (the held-out images) and DEV (every source image).
  8. the source-only table with runs at once (--runs_at_once): a sweep of 2 x --at_once A→W runs (one seed each,
     --table_iters steps, then 3 x as many, --table_model, random init) timed end to end on --device one run after
     another, then with --at_once runs sharing the device, in the same call: the images/s of the steps alone (the
     two lengths' difference) and the fixed seconds of a command, the GPU's mean utilisation (nvidia-smi, sampled
     twice a second; "not measured" where there is none), and the wall time of the 18-run table (6 tasks x 3 seeds,
     5,000 steps of 32) projected from them, as a ratio against one run at a time;
  9. host time per step: a source-only resnet50 training step with the defaults, eager against torch.compile with
     mode="reduce-overhead" (CUDA graphs: the Python and launch overhead of a small batch taken off the GPU's
     critical path) and with the default mode, through the training loop (the loss still checked one step late);
     on a CUDA --device only (there is no flag for it: measured first, as docs/speed.md says).
It first prints the CPU, its bf16 and AMX capabilities, and what --amp=auto chose on it and why: bf16's
worth differs between CPUs, so figures from different machines only compare with those lines beside them.
The generated tree is kept in --root and reused by later runs.
"""
import argparse
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import torch
from PIL import Image, ImageDraw
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import office31  # noqa: E402
from networks.models import input_size  # noqa: E402
from methods import METHODS  # noqa: E402
from runs.checkpoint import Checkpoint, random_states  # noqa: E402
from runs.machine import device_name  # noqa: E402
import data_loader  # noqa: E402
from data_loader import load_domain  # noqa: E402

CLASSES = 31


def make_domain(root, name, count, size):
    """count JPEGs of the given size over 31 classes: a coloured background and a few drawn shapes."""
    g = torch.Generator().manual_seed(len(name))
    for i in range(count):
        folder = os.path.join(root, name, "images", f"class_{i % CLASSES:02d}")
        path = os.path.join(folder, f"frame_{i:04d}.jpg")
        if os.path.exists(path):
            continue
        os.makedirs(folder, exist_ok=True)
        colour = tuple(int(v) for v in torch.randint(0, 256, (3,), generator=g))
        image = Image.new("RGB", size, colour)
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y = (int(v) for v in torch.randint(0, min(size) // 2, (2,), generator=g))
            w = int(torch.randint(10, min(size) // 2, (1,), generator=g))
            draw.ellipse([x, y, x + w, y + w], fill=tuple(255 - c for c in colour), outline=(0, 0, 0))
        image.save(path, quality=90)


def images_per_second(batches):
    start, seen = time.perf_counter(), 0
    for x, _ in batches:
        seen += len(x)
    return seen / (time.perf_counter() - start)


def data_throughput(root, workers, batch_size):
    """Images/s over two source epochs: classic per-sample loader vs cache (build, then steady state)."""
    device = torch.device("cpu")
    classic = load_domain(root, "amazon", 256, False, workers, device)
    n_batches = math.ceil(len(classic) / batch_size)
    g = torch.Generator().manual_seed(0)
    classic_rate = images_per_second(b for _ in range(2)
                                     for b in classic.train_batches(n_batches, batch_size, 224, g))
    start = time.perf_counter()
    cached = load_domain(root, "amazon", 256, True, workers, device)
    build = time.perf_counter() - start
    epoch_start = time.perf_counter()
    images_per_second(cached.train_batches(n_batches, batch_size, 224, g))
    first = n_batches * batch_size / (build + time.perf_counter() - epoch_start)
    steady = images_per_second(cached.train_batches(n_batches, batch_size, 224, g))
    with tempfile.TemporaryDirectory() as folder:  # the disk cache: built anew, then read through its memory map
        start = time.perf_counter()
        disk = load_domain(root, "amazon", 256, "disk", workers, device, cache_dir=folder)
        disk_build = time.perf_counter() - start
        disk_steady = images_per_second(disk.train_batches(n_batches, batch_size, 224, g))
        # as for data larger than memory: the file's pages dropped from the page cache before the epoch, so every
        # image is read from the disk (POSIX_FADV_DONTNEED drops clean pages; where it is missing: not measured)
        disk_cold = disk_ceiling = None
        if hasattr(os, "posix_fadvise"):
            del disk  # (its memory map holds no pages once unmapped)
            disk = load_domain(root, "amazon", 256, "disk", workers, device, cache_dir=folder)
            drop_pages(disk.path)
            disk_cold = images_per_second(disk.train_batches(n_batches, batch_size, 224, g))
            # one plain reader's rate on this disk, for reference: the same file read from start to end, its pages
            # dropped first (not a ceiling: read-ahead keeps several reads in flight, and the cache has gone past it)
            path, count = disk.path, len(disk)
            del disk
            drop_pages(path)
            start, buffer = time.perf_counter(), bytearray(1 << 23)
            with open(path, "rb", buffering=0) as f:
                while f.readinto(buffer):
                    pass
            disk_ceiling = count / (time.perf_counter() - start)
        limited = {plain: limited_epoch_child(root, folder, workers, plain) for plain in (False, True)}
    return classic_rate, build, first, steady, disk_build, disk_steady, disk_cold, disk_ceiling, limited


BATCH_MEMORY = 64 << 20  # what a process cutting and normalising batches of 32 takes beside the page cache


def memory_cgroup(limit):
    """A new memory cgroup (v2, else v1) of that limit in bytes, or None where none can be made (not Linux, not
    root). A process that joins it counts what memory it takes from then on, page cache included, against the
    limit: what it held before stays counted where it was."""
    for base, limit_file in (("/sys/fs/cgroup", "memory.max"), ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")):
        path = os.path.join(base, f"office31-benchmark-{os.getpid()}")
        if not os.path.exists(os.path.join(base, "cgroup.procs")):  # (not a cgroup file system)
            continue
        try:
            os.mkdir(path)
        except OSError:
            continue
        try:
            with open(os.path.join(path, limit_file), "w") as f:
                f.write(str(limit))
            return path
        except OSError:
            os.rmdir(path)
    return None


def limited_epoch_child(root, folder, workers, plain):
    """Images/s of a source epoch from the disk cache (built in folder) by a process whose memory is a quarter of
    the file's size, plus BATCH_MEMORY for its batches: a tree larger than the memory given, for real. plain: a
    plain memory map, without the read-ahead and the letting go (read_ahead). A string says why it was not run."""
    [name] = [n for n in os.listdir(folder) if n.endswith(".uint8")]
    size = os.path.getsize(os.path.join(folder, name))
    if size // 4 + BATCH_MEMORY >= size:
        return "the file is too small to exceed the limit (--quick's tree)"
    cgroup = memory_cgroup(size // 4 + BATCH_MEMORY)
    if cgroup is None:
        return "no memory cgroup could be made here (Linux's cgroups and root are needed)"
    try:
        command = [sys.executable, __file__, f"--root={root}", f"--limited={cgroup}", f"--cache_dir={folder}",
                   f"--workers={workers}", *(["--plain_map"] if plain else [])]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    finally:
        os.rmdir(cgroup)


def limited_epoch(root, folder, cgroup, workers, plain):
    """(In the child) join the cgroup, load the disk cache (which sees the limit; loading touches none of its
    pages), drop the file's pages, then time one source epoch."""
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    if plain:
        data_loader.DiskCachedDomain.read_ahead = data_loader.CachedDomain.read_ahead
    disk = load_domain(root, "amazon", 256, "disk", workers, torch.device("cpu"), cache_dir=folder)
    drop_pages(disk.path)
    g = torch.Generator().manual_seed(0)
    print(json.dumps(images_per_second(disk.train_batches(math.ceil(len(disk) / 32), 32, 224, g))))


def drop_pages(path):
    """Drop a file's clean pages from the page cache (pages mapped by a live memory map stay)."""
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def step_rates(name, settings, steps, rounds, warm_up):
    """Images/s of training steps (random inputs, random-init weights) for each (label, amp, channels_last,
    fused, compile) setting, and the seconds of each setting's `warm_up` first steps (where torch.compile
    compiles). The warm-up is long because a process's first steps run slow while the memory allocator and the
    operating system settle: ResNet-50 in fp32 went from 4.3 to 11 images/s over its first ten steps on the CPU
    of the README, which made a 2-step warm-up understate fp32 against a real run. The settings then take turns,
    `steps` steps each, for `rounds` rounds, and each reports its median round: a machine's speed can drift
    over minutes, and taking turns exposes every setting to it alike. Also returned: the median over the
    rounds of the fastest fp32 rate measured in each (best_flops_per_second)."""
    x, y = torch.randn(32, 3, 224, 224), torch.randint(0, CLASSES, (32,))
    runs, warm_ups = [], []
    for _, amp, channels_last, fused, compile in settings:
        model, new_layer = office31.build_model(name, CLASSES, "none")
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=memory_format)
        optimizer = office31.make_optimizer(model, new_layer(model), office31.FLAGS, fused=fused)
        model = torch.compile(model) if compile else model
        start = time.perf_counter()
        office31.train_one_epoch(model, optimizer, [(x, y)] * warm_up, 0, 10, amp, memory_format)
        warm_ups.append(time.perf_counter() - start)
        runs.append((model, optimizer, amp, memory_format))
    rates, peaks = [[] for _ in runs], []
    for _ in range(rounds):
        for (model, optimizer, amp, memory_format), rate in zip(runs, rates):
            start = time.perf_counter()
            office31.train_one_epoch(model, optimizer, [(x, y)] * steps, 0, 10, amp, memory_format)
            rate.append(steps * len(x) / (time.perf_counter() - start))
        peaks.append(best_flops_per_second())
    return [statistics.median(r) for r in rates], statistics.median(peaks), warm_ups


def train_flops_per_image(name):
    """FLOPs of one training step (forward and backward) per image, as torch counts them."""
    model, _ = office31.build_model(name, CLASSES, "none")
    x, y = torch.randn(2, 3, 224, 224), torch.randint(0, CLASSES, (2,))
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / len(x)


def best_flops_per_second():
    """The fastest fp32 rate measured here: a 2048x2048 matrix product and a 3x3 NHWC convolution, best of 5."""
    a, conv = torch.randn(2048, 2048), torch.nn.Conv2d(256, 256, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(32, 256, 28, 28).contiguous(memory_format=torch.channels_last)
    rates = []
    with torch.inference_mode():
        for run, flops in ((lambda: a @ a, 2 * 2048 ** 3), (lambda: conv(x), 2 * 32 * 28 * 28 * 256 * 256 * 9)):
            run()  # warm-up
            seconds = []
            for _ in range(5):
                start = time.perf_counter()
                run()
                seconds.append(time.perf_counter() - start)
            rates.append(flops / min(seconds))
    return max(rates)


def one_epoch(root, kind, workers):
    """Run in a child process (so peak memory is its own): one A->W alexnet epoch through fine_tune."""
    c = office31.resolve(dict(office31.FLAGS, data_root=root, model="alexnet", weights="none", epochs=1,
                              num_workers=workers, out_dir=tempfile.mkdtemp()))
    c = office31.with_method(c, "source_only")  # the flags fine_tune takes resolved, as main() hands them over
    if kind == "classic":  # per-sample PIL, fp32, NCHW, and the per-tensor SGD loop classic scripts run
        c.update(cache=False, amp="off", channels_last=False)
        office31.make_optimizer = functools.partial(office31.make_optimizer, fused=False)
    cpu, start = torch.device("cpu"), time.perf_counter()
    source, target = (load_domain(root, name, c["resize_size"], c["cache"], workers, cpu) for name in ("A", "W"))
    one_pass = math.ceil(len(source) / c["batch_size"])  # one epoch in the classic sense: a pass over the source
    run = dict(c, source="amazon", target="webcam", iters_per_epoch=one_pass)
    result = office31.fine_tune(run, source, target, cpu, "A→W")
    peak_mb = peak_memory_mb()
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_mb": peak_mb, "total": result["total"]}))


def peak_memory_mb():
    """This process's peak resident memory (VmHWM starts afresh at exec, unlike ru_maxrss; workers not counted)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def method_rates(name, steps, warm_up, device):
    """Source images/s of training steps with the defaults (amp=auto, channels_last, fused SGD) for each method,
    with the bottleneck each takes by default; the methods take turns after their warm-up, median of 3 rounds."""
    x, x_target = torch.randn(32, 3, 224, 224, device=device), torch.randn(32, 3, 224, 224, device=device)
    y = torch.randint(0, CLASSES, (32,), device=device)
    amp, _ = office31.choose_amp("auto", device)
    runs, named = [], [m for m, chosen in METHODS.items() if not chosen.starts_from]  # (SHOT, TENT: no source step)
    for method in named:
        c = office31.with_method(dict(office31.FLAGS, model=name), method)
        net, new_layer = office31.build_model(name, CLASSES, "none", c["bottleneck"])
        net = net.to(device, memory_format=torch.channels_last)
        adapt, new = office31.make_adaptation(c, net, new_layer(net), CLASSES, device)
        optimizer = office31.make_optimizer(net, new, c)
        batch = ((x, y), x_target) if adapt else (x, y)
        office31.train_one_epoch(net, optimizer, [batch] * warm_up, 0, 10, amp, torch.channels_last, adapt)
        runs.append((net, optimizer, batch, adapt))
    rates = [[] for _ in runs]
    for _ in range(3):
        for (net, optimizer, batch, adapt), rate in zip(runs, rates):
            start = time.perf_counter()
            office31.train_one_epoch(net, optimizer, [batch] * steps, 0, 10, amp, torch.channels_last, adapt)
            if device.type == "cuda":
                torch.cuda.synchronize()  # (the epoch's closing loss check already waits for the last step)
            rate.append(steps * len(x) / (time.perf_counter() - start))
    return {method: statistics.median(rate) for method, rate in zip(named, rates)}


def backbone_rates(names, steps, rounds, warm_up, device):
    """{(name, channels_last): source images/s} of a source-only training step with the defaults (batch 32, each
    network's own crop, random init), channels_last on and off; the settings take turns after their warm-up, and
    each reports its median round."""
    amp, _ = office31.choose_amp("auto", device)
    y = torch.randint(0, CLASSES, (32,), device=device)
    runs = {}
    for name in names:
        crop = input_size(name, "none")[1]
        x = torch.randn(32, 3, crop, crop, device=device)
        for channels_last in (True, False):
            memory_format = torch.channels_last if channels_last else torch.contiguous_format
            model, new_layer = office31.build_model(name, CLASSES, "none")
            model = model.to(device, memory_format=memory_format)
            optimizer = office31.make_optimizer(model, new_layer(model), office31.FLAGS)
            office31.train_one_epoch(model, optimizer, [(x, y)] * warm_up, 0, 10, amp, memory_format)
            runs[name, channels_last] = (model, optimizer, x, memory_format)
    rates = {key: [] for key in runs}
    for _ in range(rounds):
        for key, (model, optimizer, x, memory_format) in runs.items():
            start = time.perf_counter()
            office31.train_one_epoch(model, optimizer, [(x, y)] * steps, 0, 10, amp, memory_format)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates[key].append(steps * len(x) / (time.perf_counter() - start))
    return {key: statistics.median(rate) for key, rate in rates.items()}


def checkpoint_cost(name, root, steps, warm_up):
    """(checkpoint MB, seconds to write it, seconds of a default 250-step source-only epoch) with the defaults."""
    c = dict(office31.resolve(dict(office31.FLAGS, model=name, out_dir=root)), source="amazon", target="webcam",
             precision="fp32")
    x, y = torch.randn(32, 3, 224, 224), torch.randint(0, CLASSES, (32,))
    amp, _ = office31.choose_amp("auto", torch.device("cpu"))
    net, new_layer = office31.build_model(name, CLASSES, "none")
    net = net.to(memory_format=torch.channels_last)
    optimizer = office31.make_optimizer(net, new_layer(net), c)
    office31.train_one_epoch(net, optimizer, [(x, y)] * warm_up, 0, 10, amp, torch.channels_last)
    start = time.perf_counter()
    office31.train_one_epoch(net, optimizer, [(x, y)] * steps, 0, 10, amp, torch.channels_last)
    epoch = (time.perf_counter() - start) / steps * c["iters_per_epoch"]
    checkpoint = Checkpoint(c, {"amazon": "", "webcam": ""}, "A→W")
    generators = [torch.Generator(), torch.Generator()]
    start = time.perf_counter()
    checkpoint.save({"epoch": 1, "history": [], "rng": random_states(generators), "model": net.state_dict(),
                     "method": {}, "optimizer": optimizer.state_dict()})
    seconds, size = time.perf_counter() - start, os.path.getsize(checkpoint.path) / 1e6
    checkpoint.remove()
    return size, seconds, epoch


def validator_cost(device, batches=3):
    """{what: seconds} of one A→W evaluation with resnet50 (random init, the defaults' precision): the target pass
    (at the images/s of `batches` timed batches of 64), each validator's computing on outputs of A→W's sizes, and
    the forward passes that source_val_acc and DEV add."""
    from selection import validators
    net, _ = office31.build_model("resnet50", CLASSES, "none")
    net = net.to(device, memory_format=torch.channels_last).eval()
    amp, _ = office31.choose_amp("auto", device)
    x = torch.randn(64, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        net(x)
        start = time.perf_counter()
        for _ in range(batches):
            net(x).float().cpu()
    per_image = (time.perf_counter() - start) / (batches * len(x))
    generator = torch.Generator().manual_seed(0)
    logits, features = torch.randn(795, CLASSES, generator=generator), torch.randn(795, 2048, generator=generator)
    held = (torch.randn(282, CLASSES, generator=generator), torch.randint(0, CLASSES, (282,), generator=generator),
            torch.randn(282, 2048, generator=generator) + 0.3)
    source = torch.randn(2535, 2048, generator=generator) + 0.3
    seconds = {"target pass (795 images)": 795 * per_image}
    for name in validators.NAMES:
        start = time.perf_counter()
        validators.compute([name], logits, features, held, source)
        seconds[name] = time.perf_counter() - start
    seconds["held-out pass (282 images)"] = 282 * per_image
    seconds["source pass for DEV (2,535 images)"] = 2535 * per_image
    return seconds


TABLE_RUNS, TABLE_IMAGES = 18, 5000 * 32  # the source-only table: 6 tasks x 3 seeds, each 5,000 steps of 32


def table_rates(root, count, iters, model, device, flags=()):
    """{label: (source images/s of the training steps, the GPU's mean utilisation or why it was not measured, the
    fixed seconds of one command)} of a sweep of 2 x count A→W runs (seeds 0, 1, ...; one epoch of steps of 32,
    then the final evaluation), one after another and count at once, each an office31.py command timed end to end
    in a fresh out_dir. Each is timed twice, with iters and 3 x iters steps a run: the difference is the steps'
    time alone (the rate), and what is left of the shorter command is what does not grow with the steps (the
    process's start, decoding, building each run's network, the evaluations): a rate from one short command would
    count those as steps and change with iters. flags: more flags for both commands (the tests' small trees)."""
    rates = {}
    for label, at_once in (("one at a time", 1), (f"{count} at once", count)):
        short, _ = timed_sweep(root, count, iters, model, device, at_once, flags)
        long, utilisation = timed_sweep(root, count, 3 * iters, model, device, at_once, flags)
        rate = 2 * count * 2 * iters * 32 / max(long - short, 1e-9)
        rates[label] = (rate, utilisation, max(short - 2 * count * iters * 32 / rate, 0.0))
    return rates


def timed_sweep(root, count, iters, model, device, at_once, flags):
    """(wall seconds, the GPU's mean utilisation or why not) of one table_rates command."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, office31.__file__, f"--data_root={root}", "--source=amazon", "--target=webcam",
                   f"--seeds={2 * count}", f"--model={model}", "--weights=none", "--epochs=1", "--batch_size=32",
                   f"--iters_per_epoch={iters}", f"--device={device}", "--eval_every=0", "--validators=none",
                   "--checkpoint=False", f"--out_dir={out}", f"--runs_at_once={at_once}", *flags]
        sampler = GpuUtilisation(device)
        start = time.perf_counter()
        with sampler:
            done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode:
            sys.exit(f"part 8: {' '.join(command)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return seconds, sampler.why_not() if sampler.mean() is None else sampler.mean()


def projected_table(rate, fixed=0.0, runs=1):
    """Seconds the 18-run table takes at this many source images/s of steps, with the fixed seconds measured for a
    command of `runs` runs counted for each of its 18 (each run builds its network and evaluates; an overestimate
    by the process's start, paid once)."""
    return TABLE_RUNS * TABLE_IMAGES / rate + fixed * TABLE_RUNS / runs


class GpuUtilisation:
    """The GPU's utilisation (%) sampled twice a second by nvidia-smi while the with-block runs; mean() is None where
    it was not read (a CPU device, no nvidia-smi), and why_not() says why."""

    def __init__(self, device, period=0.5):
        self.device, self.period, self.samples, self.problem = torch.device(device), period, [], None
        self.done = threading.Event()
        if self.device.type != "cuda":
            self.problem = "not a CUDA device"
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def query(self):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        index = visible or str(self.device.index or 0)
        out = subprocess.run(["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,"
                              "nounits"], capture_output=True, text=True, timeout=10, check=True).stdout
        return float(out.strip().splitlines()[0])

    def sample(self):
        """One reading, then one every period until the with-block ends (a short block is read once)."""
        while True:
            try:
                self.samples.append(self.query())
            except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
                self.problem = f"nvidia-smi gave no reading ({type(e).__name__})"
                return
            if self.done.wait(self.period):
                return

    def __enter__(self):
        if self.problem is None:
            self.thread.start()
        return self

    def __exit__(self, *error):
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()

    def mean(self):
        return statistics.mean(self.samples) if self.samples and self.problem is None else None

    def why_not(self):
        return self.problem or "no sample taken"


def overhead_rates(name, steps, warm_up, device):
    """{setting: source images/s} of a source-only training step with the defaults (batch 32, random init) through
    the training loop, eager and under torch.compile, mode "reduce-overhead" (CUDA graphs) and the default; the
    settings take turns after their warm-up (where compiling happens), median of 3 rounds. A string saying why
    where the device is not CUDA: CUDA graphs replay GPU work only."""
    if device.type != "cuda":
        return "not measured: CUDA graphs need a CUDA --device"
    amp, _ = office31.choose_amp("auto", device)
    x, y = torch.randn(32, 3, 224, 224, device=device), torch.randint(0, CLASSES, (32,), device=device)
    runs = {}
    for label, mode in (("eager", None), ('compile, mode="reduce-overhead"', "reduce-overhead"),
                        ("compile, the default mode", "default")):
        net, new_layer = office31.build_model(name, CLASSES, "none")
        net = net.to(device, memory_format=torch.channels_last)
        optimizer = office31.make_optimizer(net, new_layer(net), office31.FLAGS)
        model = torch.compile(net, mode=mode) if mode else net
        office31.train_one_epoch(model, optimizer, [(x, y)] * warm_up, 0, 10, amp, torch.channels_last)
        runs[label] = (model, optimizer)
    rates = {label: [] for label in runs}
    for _ in range(3):
        for label, (model, optimizer) in runs.items():
            start = time.perf_counter()
            office31.train_one_epoch(model, optimizer, [(x, y)] * steps, 0, 10, amp, torch.channels_last)
            torch.cuda.synchronize()
            rates[label].append(steps * len(x) / (time.perf_counter() - start))
    return {label: statistics.median(rate) for label, rate in rates.items()}


def where(device):
    """"on NVIDIA H200, bf16 (...)": the device parts 4 and 6-9 run on, and the precision --amp=auto chose there."""
    amp, why = office31.choose_amp("auto", device)
    return f"on {device_name(device)}, {'bf16' if amp else 'fp32'} ({why})"


def run_epoch_child(root, kind, workers):
    out = subprocess.run([sys.executable, __file__, f"--root={root}", f"--epoch={kind}", f"--workers={workers}"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "office31-benchmark"))
    parser.add_argument("--quick", action="store_true", help="a tenth of the images, 1 step a round")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per setting and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of timed steps, the settings taking turns")
    parser.add_argument("--warm_up", type=int, default=8, help="untimed first steps of each setting")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu", help="where parts 4 and 6-9 run: cpu, cuda")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: data,steps,epoch,methods,"
                                                   "checkpoint,backbones,validators,at_once,overhead")
    parser.add_argument("--at_once", type=int, default=3, help="part 8: runs sharing the device")
    parser.add_argument("--table_iters", type=int, default=0, help="part 8: steps of each run (0: 50 on a GPU, "
                                                                     "3 on the CPU; --quick: 2)")
    parser.add_argument("--table_model", default="resnet50", help="part 8: the network of its runs")
    parser.add_argument("--epoch", help=argparse.SUPPRESS)  # internal: run one epoch in this process
    parser.add_argument("--limited", help=argparse.SUPPRESS)  # internal: a disk-cache epoch in this memory cgroup
    parser.add_argument("--cache_dir", help=argparse.SUPPRESS)
    parser.add_argument("--plain_map", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epoch:
        return one_epoch(args.root, args.epoch, args.workers)
    if args.limited:
        return limited_epoch(args.root, args.cache_dir, args.limited, args.workers, args.plain_map)
    scale, steps, warm_up = (10, 1, 2) if args.quick else (1, args.steps, args.warm_up)
    root = args.root + ("-quick" if args.quick else "")
    start = time.perf_counter()
    make_domain(root, "amazon", 2817 // scale, (300, 300))
    make_domain(root, "webcam", 795 // scale, (640, 480))
    amp, why = office31.choose_amp("auto", torch.device("cpu"))
    print(f"tree: {root} ({2817 // scale} + {795 // scale} images, ready in {time.perf_counter() - start:.0f}s); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.workers} workers")
    print(f"CPU: {device_name(torch.device('cpu'))}; AVX512-BF16: {torch.cpu._is_avx512_bf16_supported()}, "
          f"AMX: {torch.cpu._is_amx_tile_supported()}; --amp=auto trains in {'bf16' if amp else 'fp32'} ({why})")
    skip = set(args.skip.split(","))
    if "data" not in skip:
        classic, build, first, steady, disk_build, disk, cold, ceiling, limited = data_throughput(root, args.workers,
                                                                                                  32)
        print("1. data, images/s over source epochs (224 crops, batch 32)")
        print(f"   classic ImageFolder + PIL          {classic:7.0f}   1.0x")
        print(f"   cache, epoch 1 (build {build:5.1f}s)    {first:7.0f}   {first / classic:.1f}x")
        print(f"   cache, steady state                {steady:7.0f}   {steady / classic:.1f}x")
        print(f"   disk cache (build {disk_build:5.1f}s), steady {disk:7.0f}   {disk / classic:.1f}x   "
              f"({disk / steady:.2f}x the memory cache; its pages in the page cache)")
        if cold:
            print(f"   disk cache, pages dropped first     {cold:7.0f}   {cold / classic:.1f}x   "
                  f"({cold / steady:.2f}x the memory cache: every image read from the disk)")
            print(f"   the file read through, pages dropped {ceiling:6.0f}   {ceiling / classic:.1f}x   "
                  f"(one reader, start to end, {ceiling / steady:.2f}x the memory cache; the cold disk cache reached "
                  f"{cold / ceiling:.2f} of it)")
        if isinstance(limited[False], str):
            print(f"   (no memory-limited rows: {limited[False]})")
        else:
            print("   disk cache, its process's memory limited to a quarter of the file + 64 MB (a memory cgroup), "
                  "pages dropped first:")
            for plain, label in ((False, "read ahead, let go (the default)"), (True, "a plain memory map")):
                rate = limited[plain]
                print(f"     {label:33} {rate:7.0f}   {rate / classic:.1f}x   ({rate / steady:.2f}x the memory cache)")
    if "steps" not in skip:
        settings = [("fp32 NCHW, per-tensor SGD", False, False, False, False),
                    (f"defaults ({'bf16' if amp else 'fp32'}, channels_last, fused)", amp, True, True, False)]
        if amp:
            settings.append(("the same with --amp=off (fp32)", False, True, True, False))
        elif torch.ops.mkldnn._is_mkldnn_bf16_supported():
            settings.append(("the same with --amp=bf16", True, True, True, False))
        settings.append(("the same with --compile=True", amp, True, True, True))
        print(f"2. training step, images/s (batch 32, 224x224; median of {args.rounds} rounds of {steps} steps, the "
              "settings taking turns; x: against fp32 NCHW)")
        for name in ("alexnet", "resnet50"):
            rates, peak, warm_up_seconds = step_rates(name, settings, steps, args.rounds, warm_up)
            for (label, *_), rate, seconds in zip(settings, rates, warm_up_seconds):
                print(f"   {name:8s} {label:38s} {rate:7.1f}   {rate / rates[0]:.1f}x"
                      f"   (first {warm_up} steps: {seconds:.0f}s)")
            flops = train_flops_per_image(name)
            print(f"   {name:8s} ceiling: {flops / 1e9:.1f} GFLOP an image at {peak / 1e9:.0f} GFLOP/s "
                  f"{peak / flops:7.1f}   {peak / flops / rates[0]:.1f}x")
    if "epoch" not in skip:
        print("3. one A→W alexnet epoch (train one source pass + evaluate every target image)")
        classic = run_epoch_child(root, "classic", args.workers)
        fast = run_epoch_child(root, "defaults", args.workers)
        print(f"   classic fp32 pipeline   {classic['seconds']:7.1f}s  peak {classic['peak_mb']:6.0f} MB  1.0x")
        print(f"   defaults                {fast['seconds']:7.1f}s  peak {fast['peak_mb']:6.0f} MB  "
              f"{classic['seconds'] / fast['seconds']:.1f}x")
    device = torch.device(args.device)
    if "methods" not in skip:
        print(f"4. adaptation methods: resnet50 training step with the defaults, source images/s (median of 3 rounds "
              f"of {steps} steps; x: against source_only) {where(device)}")
        rates = method_rates("resnet50", steps, warm_up, device)
        for method, rate in rates.items():
            print(f"   {method:12s} {rate:7.1f}   {rate / rates['source_only']:.2f}x")
    if "checkpoint" not in skip:
        print(f"5. checkpoint at an epoch end (defaults; the epoch: 250 steps at the rate of {steps} timed steps)")
        for name in ("alexnet", "resnet50"):
            size, seconds, epoch = checkpoint_cost(name, root, steps, warm_up)
            print(f"   {name:8s} {size:6.0f} MB written in {seconds:5.2f}s; epoch {epoch:6.0f}s; "
                  f"{100 * seconds / epoch:.2g}% of it")
    if "backbones" not in skip:
        print(f"6. backbones: source-only training step with the defaults, images/s (batch 32 at each network's "
              f"crop; median of {args.rounds} rounds of {steps} steps; x: against resnet50 with channels_last) "
              f"{where(device)}")
        rates = backbone_rates(("resnet50", "vit_b_16", "convnext_tiny", "swin_t"), steps, args.rounds, warm_up,
                               device)
        reference = rates["resnet50", True]
        for (name, channels_last), rate in rates.items():
            print(f"   {name:14s} channels_last={channels_last!s:5s} {rate:7.1f}   {rate / reference:.2f}x")
    if "validators" not in skip:
        print(f"7. validators at one A→W evaluation, resnet50 (x: against the target pass) {where(device)}")
        seconds = validator_cost(device)
        reference = seconds["target pass (795 images)"]
        for what, value in seconds.items():
            print(f"   {what:36s} {value:8.2f}s   {value / reference:.3f}x")
    if "at_once" not in skip:
        iters = args.table_iters or (2 if args.quick else 50 if device.type == "cuda" else 3)
        print_table_rates(root, args.at_once, iters, args.table_model, device)
    if "overhead" not in skip:
        print(f"9. host time per step: resnet50 source-only training step with the defaults, source images/s (median "
              f"of 3 rounds of {steps} steps; x: against eager) {where(device)}")
        rates = overhead_rates("resnet50", steps, warm_up, device)
        if isinstance(rates, str):
            print(f"   {rates}")
        for label, rate in ({} if isinstance(rates, str) else rates).items():
            print(f"   {label:32s} {rate:7.1f}   {rate / rates['eager']:.2f}x")


def print_table_rates(root, count, iters, model, device, flags=()):
    """Part 8, printed: table_rates, and the 18-run table's wall time projected from each rate."""
    print(f"8. the source-only table, runs at once: {2 * count} A→W runs of {iters} and of {3 * iters} steps "
          f"({model}, batch 32), each command timed end to end; images/s of the steps alone (the difference), and the "
          f"fixed seconds of a command (start, decoding, networks, evaluations) {where(device)}")
    rates = table_rates(root, count, iters, model, device, flags)
    alone = projected_table(rates["one at a time"][0], rates["one at a time"][2], 2 * count)
    for label, (rate, utilisation, fixed) in rates.items():
        used = f"GPU utilisation not measured ({utilisation})" if isinstance(utilisation, str) else \
            f"GPU {utilisation:.0f}% busy"
        table = projected_table(rate, fixed, 2 * count)
        print(f"   {label:14s} {rate:8.1f} images/s, fixed {fixed:6.1f}s, {used}; the 18-run table (5,000 steps "
              f"each): {table / 60:6.1f} min projected   {alone / table:.2f}x")
    return rates


if __name__ == "__main__":
    main()
