"""The disk cache's files (--cache=disk): a domain's decoded images, resize x resize uint8, in one file under
cache_dir, built once by one process and read through a memory map by every run after it.

    path = disk_cache_path(cache_dir, "amazon", root, samples, 256, "bilinear")   # named by the data and format
    if not whole(path, shape):
        build_disk_cache(path, shape, "amazon", decode)   # decode(images) fills a uint8 tensor of that shape
    mapped, images = open_disk_cache(path, shape)         # the file's memory map, and a uint8 tensor over it

data_loader.DiskCachedDomain serves batches from it; this file imports nothing of data_loader (which imports it), so
decoding the images is the caller's, handed in as decode.
"""
import errno
import hashlib
import math
import mmap
import os
import shutil

import numpy
import torch

from common.errors import UserError
from common.files import lock, temporary

# How a disk cache file's pixels are made from the images: bump it whenever decoding, resizing or the file's layout
# changes, so that the files of the old pixels are built again rather than read (their names hold it). Format 1's
# names hold none: the files written before formats were named are format 1, and stay in use.
DISK_CACHE_FORMAT = 1


def disk_cache_path(cache_dir, name, root, samples, resize_size, interpolation):
    """<cache_dir>/<domain>_<resize>_<interpolation>[_v<format>]_<digest>.uint8, format DISK_CACHE_FORMAT (from 2
    on) and the digest of each image's path (under root), size, modification time and label: a changed, added or
    removed image makes another file (a copied tree too, once, unless the copy kept the times), and so does another
    format."""
    digest = hashlib.sha1()
    for path, label in samples:
        stat = os.stat(path)
        digest.update(f"{os.path.relpath(path, root)}\t{stat.st_size}\t{stat.st_mtime_ns}\t{label}\n".encode())
    version = f"_v{DISK_CACHE_FORMAT}" if DISK_CACHE_FORMAT > 1 else ""
    return os.path.join(cache_dir, f"{name}_{resize_size}_{interpolation}{version}_{digest.hexdigest()[:12]}.uint8")


def build_disk_cache(path, shape, name, decode):
    """Decode the domain (decode(images), images a uint8 tensor of shape mapped onto the file) into a temporary file
    beside path and rename it into place, under a lock: a second process waits and then finds the file; a process
    killed mid-build leaves only its temporary file, <path>.<pid>.tmp."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".lock", "a") as held:
        lock(held)  # (Windows: no flock; two processes may then both build it, the last rename wins)
        if whole(path, shape):  # another process built it while this one waited
            return
        need, have = math.prod(shape), shutil.disk_usage(os.path.dirname(path) or ".").free
        if need > have:
            raise UserError(f"the disk cache of {name} needs {need / 1e9:.1f} GB, and {have / 1e9:.1f} GB are free "
                            f"in {os.path.dirname(path)}: free some space, or point --cache_dir at a larger disk.")
        with temporary(path, os.getpid()) as tmp:
            with open(tmp, "wb") as f:  # its blocks taken now: a disk that fills meanwhile (another build, a quota)
                reserve(f, need)        # stops here with the reason, not later in a write to the map (SIGBUS)
            images = numpy.memmap(tmp, dtype=numpy.uint8, mode="r+", shape=shape)
            decode(torch.from_numpy(images))
            images.flush()
            del images
            os.replace(tmp, path)
    print(f"wrote the cache of {name}: {path} ({need / 1e9:.2f} GB)")


def whole(path, shape):
    """Whether the cache file is there with every image's bytes (files are renamed into place whole, so a short one
    was cut short outside: a copy, a full disk)."""
    return os.path.exists(path) and os.path.getsize(path) == math.prod(shape)


def reserve(f, size):
    """Give the open file `size` bytes, its blocks allocated on the disk where the system can (posix_fallocate);
    elsewhere a sparse file of that size."""
    try:
        os.posix_fallocate(f.fileno(), 0, size)
    except (AttributeError, OSError) as e:  # (not on macOS and Windows; a C library that does not emulate it)
        if isinstance(e, OSError) and e.errno != errno.EOPNOTSUPP:
            raise
        f.truncate(size)


def open_disk_cache(path, shape):
    """(the file's memory map, a uint8 tensor of shape over it): pages are read from the file as they are touched."""
    # ACCESS_COPY: never written back (torch wants a writable array)
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    return mapped, torch.from_numpy(numpy.frombuffer(mapped, dtype=numpy.uint8).reshape(shape))
