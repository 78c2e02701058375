"""--cache=disk: the decoded images in a file per domain, read through a memory map: the same batches as the memory
cache, built once and shared, rebuilt for other data; --cache=auto picks it where memory would not hold the domains."""
import errno
import os
import re
import time

import pytest
import torch

import data_loader
import office31
from datasets import disk_cache
from results import store
from conftest import make_tree, together
from common.errors import UserError

TINY = ["--model=resnet18", "--weights=none", "--resize_size=24", "--crop_size=20", "--epochs=2",
        "--iters_per_epoch=2", "--batch_size=6", "--num_workers=0", "--device=cpu", "--amp=off"]


@pytest.fixture
def pair(tmp_path):
    return make_tree(tmp_path / "office31", {"amazon": 5, "webcam": 3}, size=(30, 26))


def load(root, cache, cache_dir=None):
    return data_loader.load_domain(root, "amazon", 24, cache, 0, "cpu", cache_dir=cache_dir)


def test_the_disk_cache_gives_the_memory_caches_batches_image_for_image(pair, tmp_path):
    memory, disk = load(pair, "memory"), load(pair, "disk", tmp_path / "cache")
    assert torch.equal(memory.images, disk.images) and torch.equal(memory.labels, disk.labels)
    assert os.path.dirname(disk.path) == str(tmp_path / "cache")
    for x in (memory, disk):
        x.test = list(x.test_batches(4, 20))
        x.train = list(x.train_batches(5, 6, 20, torch.Generator().manual_seed(3)))
    for a, b in zip(memory.test + memory.train, disk.test + disk.train):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert len(disk.train) == 5
    held_memory, held_disk = data_loader.split_held_out(memory, 0.4)[1], data_loader.split_held_out(disk, 0.4)[1]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(held_memory.test_batches(4, 20), held_disk.test_batches(4, 20)))


@pytest.mark.parametrize("larger_than_memory", [False, True])
def test_each_batch_asks_for_the_next_batchs_images_before_it_is_cut(pair, tmp_path, larger_than_memory):
    """Read-ahead: the kernel is asked (madvise WILLNEED) for the pages of batch k + 1's images before batch k is
    handed out, and for the first batch's before anything; where the file is larger than memory, batch k's pages
    are let go (DONTNEED) once the next batch is asked for, and never otherwise. The ranges are page-aligned and
    hold each image whole."""
    disk = data_loader.load_domain(pair, "amazon", 64, "disk", 0, "cpu", cache_dir=tmp_path)  # (3 pages an image)
    assert disk.larger_than_memory is False  # (15 small images)
    disk.larger_than_memory = larger_than_memory
    asked = {data_loader.mmap.MADV_WILLNEED: [], data_loader.mmap.MADV_DONTNEED: []}

    class Recorder:
        def madvise(self, option, start, length):
            assert start % data_loader.mmap.PAGESIZE == 0
            asked[option].append((start, start + length))

    disk.map = Recorder()
    size = disk.images[0].numel()

    def images(option):
        found = {i for i in range(len(disk.images)) for a, b in asked[option] if a <= i * size and (i + 1) * size <= b}
        asked[option].clear()
        return found

    order = [index.tolist() for index in torch.arange(len(disk.images)).repeat(3).split(4)]
    batches = disk.read_ahead(torch.tensor(index) for index in order)
    for k, index in enumerate(batches):
        assert index.tolist() == order[k]
        assert images(data_loader.mmap.MADV_WILLNEED) == \
            set(order[k + 1] if k + 1 < len(order) else []) | (set(order[0]) if k == 0 else set())
        let_go = set(order[k - 1]) if k > 0 and larger_than_memory else set()
        assert images(data_loader.mmap.MADV_DONTNEED) == let_go
    assert images(data_loader.mmap.MADV_DONTNEED) == (set(order[-1]) if larger_than_memory else set())
    seen = [index.tolist() for index in disk.read_ahead(disk.tested().split(3))]  # (the test batches too)
    assert sum(seen, []) == list(range(len(disk.images)))
    assert images(data_loader.mmap.MADV_WILLNEED) == set(range(len(disk.images)))


def test_a_file_larger_than_memory_gives_the_same_batches(pair, tmp_path, monkeypatch):
    """With the limit read from a cgroup and the pages let go after each batch: the memory cache's batches."""
    memory = load(pair, "memory")
    monkeypatch.setattr(data_loader, "cgroup_memory_left", lambda: 1000)
    disk = load(pair, "disk", tmp_path)
    assert disk.larger_than_memory
    for a, b in zip(memory.train_batches(6, 6, 20, torch.Generator().manual_seed(3)),
                    disk.train_batches(6, 6, 20, torch.Generator().manual_seed(3))):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def cgroup_tree(tmp_path, own, files):
    """A fake /proc/self/cgroup (lines `own`) and cgroup mount (files {path: text}) under tmp_path."""
    tmp_path.mkdir()
    (tmp_path / "cgroup").write_text("".join(line + "\n" for line in own))
    for path, text in files.items():
        (tmp_path / "mount" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "mount" / path).write_text(text)
    return str(tmp_path / "cgroup"), str(tmp_path / "mount")


def test_a_cgroups_memory_limit_is_what_is_left(tmp_path, monkeypatch):
    """cgroup v2: the limit set on a parent counts (a SLURM job's, the step's own being "max"), less the anonymous
    memory in use; page cache counts as free. v1: memory.limit_in_bytes less total_rss; its near-2^63 is no limit.
    No memory controller, no files: None."""
    gb = 1 << 30
    v2 = cgroup_tree(tmp_path / "v2", ["0::/job_7/step_0"], {
        "memory.max": "max\n", "memory.stat": "anon 1\n",
        "job_7/memory.max": f"{4 * gb}\n", "job_7/memory.stat": f"anon {gb}\nfile {2 * gb}\n",
        "job_7/step_0/memory.max": "max\n", "job_7/step_0/memory.stat": f"anon {gb}\nfile {2 * gb}\n"})
    assert data_loader.cgroup_memory_left(*v2) == 3 * gb
    v1 = cgroup_tree(tmp_path / "v1", ["5:cpu,cpuacct:/x", "4:memory:/docker/abc", "0::/"], {
        "memory/memory.limit_in_bytes": "9223372036854771712\n", "memory/memory.stat": "total_rss 5\n",
        "memory/docker/abc/memory.limit_in_bytes": f"{2 * gb}\n",
        "memory/docker/abc/memory.stat": f"cache {gb}\nrss 9\ntotal_rss {gb // 2}\n"})
    assert data_loader.cgroup_memory_left(*v1) == 2 * gb - gb // 2
    unlimited = cgroup_tree(tmp_path / "none", ["4:memory:/", "3:pids:/"], {
        "memory/memory.limit_in_bytes": "9223372036854771712\n", "memory/memory.stat": "total_rss 5\n"})
    assert data_loader.cgroup_memory_left(*unlimited) is None
    assert data_loader.cgroup_memory_left(str(tmp_path / "missing"), str(tmp_path)) is None
    assert data_loader.cgroup_memory_left(*cgroup_tree(tmp_path / "empty", ["0::/"], {})) is None
    monkeypatch.setattr(data_loader, "cgroup_memory_left", lambda: 3 * gb)
    assert data_loader.available_memory(torch.device("cpu")) <= 3 * gb  # the smaller of it and MemAvailable


def test_it_is_built_once_and_read_by_later_loads(pair, tmp_path, monkeypatch, capsys):
    first = load(pair, "disk")
    assert first.path.startswith(os.path.join(pair, ".cache"))
    assert "wrote the cache of amazon" in capsys.readouterr().out
    monkeypatch.setattr(data_loader, "decode_into", lambda *a: pytest.fail("decoded again"))
    second = load(pair, "disk")
    assert second.path == first.path and torch.equal(second.images, first.images)
    assert f"cache of amazon: {first.path}" in capsys.readouterr().out
    assert data_loader.find_domains(pair) == ["amazon", "webcam"]  # (.cache is no domain)


def test_other_data_gets_a_file_of_its_own_and_a_killed_build_leaves_nothing_used(pair, tmp_path):
    first = load(pair, "disk", tmp_path)
    make_tree(pair, {"amazon": 1}, classes=["bike"], start_seed=77)  # bike's first image drawn anew
    (tmp_path / (os.path.basename(first.path).replace("amazon", "other") + ".123.tmp")).write_bytes(b"half")
    second = load(pair, "disk", tmp_path)
    assert second.path != first.path and not torch.equal(second.images, first.images)
    assert torch.equal(second.images, load(pair, "memory").images)
    os.remove(os.path.join(pair, "amazon", "images", "bike", os.listdir(os.path.join(pair, "amazon", "images",
                                                                                        "bike"))[0]))
    third = load(pair, "disk", tmp_path)  # an image removed
    assert len(third) == len(first) - 1 and third.path not in (first.path, second.path)


def test_a_file_of_another_cache_format_is_built_again_not_reused(pair, tmp_path, monkeypatch, capsys):
    """A change to decoding or resizing bumps DISK_CACHE_FORMAT: the old format's file, whole and of the same data,
    holds the old pixels, and is not read."""
    old = load(pair, "disk", tmp_path)
    with open(old.path, "r+b") as f:  # the old code's pixels: not what decoding gives now
        f.write(bytes(64))
    capsys.readouterr()
    monkeypatch.setattr(disk_cache, "DISK_CACHE_FORMAT", disk_cache.DISK_CACHE_FORMAT + 1)
    new = load(pair, "disk", tmp_path)
    assert new.path != old.path and "wrote the cache of amazon" in capsys.readouterr().out
    assert torch.equal(new.images, load(pair, "memory").images)


def test_format_1_keeps_the_names_of_files_written_before_formats_were_named(pair, tmp_path):
    """The pixels of format 1 are those of every file written before: their names (no version) stay theirs, so an
    update of the code neither rebuilds them nor leaves them behind."""
    assert disk_cache.DISK_CACHE_FORMAT == 1
    assert re.fullmatch(r"amazon_24_bilinear_[0-9a-f]{12}\.uint8", os.path.basename(load(pair, "disk", tmp_path).path))


def test_a_full_disk_is_said_before_decoding(pair, tmp_path, monkeypatch):
    monkeypatch.setattr(disk_cache.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000})())
    with pytest.raises(UserError, match=r"the disk cache of amazon needs 0\.0 GB, and 0\.0 GB are free in .*: free "
                                        r"some space, or point --cache_dir at a larger disk"):
        load(pair, "disk", tmp_path / "cache")
    assert [name for name in os.listdir(tmp_path / "cache") if not name.endswith(".lock")] == []


def test_a_cache_folder_that_cannot_be_written_is_said(pair, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match=r"cannot write the disk cache of amazon to .*file.*: point --cache_dir at a "
                                        r"folder you can write to, or run with --cache=none"):
        load(pair, "disk", tmp_path / "file" / "cache")


def test_a_disk_that_fills_during_the_build_stops_it_before_decoding(pair, tmp_path, monkeypatch):
    """The free space was there when checked, then another build (or a quota) took it: the file's blocks are
    reserved before any image is decoded, so the build stops with the reason, where writing into a memory map on a
    full disk would kill the process (SIGBUS) and leave its temporary file."""
    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(disk_cache.os, "posix_fallocate", full)
    monkeypatch.setattr(data_loader, "decode_into", lambda *a: pytest.fail("decoded into a file without its blocks"))
    with pytest.raises(UserError, match=r"cannot write the disk cache of amazon to .*cache \(No space left on device"
                                        r"\): free some space there, point --cache_dir at a larger disk, or run with "
                                        r"--cache=none\."):
        load(pair, "disk", tmp_path / "cache")
    assert [name for name in os.listdir(tmp_path / "cache") if not name.endswith(".lock")] == []


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="no posix_fallocate on this system")
def test_the_files_blocks_are_taken_before_it_is_written(tmp_path):
    with open(tmp_path / "f", "wb") as f:
        disk_cache.reserve(f, 3 << 20)
    assert os.path.getsize(tmp_path / "f") == 3 << 20
    assert os.stat(tmp_path / "f").st_blocks * 512 >= 3 << 20  # (a sparse file of that size has none)


@pytest.mark.parametrize("missing", ["function", "EOPNOTSUPP"])
def test_where_blocks_cannot_be_reserved_a_sparse_file_serves(pair, tmp_path, monkeypatch, missing):
    def unsupported(fd, offset, size):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
    if missing == "function":
        monkeypatch.delattr(disk_cache.os, "posix_fallocate", raising=False)
    else:
        monkeypatch.setattr(disk_cache.os, "posix_fallocate", unsupported)
    assert torch.equal(load(pair, "disk", tmp_path / "cache").images, load(pair, "memory").images)


@pytest.mark.parametrize("left", [0, 0.5])
def test_a_cache_file_cut_short_is_built_again(pair, tmp_path, capsys, left):
    """A file of the right name but not every image's bytes (a copy cut short, a full disk while copying) would map
    fewer images than the domain has: it is said and built anew."""
    first = load(pair, "disk", tmp_path)
    path, size = first.path, os.path.getsize(first.path)
    del first  # (unmapped)
    with open(path, "r+b") as f:
        f.truncate(int(size * left))
    capsys.readouterr()
    again = load(pair, "disk", tmp_path)
    printed = capsys.readouterr().out
    assert f"notice: {path} has {int(size * left)} bytes, not the {size} of its images" in printed
    assert "wrote the cache of amazon" in printed
    assert os.path.getsize(path) == size and torch.equal(again.images, load(pair, "memory").images)


def build_in_child(root, cache_dir, log, answers):
    """Load the disk cache in a fresh process; every decode it does is logged (a line per build)."""
    real = data_loader.decode_into

    def logged(*args):
        with open(log, "a") as f:
            f.write("decode\n")
        time.sleep(0.5)  # (long enough for the other process to arrive while this one builds)
        return real(*args)
    data_loader.decode_into = logged
    domain = data_loader.load_domain(root, "amazon", 24, "disk", 0, "cpu", cache_dir=cache_dir)
    answers.put((domain.path, os.stat(domain.path).st_ino, domain.images.sum().item()))


def test_two_processes_starting_together_build_the_cache_once(pair, tmp_path):
    log = tmp_path / "decodes"
    first, second = together(build_in_child, (pair, str(tmp_path / "cache"), str(log)), 2, timeout=120)
    assert first == second and log.read_text() == "decode\n"  # one file, one build; the other read it
    assert [n for n in os.listdir(tmp_path / "cache") if n.endswith(".tmp")] == []


def test_auto_keeps_in_memory_what_fits_and_puts_the_rest_on_disk(pair, tmp_path, monkeypatch, capsys):
    names = ["amazon", "webcam"]
    assert data_loader.choose_cache("auto", pair, names, 24, torch.device("cpu")) == "memory"
    monkeypatch.setattr(data_loader, "available_memory", lambda device: 10_000)
    assert data_loader.choose_cache("auto", pair, names, 24, torch.device("cpu")) == "disk"
    assert ("--cache=auto: the decoded images of amazon, webcam take 0.0 GB, more than 80% of the 0.0 GB of "
            "available memory here, so they are kept on disk") in capsys.readouterr().out
    assert data_loader.choose_cache("none", pair, names, 24, torch.device("cpu")) == "none"
    with pytest.raises(UserError, match="Run with --cache=disk"):
        data_loader.choose_cache("memory", pair, names, 24, torch.device("cpu"))


@pytest.mark.parametrize("device, gpus, processes, sharing", [
    ("cpu", 0, "1", 1), ("cpu", 0, "4", 4), ("cuda", 4, "4", 1), ("cuda", 1, "2", 2), ("cuda", 2, "3", 2)])
def test_under_torchrun_each_process_counts_on_its_share_of_the_memory(pair, monkeypatch, capsys, device, gpus,
                                                                        processes, sharing):
    """Every process of a run holds its own memory cache: the processes torchrun started on one node share its
    memory (on the CPU), or a GPU where there are more processes than GPUs."""
    need = data_loader.cache_bytes(pair, ["amazon", "webcam"], 24)
    monkeypatch.setattr(data_loader, "available_memory", lambda device: 2 * need)  # fits one process's cache
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", processes)
    chosen = data_loader.choose_cache("auto", pair, ["amazon", "webcam"], 24, torch.device(device))
    assert chosen == ("memory" if sharing == 1 else "disk")
    where = "GPU" if device == "cuda" else "node"
    assert (f"per process ({2 * need / 1e9:.1f} GB over the {sharing} processes torchrun started on this {where})"
            in capsys.readouterr().out) == (sharing > 1)
    if sharing > 1:
        with pytest.raises(UserError, match=f"over the {sharing} processes torchrun started on this {where}"):
            data_loader.choose_cache("memory", pair, ["amazon", "webcam"], 24, torch.device(device))


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param(
    "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))])
def test_a_run_from_the_disk_cache_gives_the_same_numbers(pair, tmp_path, device):
    """The same numbers: exactly on the CPU; on a GPU (the memory cache there, the disk cache's crops cut on the CPU
    and moved) up to the GPU's own run-to-run differences (cuDNN, TF32)."""
    runs = {cache: office31.main([f"--data_root={pair}", f"--out_dir={tmp_path / cache}", *TINY, f"--cache={cache}",
                                  f"--cache_dir={tmp_path / 'cache'}", f"--device={device}"])[0]
            for cache in ("memory", "disk")}
    losses = [[e["loss"] for e in runs[cache]["epochs"]] for cache in ("memory", "disk")]
    assert losses[1] == (losses[0] if device == "cpu" else pytest.approx(losses[0], rel=1e-3))
    assert runs["memory"]["accuracy"] == runs["disk"]["accuracy"]
    assert sorted(os.listdir(tmp_path / "cache"))[0].startswith("amazon_24_bilinear_")
    assert store.read_rows(os.path.join(tmp_path / "disk", "results.jsonl"))[0]["config"] == \
        store.read_rows(os.path.join(tmp_path / "memory", "results.jsonl"))[0]["config"]  # the same experiment


def test_a_build_whose_decoding_fails_leaves_neither_its_file_nor_its_temporary(tmp_path, capsys):
    """datasets/disk_cache.py alone: the decoding is the caller's callback, into the memory-mapped temporary."""
    path, shape = str(tmp_path / "amazon.uint8"), (2, 3, 4, 4)

    def fails(images):
        images[0] = 1
        raise OSError(errno.EIO, "Input/output error")
    with pytest.raises(OSError):
        disk_cache.build_disk_cache(path, shape, "amazon", fails)
    assert os.listdir(tmp_path) == ["amazon.uint8.lock"]
    disk_cache.build_disk_cache(path, shape, "amazon", lambda images: images.fill_(7))
    assert f"wrote the cache of amazon: {path}" in capsys.readouterr().out and disk_cache.whole(path, shape)
    _, images = disk_cache.open_disk_cache(path, shape)
    assert images.dtype == torch.uint8 and images.shape == shape and bool((images == 7).all())
