"""Downloads, offline: generated archives stand in for the network fetches (download.fetch_drive_archive for
Office-31's official archive, download.fetch_url for the mirror's per-domain archives)."""
import os
import shutil
import tarfile
import time
import urllib.error

import pytest
from PIL import Image

from datasets import download
import office31
from conftest import together
from data_loader import OFFICE31_SIZES, UserError, find_domains

CLASSES_31 = [f"class_{i:02d}" for i in range(31)]


def make_images(top, sizes, classes=CLASSES_31, images_folder=True):
    """<top>/<domain>/[images/]<class>/frame_NNNN.jpg with the given counts per domain (tiny images)."""
    for domain, count in sizes.items():
        for i in range(count):
            folder = top / domain / "images" if images_folder else top / domain
            path = folder / classes[i % len(classes)] / f"frame_{i:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (i % 255, 0, 0)).save(path)
    return top


def tar(archive, folder, name):
    with tarfile.open(archive, "w:gz") as out:
        out.add(folder, arcname=name)
    return archive


@pytest.fixture(scope="module")
def office31_images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("office31") / "domain_adaptation_images", OFFICE31_SIZES)


@pytest.fixture(scope="module")
def full_archive(office31_images):
    """domain_adaptation_images.tar.gz, as the official archive holds it."""
    return tar(office31_images.parent / download.OFFICE31_ARCHIVE, office31_images, "domain_adaptation_images")


@pytest.fixture(scope="module")
def mirror_archives(office31_images):
    """amazon.tgz, dslr.tgz, webcam.tgz, each unpacking to <domain>/images/<class>/, as the mirror's do."""
    return {domain: tar(office31_images.parent / f"{domain}.tgz", office31_images / domain, domain)
            for domain in OFFICE31_SIZES}


def make_archive(folder, sizes):
    """An official-layout archive with other counts (an incomplete download)."""
    top = make_images(folder / "domain_adaptation_images", sizes)
    archive = tar(folder / download.OFFICE31_ARCHIVE, top, "domain_adaptation_images")
    shutil.rmtree(top)
    return archive


def serve(monkeypatch, archive):
    """The official source answers with this file (an exception instance: it fails with it)."""
    def fetch(folder):
        if isinstance(archive, Exception):
            raise archive
        return shutil.copy(archive, os.path.join(folder, download.OFFICE31_ARCHIVE))
    monkeypatch.setattr(download, "fetch_drive_archive", fetch)


def serve_mirror(monkeypatch, archives, asked=None):
    """The mirror answers each URL with the archive of that domain ({domain: path}); a missing one fails."""
    keys = {key: domain for spec in download.DATASETS.values()
            for domain, key in spec.get("mirror", {}).items()}  # (the demo has none: it is drawn)

    def fetch(url, folder, filename):
        domain = keys[url.split("/f/")[1].split("/")[0]]
        if asked is not None:
            asked.append(domain)
        assert filename == f"{domain}.tgz"
        if domain not in archives:
            raise urllib.error.HTTPError(url, 404, "Not Found", None, None)
        shutil.copy(archives[domain], os.path.join(folder, filename))
        return os.path.join(folder, filename)
    monkeypatch.setattr(download, "fetch_url", fetch)


def leftovers(parent):
    return [name for name in os.listdir(parent) if "-download-" in name]


def written(folder):
    """What a download left in folder, besides the lock file that serialises downloads (it holds no data)."""
    return [name for name in os.listdir(folder) if not name.endswith(".lock")]


def test_download_unpacks_checks_and_warns_on_checksum(tmp_path, monkeypatch, capsys, full_archive):
    serve(monkeypatch, full_archive)
    root = download.prepare_data_root(str(tmp_path / "office31"), download=True)
    assert root == str(tmp_path / "office31")
    assert find_domains(root) == ["amazon", "dslr", "webcam"]
    assert download.problems(root, "office31") == []
    out = capsys.readouterr().out
    assert "Office-31: trying the official archive (Google Drive)." in out
    assert "warning: domain_adaptation_images.tar.gz has SHA-1" in out and download.OFFICE31_SHA1 in out
    assert leftovers(tmp_path) == []
    # a second run finds the tree and fetches nothing
    monkeypatch.setattr(download, "fetch_drive_archive", lambda folder: pytest.fail("fetched twice"))
    assert download.prepare_data_root(root, download=True) == root


def test_matching_checksum_prints_no_warning(tmp_path, monkeypatch, capsys, full_archive):
    serve(monkeypatch, full_archive)
    monkeypatch.setattr(download, "OFFICE31_SHA1", download.sha1_of(full_archive))
    download.prepare_data_root(str(tmp_path / "office31"), download=True)
    assert "warning" not in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("official", ["refused", "web page", "incomplete"])
def test_the_mirror_is_used_when_the_official_archive_fails(tmp_path, monkeypatch, capsys, mirror_archives,
                                                            official):
    answer = {"refused": urllib.error.URLError("Too many users have viewed or downloaded this file"),
              "web page": tmp_path / "page.html", "incomplete": None}[official]
    if official == "web page":
        answer.write_text("<html>Google Drive - Quota exceeded</html>")
    if official == "incomplete":
        answer = make_archive(tmp_path, dict(OFFICE31_SIZES, webcam=790))
    serve(monkeypatch, answer)
    asked = []
    serve_mirror(monkeypatch, mirror_archives, asked)
    (tmp_path / "data").mkdir()
    root = download.prepare_data_root(str(tmp_path / "data" / "office31"), download=True)
    assert root == str(tmp_path / "data" / "office31") and download.problems(root, "office31") == []
    assert asked == ["amazon", "dslr", "webcam"]
    lines = capsys.readouterr().out.splitlines()
    [tried] = [line for line in lines if "trying the Transfer-Learning-Library mirror" in line]
    reason = {"refused": "URLError", "web page": "could not be unpacked",
              "incomplete": "incomplete: webcam: 31 classes and 790 images, expected 31 and 795"}[official]
    assert "the official archive (Google Drive) failed" in tried and reason in tried, tried
    assert leftovers(tmp_path / "data") == []


def test_every_source_failing_lists_each_and_writes_nothing(tmp_path, monkeypatch, mirror_archives):
    serve(monkeypatch, urllib.error.URLError("Temporary failure in name resolution"))
    serve_mirror(monkeypatch, {d: a for d, a in mirror_archives.items() if d != "dslr"})  # dslr.tgz: 404
    (tmp_path / "data").mkdir()
    with pytest.raises(UserError) as error:
        download.prepare_data_root(str(tmp_path / "data" / "office31"), download=True)
    message = str(error.value)
    lines, folder = message.splitlines(), os.path.abspath(tmp_path / "data" / "office31")
    assert lines[0] == f"could not download Office-31 into {folder}:", lines
    assert lines[1].startswith("  the official archive (Google Drive) failed: URLError")
    assert lines[2].startswith("  the Transfer-Learning-Library mirror (cloud.tsinghua.edu.cn) failed: HTTPError")
    assert lines[3] == "Nothing was written there."
    assert lines[4] == f"Download it by hand and unpack it into {folder}:"
    assert "    domain_adaptation_images.tar.gz  https://drive.google.com/uc?id=0B4IapRTv9pJ1WGZVd1VDMmhwdlE" in lines
    assert "    webcam.tgz  https://cloud.tsinghua.edu.cn/f/8a41009a166e4131adcd/?dl=1" in lines
    assert lines[-5:-1] == ["Expected tree:", *(f"    {os.path.join(folder, tail)}" for tail in (
        "amazon/images/back_pack/frame_0001.jpg   (or amazon/back_pack/frame_0001.jpg)", "dslr/images/...",
        "webcam/images/..."))]
    assert max(len(line) for line in lines[3:] if folder not in line) < 100  # short lines, every URL on its own
    assert written(tmp_path / "data") == []


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["a domain missing", "too few images"])
def test_an_incomplete_mirror_is_refused(tmp_path, monkeypatch, mirror_archives, problem):
    serve(monkeypatch, urllib.error.URLError("offline"))
    archives = dict(mirror_archives)
    if problem == "a domain missing":  # webcam.tgz holds dslr's folder instead
        archives["webcam"] = mirror_archives["dslr"]
    else:
        short = make_images(tmp_path / "short", {"webcam": 700})
        archives["webcam"] = tar(tmp_path / "webcam.tgz", short / "webcam", "webcam")
    serve_mirror(monkeypatch, archives)
    (tmp_path / "data").mkdir()
    expected = "webcam: missing" if problem == "a domain missing" else "webcam: 31 classes and 700 images"
    with pytest.raises(UserError, match=f"mirror .*failed: ValueError: incomplete: {expected}"):
        download.prepare_data_root(str(tmp_path / "data" / "office31"), download=True)
    assert written(tmp_path / "data") == []


@pytest.mark.slow
def test_office_home_by_name(tmp_path, monkeypatch, capsys):
    sizes = {"Art": 6, "Clipart": 7, "Product": 5, "Real_World": 8}  # the real counts, scaled down for speed
    monkeypatch.setitem(download.DATASETS["office_home"], "domains", sizes)
    monkeypatch.setitem(download.DATASETS["office_home"], "classes", 3)
    images = make_images(tmp_path / "src", sizes, classes=["Alarm_Clock", "Backpack", "Batteries"],
                         images_folder=False)  # the mirror's Office-Home: <domain>/<class>/*.jpg
    serve_mirror(monkeypatch, {d: tar(tmp_path / f"{d}.tgz", images / d, d) for d in sizes})
    monkeypatch.chdir(tmp_path)  # the default data root, data/office_home, lands here
    done = office31.main(["--dataset=office_home", "--tasks=all", "--model=resnet18", "--weights=none",
                          "--resize_size=16", "--crop_size=16", "--epochs=1", "--iters_per_epoch=1", "--batch_size=4",
                          "--num_workers=0", "--device=cpu", "--eval_every=0", f"--out_dir={tmp_path / 'out'}"])
    assert find_domains("data/office_home") == ["Art", "Clipart", "Product", "Real_World"]
    assert sorted(os.listdir("data/office_home/Art")) == ["Alarm_Clock", "Backpack", "Batteries"]
    assert len(done) == 12 and len({r["task"] for r in done}) == 12
    assert "Office-Home: trying the Transfer-Learning-Library mirror" in capsys.readouterr().out
    c = office31.resolve(office31.parse_flags(["--dataset=office_home"]))
    assert (c["data_root"], c["source"], c["target"]) == (os.path.join("data", "office_home"), "Art", "Clipart")
    c = office31.resolve(office31.FLAGS)
    assert (c["data_root"], c["source"], c["target"]) == (os.path.join("data", "office31"), "amazon", "webcam")


def test_the_datasets_are_the_published_ones():
    office31, office_home = download.DATASETS["office31"], download.DATASETS["office_home"]
    assert (office31["classes"], office31["domains"]) == (31, {"amazon": 2817, "dslr": 498, "webcam": 795})
    assert (office_home["classes"], office_home["domains"]) == (
        65, {"Art": 2427, "Clipart": 4365, "Product": 4439, "Real_World": 4357})


def test_failed_fetch_explains_manual_steps_and_leaves_nothing(tmp_path, monkeypatch):
    def offline(folder):
        with open(os.path.join(folder, download.OFFICE31_ARCHIVE), "wb") as f:
            f.write(b"half an archive")
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(download, "fetch_drive_archive", offline)
    (tmp_path / "data").mkdir()
    with pytest.raises(UserError, match=r"(?s)could not download Office-31 into .*by hand.*images.tar.gz"):
        download.prepare_data_root(str(tmp_path / "data" / "office31"), download=True)
    assert written(tmp_path / "data") == []


@pytest.mark.parametrize("dataset, flags, named", [
    ("office31", ["--source=amazn"], "'amazn' was not found in Office-31, whose domains are: amazon, dslr, webcam"),
    ("domainnet", ["--tasks=C-S,R-Z"], "'Z' was not found in DomainNet (cleaned), whose domains are: clipart, "
                                        "infograph, painting, quickdraw, real, sketch"),
    ("visda2017", ["--target=r", "--source=syn"],
     "'syn' was not found in VisDA-2017, whose domains are: synthetic, real"),
    ("office_home", ["--tasks=A-C,C-P,P-A,R-x"], "'x' was not found in Office-Home"),
])
def test_a_mistyped_domain_stops_the_run_before_the_download(tmp_path, monkeypatch, dataset, flags, named):
    """The dataset's domains are known by name: a run that asks for another stops before fetching gigabytes."""
    monkeypatch.setattr(download, "download_dataset", lambda *a: pytest.fail("downloaded"))
    with pytest.raises(SystemExit) as stop:
        office31.main([f"--dataset={dataset}", f"--data_root={tmp_path / 'data'}", f"--out_dir={tmp_path / 'out'}",
                       "--device=cpu", *flags])
    assert f"domain {named}" in str(stop.value) and str(stop.value).endswith(
        "Use a folder name or its initial. Nothing was downloaded.")
    assert not (tmp_path / "data").exists()


def test_a_right_domain_by_initial_goes_on_to_the_download(tmp_path, monkeypatch):
    fetched = []
    monkeypatch.setattr(download, "download_dataset", lambda root, dataset: fetched.append(dataset))
    download.prepare_data_root(str(tmp_path / "data"), True, "domainnet", ["c", "Sketch", "R"])
    assert fetched == ["domainnet"]


@pytest.mark.slow
def test_fresh_machine_run_downloads_then_trains(tmp_path, monkeypatch, full_archive):
    serve(monkeypatch, full_archive)
    [result] = office31.main([f"--data_root={tmp_path / 'office31'}", "--model=resnet18", "--weights=none",
                              "--resize_size=8", "--crop_size=8", "--epochs=1", "--iters_per_epoch=1",
                              "--num_workers=0", "--device=cpu", f"--out_dir={tmp_path / 'out'}"])
    assert (result["task"], result["total"]) == ("A→W", 795)


def download_in_child(data_root, archive, fetch_log, delay, answer):
    """One shard starting on an empty data root: the fetch is the generated archive, after a delay."""
    def slow_fetch(folder):
        with open(fetch_log, "a") as f:
            f.write("fetch\n")
        time.sleep(delay)
        shutil.copy(archive, folder)
        return os.path.join(folder, download.OFFICE31_ARCHIVE)

    download.fetch_drive_archive = slow_fetch
    answer.put(download.prepare_data_root(data_root, download=True))


def test_shards_starting_together_download_once(tmp_path, full_archive):
    log, root = tmp_path / "fetches", str(tmp_path / "data" / "office31")
    assert together(download_in_child, (root, full_archive, log, 1.0), 3, timeout=300) == [root] * 3
    assert log.read_text() == "fetch\n"
    assert download.problems(root, "office31") == [] and leftovers(tmp_path / "data") == []


def test_empty_symlinked_data_root_is_filled_in_place(tmp_path, monkeypatch, full_archive):
    serve(monkeypatch, full_archive)
    scratch = tmp_path / "scratch" / "office31"
    scratch.mkdir(parents=True)
    (tmp_path / "data").mkdir()
    link = tmp_path / "data" / "office31"
    link.symlink_to(scratch)
    root = download.prepare_data_root(str(link), download=True)
    assert link.is_symlink() and os.readlink(link) == str(scratch)
    assert root == os.path.join(str(link), "dataset")
    assert download.problems(root, "office31") == [] and leftovers(scratch) == []
    assert download.prepare_data_root(str(link), download=False) == root  # later runs find it


def test_a_later_run_ignores_an_interrupted_staging_folder(tmp_path, monkeypatch, full_archive):
    serve(monkeypatch, full_archive)
    (tmp_path / "office31" / ".office31-download-killed").mkdir(parents=True)  # a killed run's leftovers
    root = download.prepare_data_root(str(tmp_path / "office31"), download=True)
    assert download.problems(root, "office31") == []
