"""The Office-31 download, offline: a generated archive stands in for the one network fetch."""
import multiprocessing
import os
import shutil
import tarfile
import time
import urllib.error

import pytest
from PIL import Image

import data_loader
import office31
from data_loader import OFFICE31_SIZES, UserError

CLASSES_31 = [f"class_{i:02d}" for i in range(31)]


def make_archive(folder, sizes=OFFICE31_SIZES):
    """domain_adaptation_images.tar.gz with the official layout and the given image counts (tiny images)."""
    top = folder / "domain_adaptation_images"
    for domain, count in sizes.items():
        for i in range(count):
            path = top / domain / "images" / CLASSES_31[i % 31] / f"frame_{i:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (i % 255, 0, 0)).save(path)
    archive = folder / data_loader.OFFICE31_ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(top, arcname="domain_adaptation_images")
    shutil.rmtree(top)
    return archive


@pytest.fixture(scope="module")
def full_archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("full"))


def serve(monkeypatch, archive):
    def fetch(folder):
        shutil.copy(archive, folder)
        return os.path.join(folder, data_loader.OFFICE31_ARCHIVE)
    monkeypatch.setattr(data_loader, "fetch_archive", fetch)


def leftovers(parent):
    return [name for name in os.listdir(parent) if name.startswith(".office31-download")]


def written(folder):
    """What a download left in folder, besides the lock file that serialises downloads (it holds no data)."""
    return [name for name in os.listdir(folder) if name != ".office31.lock"]


def test_download_unpacks_checks_and_warns_on_checksum(tmp_path, monkeypatch, capsys, full_archive):
    serve(monkeypatch, full_archive)
    root = data_loader.prepare_data_root(str(tmp_path / "office31"), download=True)
    assert root == str(tmp_path / "office31")
    assert data_loader.find_domains(root) == ["amazon", "dslr", "webcam"]
    assert data_loader.office31_problems(root) == []
    out = capsys.readouterr().out
    assert "warning: domain_adaptation_images.tar.gz has SHA-1" in out and data_loader.OFFICE31_SHA1 in out
    assert leftovers(tmp_path) == []
    # a second run finds the tree and fetches nothing
    monkeypatch.setattr(data_loader, "fetch_archive", lambda folder: pytest.fail("fetched twice"))
    assert data_loader.prepare_data_root(root, download=True) == root


def test_matching_checksum_prints_no_warning(tmp_path, monkeypatch, capsys, full_archive):
    serve(monkeypatch, full_archive)
    monkeypatch.setattr(data_loader, "OFFICE31_SHA1", data_loader.sha1_of(full_archive))
    data_loader.prepare_data_root(str(tmp_path / "office31"), download=True)
    assert "warning" not in capsys.readouterr().out


def test_incomplete_download_is_an_error_and_leaves_nothing(tmp_path, monkeypatch):
    serve(monkeypatch, make_archive(tmp_path, dict(OFFICE31_SIZES, webcam=790)))
    (tmp_path / "data").mkdir()
    with pytest.raises(UserError, match="incomplete: webcam: 31 classes and 790 images, expected 31 and 795"):
        data_loader.prepare_data_root(str(tmp_path / "data" / "office31"), download=True)
    assert written(tmp_path / "data") == []


def test_failed_fetch_explains_manual_steps_and_leaves_nothing(tmp_path, monkeypatch):
    def offline(folder):
        with open(os.path.join(folder, data_loader.OFFICE31_ARCHIVE), "wb") as f:
            f.write(b"half an archive")
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(data_loader, "fetch_archive", offline)
    (tmp_path / "data").mkdir()
    with pytest.raises(UserError, match="could not download Office-31 .*by hand.*Expected either layout"):
        data_loader.prepare_data_root(str(tmp_path / "data" / "office31"), download=True)
    assert written(tmp_path / "data") == []


def test_fresh_machine_run_downloads_then_trains(tmp_path, monkeypatch, full_archive):
    serve(monkeypatch, full_archive)
    [result] = office31.main([f"--data_root={tmp_path / 'office31'}", "--model=resnet18", "--weights=none",
                            "--resize_size=8", "--crop_size=8", "--epochs=1", "--iters_per_epoch=1",
                            "--num_workers=0", "--device=cpu", f"--out_dir={tmp_path / 'out'}"])
    assert (result["task"], result["total"]) == ("A→W", 795)


def test_archive_that_is_not_an_archive(tmp_path, monkeypatch):
    page = tmp_path / data_loader.OFFICE31_ARCHIVE
    page.write_text("<html>Google Drive can't scan this file for viruses</html>")
    serve(monkeypatch, page)
    (tmp_path / "data").mkdir()
    with pytest.raises(UserError, match="could not be unpacked.*web page.*by hand"):
        data_loader.prepare_data_root(str(tmp_path / "data" / "office31"), download=True)
    assert written(tmp_path / "data") == []


def download_in_child(data_root, archive, fetch_log, delay, answer):
    """One shard starting on an empty data root: the fetch is the generated archive, after a delay."""
    def slow_fetch(folder):
        with open(fetch_log, "a") as f:
            f.write("fetch\n")
        time.sleep(delay)
        shutil.copy(archive, folder)
        return os.path.join(folder, data_loader.OFFICE31_ARCHIVE)

    data_loader.fetch_archive = slow_fetch
    answer.put(data_loader.prepare_data_root(data_root, download=True))


def test_shards_starting_together_download_once(tmp_path, full_archive):
    context = multiprocessing.get_context("fork")
    answers, log, root = context.Queue(), tmp_path / "fetches", str(tmp_path / "data" / "office31")
    shards = [context.Process(target=download_in_child, args=(root, full_archive, log, 1.0, answers))
              for _ in range(3)]
    for shard in shards:
        shard.start()
    for shard in shards:
        shard.join(timeout=300)
        assert shard.exitcode == 0
    assert [answers.get(timeout=10) for _ in shards] == [root] * 3
    assert log.read_text() == "fetch\n"
    assert data_loader.office31_problems(root) == [] and leftovers(tmp_path / "data") == []


def test_empty_symlinked_data_root_is_filled_in_place(tmp_path, monkeypatch, full_archive):
    serve(monkeypatch, full_archive)
    scratch = tmp_path / "scratch" / "office31"
    scratch.mkdir(parents=True)
    (tmp_path / "data").mkdir()
    link = tmp_path / "data" / "office31"
    link.symlink_to(scratch)
    root = data_loader.prepare_data_root(str(link), download=True)
    assert link.is_symlink() and os.readlink(link) == str(scratch)
    assert root == os.path.join(str(link), "domain_adaptation_images")
    assert data_loader.office31_problems(root) == [] and leftovers(scratch) == []
    assert data_loader.prepare_data_root(str(link), download=False) == root  # later runs find it


def test_a_later_run_ignores_an_interrupted_staging_folder(tmp_path, monkeypatch, full_archive):
    serve(monkeypatch, full_archive)
    (tmp_path / "office31" / ".office31-download-killed").mkdir(parents=True)  # a killed run's leftovers
    root = data_loader.prepare_data_root(str(tmp_path / "office31"), download=True)
    assert data_loader.office31_problems(root) == []
