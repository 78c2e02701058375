"""Images in: Office-31 domains (or any `<root>/<domain>/[images/]<class>/*.jpg` tree) as batches.

    domain = load_domain("data/office31", "amazon", resize_size=256, cache=True, device="cuda")
    for x, y in domain.train_batches(num_batches=250, batch_size=32, crop_size=224, generator=g): ...
    for x, y in domain.test_batches(batch_size=256, crop_size=224): ...

Two interchangeable paths give the same tensors for the same crop and flip:
- CachedDomain (default): every image decoded once, resized to resize x resize uint8 and kept in memory
  (on the GPU when training there); random crop, flip and normalisation run per sample on whole batches.
- ImageFolderDomain (cache=False): the classic torchvision ImageFolder + PIL transforms per sample.
Also here: finding domains under a root, and the layout/count checks (downloads: datasets/download.py; the disk cache's
files, --cache=disk: datasets/disk_cache.py).
"""
import copy
import errno
import hashlib
import math
import mmap
import os
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset
from torchvision import datasets, transforms
from torchvision.transforms.functional import pil_to_tensor
from tqdm import tqdm

from common.errors import UserError  # (its own file, so that office31.py checks flags before torch is imported)
from datasets import demo
from datasets.disk_cache import build_disk_cache, disk_cache_path, open_disk_cache, whole

# The complete datasets datasets/download.py fetches: domain -> image count (Office-31: 31 classes; Office-Home: 65).
OFFICE31_SIZES = {"amazon": 2817, "dslr": 498, "webcam": 795}
OFFICE_HOME_SIZES = {"Art": 2427, "Clipart": 4365, "Product": 4439, "Real_World": 4357}
# A dataset's domains may sit one folder down: the official Office-31 archive unpacked as is, or a download that
# filled an existing empty data_root in place.
NESTED = ("domain_adaptation_images", "dataset")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (104.0, 116.7, 122.7)  # Caffe's networks take BGR, 0-255, minus this mean
# What a network takes as pixels: "imagenet" (torchvision: RGB in [0, 1], minus mean, over std), "caffe", or the
# (mean, std) of a network trained with others.

EXPECTED_TREE = """Expected either layout (the official archive, or the flattened one many repos use):
    <data_root>/amazon/images/back_pack/frame_0001.jpg      <data_root>/amazon/back_pack/frame_0001.jpg
    <data_root>/dslr/images/...                             <data_root>/dslr/...
    <data_root>/webcam/images/...                           <data_root>/webcam/...
Office-31 and Office-Home are downloaded when data_root is missing or empty (--dataset; docs/data.md)."""


# ---------------------------------------------------------------------------------------------------------
# Finding domains on disk


def class_root(domain_dir):
    """The folder holding the class folders: <domain>/images (official archive) or <domain> itself."""
    images = os.path.join(domain_dir, "images")
    return images if os.path.isdir(images) else domain_dir


def subdirs(path):
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def find_domains(data_root):
    """Names of the domains under data_root: sub-folders whose class root holds class folders."""
    if not os.path.isdir(data_root):
        return []
    return [d for d in subdirs(data_root) if subdirs(class_root(os.path.join(data_root, d)))]


def dataset_root(data_root):
    """data_root itself, or its NESTED folder that holds the domains."""
    nested = [os.path.join(data_root, name) for name in NESTED if find_domains(os.path.join(data_root, name))]
    return nested[0] if nested else data_root


def resolve_domain(data_root, name):
    """Path of the class root of domain `name` (full name or initial, any case) under data_root."""
    found = find_domains(data_root)
    if not found:
        raise UserError(f"no domains found under '{data_root}'. {EXPECTED_TREE}")
    return os.path.join(data_root, match_domain(name, found, f"under '{data_root}'; found"))


def match_domain(name, domains, where):
    """The one of these domain names that `name` means (the name or its initial, any case); where: how the error
    introduces the list."""
    matches = [d for d in domains if names_domain(name, d)]
    if len(matches) > 1:  # a folder named by one letter, and another with that initial: the name is the first's
        matches = [d for d in matches if d.lower() == name.lower()] or matches
    if len(matches) != 1:
        why = "is ambiguous" if matches else "was not found"
        raise UserError(f"domain '{name}' {why} {where}: {', '.join(domains)}. Use a folder name or its initial.")
    return matches[0]


def names_domain(name, domain):
    """Whether a domain's name as the flags give it (--source, --target, --tasks: its folder name or its initial,
    any case) names this domain folder."""
    return name.lower() == domain.lower() or (len(name) == 1 and name.lower() == domain[:1].lower())


def class_difference(source, source_classes, target, target_classes):
    """"only in <source>: a, b; only in <target>: -" for two domains' class names, or None when they agree."""
    only_source = sorted(set(source_classes) - set(target_classes))
    only_target = sorted(set(target_classes) - set(source_classes))
    if not (only_source or only_target):
        return None
    return f"only in {source}: {', '.join(only_source) or '-'}; only in {target}: {', '.join(only_target) or '-'}"


def check_same_classes(source, target):
    """Labels are ImageFolder indices into the sorted class names, so they agree only if the names do."""
    if source.classes == target.classes:
        return
    raise UserError(f"source and target have different classes: "
                    f"{class_difference(source.root, source.classes, target.root, target.classes)}. "
                    "Classes are matched by folder name; rename or remove folders so both domains have the same set.")


class Folder(datasets.ImageFolder):
    """torchvision's ImageFolder without hidden class folders (.thumbs, .ipynb_checkpoints), which every count and
    check here skips too: the classes a run trains on are the ones its fingerprint and checks saw."""

    def find_classes(self, directory):
        classes = subdirs(directory)
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
        return classes, {name: i for i, name in enumerate(classes)}


def images_per_class(root):
    """{class: number of images} that Folder would find under root (a class root), without decoding any."""
    classes = subdirs(root)
    index = {c: i for i, c in enumerate(classes)}
    counts = dict.fromkeys(classes, 0)
    for _, label in datasets.folder.make_dataset(root, index, datasets.folder.IMG_EXTENSIONS, allow_empty=True):
        counts[classes[label]] += 1
    return counts


def class_counts(data_root, name):
    """images_per_class of domain `name` under data_root."""
    return images_per_class(class_root(resolve_domain(data_root, name)))


def count_images(root):
    return sum(images_per_class(root).values())


def fingerprint(data_root, name):
    """What identifies the data of domain `name` without decoding it: its class names (hashed) and image count, and
    its split lists' lengths where it has them. Two copies of a dataset in folders of the same name (a subset, a
    rebuilt tree) differ here."""
    counts = class_counts(data_root, name)
    digest = hashlib.sha1("\n".join(counts).encode()).hexdigest()[:8]
    lists = list_files(data_root, os.path.basename(resolve_domain(data_root, name)))
    split = f", split {' / '.join(str(len(listed(path))) for path in lists)} (train / test)" if lists else ""
    return f"{len(counts)} classes ({digest}), {sum(counts.values())} images{split}"


def cache_bytes(data_root, names, resize_size):
    """Memory the cache of these domains will take: images x 3 x resize_size^2 bytes (uint8)."""
    count = sum(count_images(class_root(resolve_domain(data_root, name))) for name in names)
    return count * 3 * resize_size ** 2


def available_memory(device):
    """Bytes the cache can live in: the GPU's free memory, or the host's available memory, less where a cgroup (a
    container's, a SLURM job's memory request) allows less (None: unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:  # MemAvailable counts the page cache the kernel can give back
            host = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        try:
            host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            host = None
    limits = [x for x in (host, cgroup_memory_left()) if x is not None]
    return min(limits) if limits else None


def cgroup_memory_left(proc="/proc/self/cgroup", mount="/sys/fs/cgroup"):
    """Bytes this process may still take under the memory limits of its cgroups, v2 or v1 (its own and every
    enclosing one: the limit may be set on a parent), page cache counted as free since the kernel gives it back;
    None where no limit is set or none can be read (not Linux)."""
    try:
        with open(proc) as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return None
    left = []
    for _, controllers, path in (line for line in lines if len(line) == 3):
        if controllers == "":  # (v2: memory.max and memory.stat's anon; v1: memory.limit_in_bytes and total_rss)
            base, limit_file, used_key = mount, "memory.max", "anon"
        elif "memory" in controllers.split(","):
            base, limit_file, used_key = os.path.join(mount, "memory"), "memory.limit_in_bytes", "total_rss"
        else:
            continue
        parts = [part for part in path.split("/") if part]
        for depth in range(len(parts), -1, -1):
            folder = os.path.join(base, *parts[:depth])
            try:
                with open(os.path.join(folder, limit_file)) as f:
                    limit = f.read().strip()
                with open(os.path.join(folder, "memory.stat")) as f:
                    used = next(int(line.split()[1]) for line in f if line.split()[0] == used_key)
            except (OSError, StopIteration, ValueError, IndexError):
                continue
            if limit.isdigit() and int(limit) < 1 << 60:  # ("max", or v1's near-2^63: no limit)
                left.append(max(int(limit) - used, 0))
    return min(left) if left else None


CACHE_SHARE = 0.8  # of the memory left, what decoded images may take (a fifth stays for the model and the rest)


def check_cache_fits(data_root, names, resize_size, device):
    """Stop before decoding when the cache would not fit (the kernel would kill the process mid-decode)."""
    need, (have, where) = cache_bytes(data_root, names, resize_size), memory_for_cache(device)
    if have is not None and need > CACHE_SHARE * have:
        raise UserError(f"the cache of {', '.join(names)} at {resize_size}x{resize_size} needs {need / 1e9:.1f} GB, "
                        f"and {have / 1e9:.1f} GB of {where} is here (at most {CACHE_SHARE:.0%} of it is used for the "
                        "cache). Run with --cache=disk (decoded once into a file, read from there) or --cache=none "
                        "(decoded per sample, slower, in little memory), or with a smaller --resize_size.")


def memory_for_cache(device):
    """(bytes, what they are) this process's memory cache may take: the free GPU memory or the available memory,
    shared with the other processes torchrun started on this node that hold their own cache in it (every one on the
    CPU; on a GPU, those given the same GPU), or with the others of --runs_at_once (RUNS_AT_ONCE: all on one device)."""
    have, where = available_memory(device), "free GPU memory" if device.type == "cuda" else "available memory"
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.type == "cuda":
        processes = math.ceil(processes / max(torch.cuda.device_count(), 1))
    started = "torchrun started"
    if RUNS_AT_ONCE in os.environ:  # ("k/N", set by runs/at_once.py for each of its N processes)
        processes, started = int(os.environ[RUNS_AT_ONCE].split("/")[1]), "of --runs_at_once"
    if have is None or processes == 1:
        return have, where
    shared = "on this GPU" if device.type == "cuda" else "on this node"
    return have // processes, f"{where} per process ({have / 1e9:.1f} GB over the {processes} processes {started} " \
                              f"{shared})"


RUNS_AT_ONCE = "OFFICE31_RUNS_AT_ONCE"  # "k/N" in the environment of each of the N processes of --runs_at_once=N


CACHES = ("auto", "memory", "disk", "none")
CACHE_WORDS = {"true": "memory", "1": "memory", "false": "none", "0": "none"}  # the boolean it was


def choose_cache(cache, data_root, names, resize_size, device):
    """What --cache means for these domains: memory (checked to fit), disk or none as given; auto: memory where the
    decoded images fit in 80% of the memory here, else disk, said with the sizes."""
    if cache == "memory":
        check_cache_fits(data_root, names, resize_size, device)
    if cache != "auto":
        return cache
    need, (have, where) = cache_bytes(data_root, names, resize_size), memory_for_cache(device)
    if have is None or need <= CACHE_SHARE * have:
        return "memory"
    print(f"--cache=auto: the decoded images of {', '.join(names)} take {need / 1e9:.1f} GB, more than "
          f"{CACHE_SHARE:.0%} of the {have / 1e9:.1f} GB of {where} here, so they are kept on disk (--cache_dir) and "
          "read from there.")
    return "disk"


# ---------------------------------------------------------------------------------------------------------
# Decoding and transforms


def load_rgb(path):
    """Any mode (grayscale, CMYK, RGBA, palette) as RGB; a broken file is named, not a traceback."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as e:
        raise UserError(f"cannot read image '{path}' ({type(e).__name__}: {e}). Replace or delete it.") from None


def caffe_pixels(image_uint8):
    """A CHW uint8 RGB tensor as Caffe's input: BGR, 0-255, minus the ImageNet mean."""
    return image_uint8.flip(-3).float() - torch.tensor(CAFFE_MEAN_BGR, device=image_uint8.device).view(3, 1, 1)


def to_network_pixels(pixels):
    """The last per-sample transforms: PIL image -> the tensor the network takes."""
    if pixels == "caffe":
        return [transforms.PILToTensor(), caffe_pixels]
    return [transforms.ToTensor(), transforms.Normalize(*mean_and_std(pixels))]


def mean_and_std(pixels):
    return (IMAGENET_MEAN, IMAGENET_STD) if pixels == "imagenet" else pixels


def resize(resize_size, interpolation="bilinear"):
    """To resize_size x resize_size (aspect ratio not kept), with the interpolation the network's weights name."""
    return transforms.Resize((resize_size, resize_size), transforms.InterpolationMode(interpolation))


def train_transform(resize_size, crop_size, pixels="imagenet", interpolation="bilinear"):
    return transforms.Compose([
        resize(resize_size, interpolation),
        transforms.RandomCrop(crop_size),
        transforms.RandomHorizontalFlip(),
        *to_network_pixels(pixels),
    ])


def test_transform(resize_size, crop_size, pixels="imagenet", interpolation="bilinear"):
    return transforms.Compose([
        resize(resize_size, interpolation),
        transforms.CenterCrop(crop_size),
        *to_network_pixels(pixels),
    ])


def normalize(batch_uint8, pixels="imagenet"):
    """uint8 NCHW -> what the network takes. ImageNet: ToTensor's x / 255 and Normalize's (x - mean) / std,
    folded into one multiply-add (equal up to float rounding); Caffe: caffe_pixels (exactly equal)."""
    if pixels == "caffe":
        return caffe_pixels(batch_uint8)
    mean, std = (torch.tensor(v, device=batch_uint8.device).view(1, 3, 1, 1) for v in mean_and_std(pixels))
    return batch_uint8.float().mul_(1 / (255 * std)).add_(-mean / std)


def crop_batch(images, index, tops, lefts, flips, crop_size):
    """Crop images[index[k]] at (tops[k], lefts[k]) and flip it when flips[k]: one crop per image, where a
    batched torchvision transform would draw one crop for the whole batch. Views, then a single copy."""
    crops = [images[i, :, top:top + crop_size, left:left + crop_size]
             for i, top, left in zip(index.tolist(), tops.tolist(), lefts.tolist())]
    return torch.stack([crop.flip(-1) if flip else crop for crop, flip in zip(crops, flips.tolist())])


def random_crop_batch(images, index, crop_size, generator):
    """RandomCrop + RandomHorizontalFlip drawn independently for each image (same ranges as torchvision's)."""
    n, size = len(index), images.shape[-1]
    tops = torch.randint(0, size - crop_size + 1, (n,), generator=generator)
    lefts = torch.randint(0, size - crop_size + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return crop_batch(images, index, tops, lefts, flips, crop_size)


def center_crop_batch(images, index, crop_size):
    """CenterCrop's offset (it rounds half the margin) for every image."""
    n, offset = len(index), int(round((images.shape[-1] - crop_size) / 2.0))
    at = torch.full((n,), offset)
    return crop_batch(images, index, at, at, torch.zeros(n, dtype=torch.bool), crop_size)


# ---------------------------------------------------------------------------------------------------------
# The two domain paths


class Positions:
    """Which images of a domain its batches draw: every one (index and test_index None); a part of it (index: a
    held-out split, a train list; part()); and, where the dataset lists them (DomainNet), others to test on
    (test_index: its test list; with_lists())."""
    index = None
    test_index = None

    def __len__(self):
        return len(self.images) if self.index is None else len(self.index)

    def tested(self):
        """The positions test_batches goes over, each once."""
        chosen = self.index if self.test_index is None else self.test_index
        return torch.arange(len(self.images)) if chosen is None else chosen


class ImageFolderDomain(Positions):
    """The classic per-sample path: ImageFolder, PIL resize/crop/flip in DataLoader workers every epoch."""

    def __init__(self, root, name, resize_size, num_workers, device, interpolation="bilinear"):
        self.root, self.name, self.resize_size, self.interpolation = root, name, resize_size, interpolation
        self.num_workers, self.device = num_workers, device
        self.images = Folder(root, loader=load_rgb)
        self.classes, self.targets = self.images.classes, self.images.targets
        self.paths = [path for path, _ in self.images.samples]

    def _loader(self, transform, batch_size, sampler=None, generator=None, positions=None):
        self.images.transform = transform
        images = self.images if positions is None else Subset(self.images, positions.tolist())
        return DataLoader(images, batch_size=batch_size, sampler=sampler, generator=generator,
                          num_workers=self.num_workers, pin_memory=self.device.type == "cuda")

    def train_batches(self, num_batches, batch_size, crop_size, generator, pixels="imagenet"):
        # Shuffled passes over the source, back to back, for exactly num_batches full batches.
        sampler = RandomSampler(range(len(self)), num_samples=num_batches * batch_size, generator=generator)
        transform = train_transform(self.resize_size, crop_size, pixels, self.interpolation)
        loader = self._loader(transform, batch_size, sampler, generator, self.index)
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def test_batches(self, batch_size, crop_size, pixels="imagenet"):
        # A generator of its own: DataLoader draws a seed from the given one (else from the global RNG that the
        # training crops, flips and dropout use), and evaluating must not change the training trajectory.
        transform = test_transform(self.resize_size, crop_size, pixels, self.interpolation)
        loader = self._loader(transform, batch_size, generator=torch.Generator(), positions=self.tested())
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


class _Resized(Dataset):
    def __init__(self, samples, resize_size, interpolation):
        self.samples, self.resize = samples, resize(resize_size, interpolation)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return pil_to_tensor(self.resize(load_rgb(self.samples[i][0])))


def decode_into(images, samples, name, resize_size, interpolation, num_workers):
    """Decode every sample, resized to resize_size x resize_size uint8, into images (a tensor of that shape, in
    memory or a memory-mapped file), with a progress bar and one line saying how long it took."""
    loader = DataLoader(_Resized(samples, resize_size, interpolation), batch_size=64, num_workers=num_workers)
    start, began = 0, time.time()
    # disable=None: a bar on a terminal only; a log gets the one line below instead of thousands
    for batch in tqdm(loader, desc=f"decoding {name}", unit="batch", leave=False, disable=None):
        images[start:start + len(batch)] = batch.to(images.device)
        start += len(batch)
    print(f"decoded {name}: {len(samples)} images at {resize_size}x{resize_size} in {time.time() - began:.1f}s")


class CachedDomain(Positions):
    """Every image decoded once to resize x resize uint8 (about 196 KB each at 256) and kept on the device;
    crops, flips and normalisation run there on whole batches, with per-sample random offsets."""

    def __init__(self, root, name, resize_size, num_workers, device, interpolation="bilinear"):
        folder = Folder(root)  # indexes files and classes only; decoding happens below
        self.root, self.name, self.classes, self.targets = root, name, folder.classes, folder.targets
        self.paths = [path for path, _ in folder.samples]
        self.labels = torch.tensor(folder.targets, dtype=torch.long, device=device)
        self.images = self.decoded(folder.samples, resize_size, interpolation, num_workers, device)

    def decoded(self, samples, resize_size, interpolation, num_workers, device):
        """Every image, resize_size x resize_size uint8, in a tensor on the device."""
        images = torch.empty((len(samples), 3, resize_size, resize_size), dtype=torch.uint8, device=device)
        decode_into(images, samples, self.name, resize_size, interpolation, num_workers)
        return images

    def train_batches(self, num_batches, batch_size, crop_size, generator, pixels="imagenet"):
        # Same sampling as the per-sample path: shuffled passes back to back.
        order = RandomSampler(range(len(self)), num_samples=num_batches * batch_size, generator=generator)
        order = torch.tensor(list(order))
        if self.index is not None:  # a part of the domain (split_held_out): positions in it, mapped to images
            order = self.index[order]
        for index in self.read_ahead(order.split(batch_size)):
            images = random_crop_batch(self.images, index, crop_size, generator).to(self.labels.device)
            yield normalize(images, pixels), self.labels[index.to(self.labels.device)]

    def test_batches(self, batch_size, crop_size, pixels="imagenet"):
        for index in self.read_ahead(self.tested().split(batch_size)):
            images = center_crop_batch(self.images, index, crop_size).to(self.labels.device)
            yield normalize(images, pixels), self.labels[index.to(self.labels.device)]

    def read_ahead(self, batches):
        """The batches' image positions, one batch at a time (the disk cache reads the next one meanwhile)."""
        yield from batches


class DiskCachedDomain(CachedDomain):
    """The cached path with its decoded images in a file instead of memory: one uint8 file per domain, resize and
    interpolation under cache_dir, built once (by one process, under a lock, then renamed into place) and read
    through a memory map by every run and process after it. Its name holds a digest of the images' paths, sizes and
    times, so other data gets a file of its own, and DISK_CACHE_FORMAT, so pixels made by other code do too (the
    file's mechanics: datasets/disk_cache.py). Crops are cut on the CPU, page by page, then moved to the device; the
    same generator draws the same crops and flips as in memory."""

    def __init__(self, root, name, resize_size, num_workers, device, interpolation="bilinear", cache_dir=".cache"):
        self.cache_dir = cache_dir
        super().__init__(root, name, resize_size, num_workers, device, interpolation)

    def decoded(self, samples, resize_size, interpolation, num_workers, device):
        """Every image, resize_size x resize_size uint8, in its file (built here if it is not there yet), mapped."""
        shape = (len(samples), 3, resize_size, resize_size)
        self.path = disk_cache_path(self.cache_dir, self.name, self.root, samples, resize_size, interpolation)
        if not whole(self.path, shape):
            if os.path.exists(self.path):
                print(f"notice: {self.path} has {os.path.getsize(self.path)} bytes, not the {math.prod(shape)} of "
                      "its images (cut short by a copy or a full disk?): building it again.")
            try:
                build_disk_cache(self.path, shape, self.name, lambda images: decode_into(
                    images, samples, self.name, resize_size, interpolation, num_workers))
            except OSError as e:  # a read-only data folder, a quota, a disk filled by another build meanwhile
                fix = "free some space there, point --cache_dir at a larger disk" if e.errno in (
                    errno.ENOSPC, errno.EDQUOT) else "point --cache_dir at a folder you can write to"
                raise UserError(f"cannot write the disk cache of {self.name} to {os.path.dirname(self.path)} "
                                f"({e.strerror or e}): {fix}, or run with --cache=none.") from None
        else:
            print(f"cache of {self.name}: {self.path}")
        self.map, images = open_disk_cache(self.path, shape)
        have = available_memory(torch.device("cpu"))
        self.larger_than_memory = have is not None and math.prod(shape) > CACHE_SHARE * have
        return images

    def read_ahead(self, batches):
        """Before the crops of one batch are cut, ask the kernel to start reading the next batch's images from the
        disk (madvise WILLNEED): they arrive while this batch is cut and trained on, and a batch's images are read
        together rather than one page fault at a time. Where the file is larger than the memory left, a batch's
        pages are also let go once its crops are cut (MADV_DONTNEED; the data stays in the file): the kernel holds
        on to pages a process has mapped and touched, and under a limit it kept failing to free them (under 5%
        of the rate; docs/speed.md). Where the file fits, they stay mapped for the next epoch."""
        batches = list(batches)
        if batches:
            self.advise(batches[0], "MADV_WILLNEED")
        for k, index in enumerate(batches):
            if k + 1 < len(batches):
                self.advise(batches[k + 1], "MADV_WILLNEED")
            yield index
            if self.larger_than_memory:
                self.advise(index, "MADV_DONTNEED")

    def advise(self, index, name):
        """madvise over the images at these positions (not on Windows: pages are then read as they are touched)."""
        advice = getattr(mmap, name, None)
        if advice is None or not hasattr(self.map, "madvise"):
            return
        size = math.prod(self.images.shape[1:])
        for i in index.tolist():
            start = i * size - i * size % mmap.PAGESIZE  # madvise takes page-aligned starts
            self.map.madvise(advice, start, i * size + size - start)


def part(domain, index):
    """The images of a domain at these positions of its training images (a tensor), as a domain of its own: the
    same batches over them, training and testing alike."""
    subset = copy.copy(domain)
    subset.index = index if domain.index is None else domain.index[index]
    subset.test_index = None
    return subset


def relabelled(domain, labels):
    """The domain with these labels (a tensor: one per image of its folder) in place of its own: the batches a
    source-free method trains on carry its pseudo-labels, and the domain's own labels are not in them."""
    copied = copy.copy(domain)
    copied.targets = labels.tolist()
    if isinstance(domain, ImageFolderDomain):
        copied.images = copy.copy(domain.images)
        copied.images.samples = [(path, label) for (path, _), label in zip(domain.images.samples, copied.targets)]
        copied.images.targets = copied.targets
    else:
        copied.labels = labels.to(domain.labels.device)
    return copied


def shuffled(domain, generator):
    """The domain's tested images (each once) in an order drawn by generator, as a domain whose test_batches go
    over them in that order: a test-time method meets the target's classes mixed, as a stream of images would."""
    tested = domain.tested()
    copied = copy.copy(domain)
    copied.index, copied.test_index = tested[torch.randperm(len(tested), generator=generator)], None
    return copied


def list_files(data_root, name):
    """DomainNet's split lists of domain `name`, <data_root>/<name>_train.txt and _test.txt, or None where the
    dataset has none (a domain is then trained and tested on all its images)."""
    paths = [os.path.join(data_root, f"{name}_{split}.txt") for split in ("train", "test")]
    found = [os.path.exists(path) for path in paths]
    if any(found) and not all(found):
        raise UserError(f"{paths[found.index(False)]} is missing, but {paths[found.index(True)]} is there: a domain "
                        "with split lists needs both (its train list to train on, its test list to test on).")
    return paths if all(found) else None


def listed(path):
    """The images a split list names, as paths relative to the dataset's root ("clipart/bee/clipart_012_0001.jpg
    271" lines: the path, then a label, which the class folder gives here too)."""
    with open(path, encoding="utf-8") as f:
        return [os.path.normpath(line.split()[0]) for line in f if line.strip()]


def with_lists(domain, data_root):
    """The domain trained on its train list and tested on its test list, where the dataset has them (list_files);
    a listed image that is not in the tree stops the run, naming it."""
    lists = list_files(data_root, domain.name)
    if lists is None:
        return domain
    position = {os.path.normpath(os.path.relpath(path, data_root)): k for k, path in enumerate(domain.paths)}
    chosen = []
    for path in lists:
        names = listed(path)
        missing = [name for name in names if name not in position]
        if missing:
            raise UserError(f"{path} lists {len(missing)} images that are not under {data_root} (the first: "
                            f"{missing[0]}): the tree and its lists come from different copies of the dataset. "
                            "Download both again, or remove the lists to use every image.")
        chosen.append(torch.tensor([position[name] for name in names], dtype=torch.long))
    domain.index, domain.test_index = chosen
    return domain


def is_demo(domain, folder, root):
    """Whether a domain is the demo's as datasets/demo.py draws it (its classes, its image count, its images' size:
    an Office-31 subset of those classes and counts has photographs of other sizes): no subset of Office-31 to give
    notice of, though its domains bear Office-31's names. root: the folder of its class folders."""
    if tuple(domain.classes) != demo.CLASSES or len(domain) != demo.DOMAINS.get(folder, 0) * len(demo.CLASSES):
        return False
    first = os.path.join(root, domain.classes[0], min(os.listdir(os.path.join(root, domain.classes[0]))))
    try:
        with Image.open(first) as image:
            return image.size == demo.SIZE
    except OSError:
        return False


HELD_OUT_SEED = 0  # the held-out split is the same in every run, whatever its --seed: runs compare on one split


def split_held_out(domain, fraction):
    """(training part, held-out part) of a domain: round(fraction x n) images of each class of n (but one left to
    train on; none of a class of one image), drawn by a generator of a fixed seed, so the split is the same in every
    run. Its labels are the source's: the validators that read them (selection/validators.py) never see the target's."""
    targets = torch.tensor(domain.targets if domain.index is None else
                           [domain.targets[i] for i in domain.index.tolist()])
    generator = torch.Generator().manual_seed(HELD_OUT_SEED)
    held = []
    for label in range(len(domain.classes)):
        members = (targets == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        held.append(members[:min(round(fraction * len(members)), len(members) - 1)])
    out = torch.cat(held).sort().values
    train = torch.ones(len(targets), dtype=torch.bool)
    train[out] = False
    return part(domain, train.nonzero().flatten()), part(domain, out)


def split_source(source, fraction):
    """(the source's training part, its held-out part or None): --source_val's split (split_held_out)."""
    if not fraction:
        return source, None
    source, held = split_held_out(source, fraction)
    if len(held) < 2:
        raise UserError(f"--source_val={fraction} holds out {len(held)} of the {len(source) + len(held)} "
                        f"images of {source.name} (round(fraction x n) of each class of n): the held-out validators "
                        "need at least 2. Give a larger fraction.")
    return source, held


def load_domain(data_root, name, resize_size, cache, num_workers, device, interpolation="bilinear", cache_dir=None):
    """Domain `name` under data_root as a CachedDomain (cache "memory" or True), a DiskCachedDomain ("disk", its
    files under cache_dir, by default <data_root>/.cache) or an ImageFolderDomain ("none" or False)."""
    domain_dir = resolve_domain(data_root, name)
    root = class_root(domain_dir)
    if not subdirs(root):
        raise UserError(f"'{root}' has no class folders. {EXPECTED_TREE}")
    folder = os.path.basename(domain_dir)
    kind = {"disk": DiskCachedDomain, "none": ImageFolderDomain, False: ImageFolderDomain}.get(cache, CachedDomain)
    disk = {"cache_dir": cache_dir or os.path.join(data_root, ".cache")} if kind is DiskCachedDomain else {}
    try:
        domain = kind(root, folder, resize_size, num_workers, torch.device(device), interpolation, **disk)
    except FileNotFoundError as e:  # ImageFolder: a class folder without images
        raise UserError(f"{e}. Every class folder under '{root}' needs at least one image.") from None
    domain = with_lists(domain, data_root)
    full = {**OFFICE31_SIZES, **OFFICE_HOME_SIZES}
    if full.get(folder, len(domain)) != len(domain) and not is_demo(domain, folder, root):
        dataset = "Office-31" if folder in OFFICE31_SIZES else "Office-Home"
        print(f"notice: {folder} has {len(domain)} images, not the {full[folder]} of the full {dataset} "
              "(fine for a subset).")
    return domain
