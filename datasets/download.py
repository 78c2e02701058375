"""Datasets that arrive: Office-31, Office-Home, VisDA-2017 and DomainNet fetched into data_root.

    root = prepare_data_root("data/office31", download=True, dataset="office31")   # or office_home, visda2017, ...

Each source is tried in order until one gives the complete tree (every domain, its class count and image
count; DomainNet: both split lists of every domain and every image they name): Office-31 from its official archive
(Google Drive), then from the Transfer-Learning-Library's mirror, one archive per domain; Office-Home from that
mirror; VisDA-2017 and DomainNet from their official archives (csr.bu.edu). Every source is staged in a temporary
folder that becomes the tree by one rename once it is complete, so an interrupted or refused download leaves
nothing a later run trusts.
fetch_drive_archive and fetch_url are the only functions here that touch the network.
"""
import contextlib
import hashlib
import os

from torchvision.datasets.utils import download_file_from_google_drive, download_url, extract_archive

from common.files import lock, temporary
from datasets import demo
from common.errors import UserError
from data_loader import (OFFICE31_SIZES, OFFICE_HOME_SIZES, class_root, count_images, dataset_root, find_domains,
                         listed, match_domain, subdirs)

OFFICE31_DRIVE_ID = "0B4IapRTv9pJ1WGZVd1VDMmhwdlE"
OFFICE31_ARCHIVE = "domain_adaptation_images.tar.gz"
OFFICE31_SHA1 = "7aa25a86f3880b6e79283227816f9d4d8506d636"  # published by a third party, checked as a warning only
MIRROR = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"  # the Transfer-Learning-Library's mirror
VISDA = "http://csr.bu.edu/ftp/visda17/clf"
DOMAINNET = "http://csr.bu.edu/ftp/visda/2019/multi-source"
# The beginnings of the archives' SHA-512, as a third party published them: checked as a warning only, as Office-31's
DOMAINNET_SHA512 = {"clipart": "3bcfb9ec1b4061e8d5b0b887d4ebd4a708732787fc563c6dfc2d",
                    "infograph": "47841f0d1b8606e4b02d508b250484d54f5cf04ef6c4875c6c5a39c",
                    "painting": "4c98b02563075948668a298c488660fda1d1a7ed85fd69caa7985fba",
                    "quickdraw": "127cce1dd57fc99992f8614de77d03ae8ed6af242973f7a013ec0a",
                    "real": "751713d4592d1278b50bf69787988cfae280cabdac80ee34ec4016e",
                    "sketch": "369b8b6d78ac61bfcc85f660d878ba5fc701524b82bbc2eb65ca9a"}

DATASETS = {
    "office31": {
        "name": "Office-31", "classes": 31, "size": "about 80 MB", "task": ("amazon", "webcam"),
        "domains": OFFICE31_SIZES,
        "mirror": {"amazon": "ec12dfcddade43ab8101", "dslr": "a41d818ae2f34da7bb32", "webcam": "8a41009a166e4131adcd"},
        "tree": ["amazon/images/back_pack/frame_0001.jpg   (or amazon/back_pack/frame_0001.jpg)",
                 "dslr/images/...", "webcam/images/..."],
        "official": [f"{OFFICE31_ARCHIVE}  https://drive.google.com/uc?id={OFFICE31_DRIVE_ID}",
                     "(linked from https://people.eecs.berkeley.edu/~jhoffman/domainadapt/)"],
    },
    "office_home": {
        "name": "Office-Home", "classes": 65, "size": "15,588 images, four archives", "task": ("Art", "Clipart"),
        "domains": OFFICE_HOME_SIZES,
        "mirror": {"Art": "4691878067d04755beab", "Clipart": "0d41e7da4558408ea5aa",
                   "Product": "76186deacd7c4fa0a679", "Real_World": "dee961894cc64b1da1d7"},
        "tree": ["Art/Alarm_Clock/00001.jpg", "Clipart/...", "Product/...", "Real_World/..."],
        "official": ["its page: https://www.hemanthdv.org/officeHomeDataset.html"],
    },
    # VisDA-2017's classification track: the synthetic renderings (train.tar) to the real photos (validation.tar),
    # unpacked as synthetic/ and real/, so that the task reads S→R as in the papers
    "visda2017": {
        "name": "VisDA-2017", "classes": 12, "size": "two archives, train.tar and validation.tar (2.8 GB)",
        "task": ("synthetic", "real"), "domains": {"synthetic": 152397, "real": 55388},
        "archives": {"synthetic": (f"{VISDA}/train.tar", "train", None),
                     "real": (f"{VISDA}/validation.tar", "validation", None)},
        "tree": ["synthetic/aeroplane/src_1_02691156_10155655850468db78d106ce0a280f87__1_1_001.png",
                 "real/aeroplane/aeroplane_000001.jpg   (train.tar's train/ and validation.tar's validation/, "
                 "renamed)"],
        "official": ["http://ai.bu.edu/visda-2017/ (the classification track's train and validation archives)"],
        "metric": "mean class accuracy",
    },
    # DomainNet, cleaned: each domain's archive and its train and test lists; a domain trains on its train list and
    # is tested on its test list (data_loader.with_lists). Its image counts come from the lists.
    "domainnet": {
        "name": "DomainNet (cleaned)", "classes": 345, "size": "six archives: about 18 GB",
        "task": ("clipart", "infograph"), "domains": dict.fromkeys(DOMAINNET_SHA512), "lists": True,
        "archives": {domain: (f"{DOMAINNET}/{'groundtruth/' * (domain in ('clipart', 'painting'))}{domain}.zip",
                              domain, sha) for domain, sha in DOMAINNET_SHA512.items()},
        "tree": ["clipart/aircraft_carrier/clipart_001_000018.jpg", "clipart_train.txt, clipart_test.txt",
                 "infograph/...", "painting/...", "quickdraw/...", "real/...", "sketch/..."],
        "official": ["http://ai.bu.edu/M3SDA/ (the cleaned version: each domain's archive, train and test list)"],
    },
    # drawn here (demo.py), never downloaded: to try the repo offline in a minute
    "demo": {"name": "The demo dataset", "task": ("amazon", "webcam")},
}
# The last line of a message that leaves a user without the data: the way to try the repo now (README's "Try it
# offline in a minute")
TRY_DEMO = "To try the repo now, offline: python office31.py --dataset=demo (a small drawn dataset; a minute)."


def by_hand(dataset, data_root):
    """How to put the dataset in place without this script, as lines: every source's URL, the folder, the tree."""
    spec, folder = DATASETS[dataset], os.path.abspath(data_root)
    tree = [f"    {os.path.join(folder, line)}" for line in spec["tree"]]
    official = [f"    {line}" for line in spec["official"]]
    if "archives" in spec:
        files = [f"    {url}" for url, _, _ in spec["archives"].values()]
        files += [f"    {DOMAINNET}/domainnet/txt/{domain}_{split}.txt" for domain in spec["archives"]
                  for split in ("train", "test")] if spec.get("lists") else []
        return "\n".join([f"Download it by hand and unpack it into {folder}:", "  from its page:", *official, *files,
                           "Expected tree:", *tree])
    mirror = [f"    {domain}.tgz  {MIRROR.format(key)}" for domain, key in spec["mirror"].items()]
    return "\n".join([f"Download it by hand and unpack it into {folder}:", "  the official archive:", *official,
                       "  or the Transfer-Learning-Library mirror, one archive per domain:", *mirror,
                       "Expected tree:", *tree])


def problems(root, dataset):
    """What differs from the complete tree of this dataset (its domains, classes and image counts); [] if none."""
    spec, found = DATASETS[dataset], []
    for domain, size in spec["domains"].items():
        path = os.path.join(root, domain)
        if not os.path.isdir(path):
            found.append(f"{domain}: missing")
            continue
        classes, count = len(subdirs(class_root(path))), count_images(class_root(path))
        if spec.get("lists"):  # DomainNet: every image its lists name, whatever else the archive holds
            lists = [os.path.join(root, f"{domain}_{split}.txt") for split in ("train", "test")]
            names = [name for path in lists if os.path.exists(path) for name in listed(path)]
            absent = sum(not os.path.exists(os.path.join(root, name)) for name in names)
            if not all(map(os.path.exists, lists)) or absent or classes != spec["classes"]:
                found.append(f"{domain}: {classes} classes, {len(names)} listed images of which {absent} are "
                             f"missing, expected {spec['classes']} classes, both lists and every listed image")
        elif classes != spec["classes"] or count != size:
            found.append(f"{domain}: {classes} classes and {count} images, expected {spec['classes']} and {size}")
    return found


def fetch_drive_archive(folder):
    """Download Office-31's official archive into folder."""
    download_file_from_google_drive(OFFICE31_DRIVE_ID, folder, OFFICE31_ARCHIVE)
    return os.path.join(folder, OFFICE31_ARCHIVE)


def fetch_url(url, folder, filename):
    """Download url to folder/filename (a progress bar on a terminal)."""
    download_url(url, folder, filename)
    return os.path.join(folder, filename)


def hexdigest(path, digest):
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha1_of(path):
    return hexdigest(path, hashlib.sha1())


def sha512_of(path):
    return hexdigest(path, hashlib.sha512())


def unpack(archive, folder):
    """Extract archive into folder; an archive that is not one (a web page sent instead) says so."""
    try:
        extract_archive(archive, folder)
    except Exception as e:
        raise ValueError(f"{os.path.basename(archive)} could not be unpacked ({e}): a web page instead of the "
                         "file?") from None


def from_official_archive(folder, dataset):
    """Office-31's domain_adaptation_images.tar.gz, unpacked into folder; returns the folder of its domains."""
    archive = fetch_drive_archive(folder)
    sha1 = sha1_of(archive)
    if sha1 != OFFICE31_SHA1:
        print(f"warning: {OFFICE31_ARCHIVE} has SHA-1 {sha1}, not the {OFFICE31_SHA1} published by a third party; "
              "checking the unpacked tree instead.")
    unpack(archive, os.path.join(folder, "unpacked"))
    os.remove(archive)
    return dataset_root(os.path.join(folder, "unpacked"))


def from_mirror(folder, dataset):
    """Each domain's <domain>.tgz from the mirror, unpacked into folder/unpacked; returns that folder."""
    for domain, key in DATASETS[dataset]["mirror"].items():
        archive = fetch_url(MIRROR.format(key), folder, f"{domain}.tgz")
        unpack(archive, os.path.join(folder, "unpacked"))
        os.remove(archive)
    return os.path.join(folder, "unpacked")


def from_archives(folder, dataset):
    """Each domain's archive (and split lists) from the dataset's own site, unpacked into folder/unpacked, the
    folder each archive unpacks to renamed to its domain; returns folder/unpacked."""
    spec, unpacked = DATASETS[dataset], os.path.join(folder, "unpacked")
    for domain, (url, inside, sha512) in spec["archives"].items():
        archive = fetch_url(url, folder, os.path.basename(url))
        if sha512 and not sha512_of(archive).startswith(sha512):
            print(f"warning: {os.path.basename(url)}'s SHA-512 does not begin with the {sha512} published by a "
                  "third party; checking the unpacked tree instead.")
        unpack(archive, unpacked)
        os.remove(archive)
        if inside != domain:
            os.replace(os.path.join(unpacked, inside), os.path.join(unpacked, domain))
        if spec.get("lists"):
            for split in ("train", "test"):
                fetch_url(f"{DOMAINNET}/domainnet/txt/{domain}_{split}.txt", unpacked, f"{domain}_{split}.txt")
    return unpacked


def sources(dataset):
    """(description, fetch) in the order to try them."""
    mirror = ("the Transfer-Learning-Library mirror (cloud.tsinghua.edu.cn)", from_mirror)
    if "archives" in DATASETS[dataset]:
        return [("the official archives (csr.bu.edu)", from_archives)]
    if dataset == "office31":
        return [("the official archive (Google Drive)", from_official_archive), mirror]
    return [mirror]


def download_dataset(data_root, dataset):
    """Fetch the dataset into data_root from the first source that gives its complete tree. A missing data_root
    is staged beside it and renamed into place; an existing empty one (a symlink to scratch space, a mount point)
    is filled in place: staged inside it, the tree lands in data_root/dataset/."""
    spec, in_place = DATASETS[dataset], os.path.isdir(data_root)
    staging = data_root if in_place else os.path.dirname(os.path.abspath(data_root))
    os.makedirs(staging, exist_ok=True)
    failures = []
    for source, fetch in sources(dataset):
        print(f"{spec['name']}: trying {source}" + (f" ({failures[-1]})" if failures else "") + ".")
        with temporary(os.path.join(staging, f".{dataset}-download"), folder=True, suffix="", separator="-") as tmp:
            try:
                tree = fetch(tmp, dataset)
                missing = problems(tree, dataset)
                if missing:
                    raise ValueError(f"incomplete: {'; '.join(missing)}")
            except Exception as e:  # offline, refused, a web page, incomplete: the next source, or the message
                failures.append(f"{source} failed: {type(e).__name__}: {e}")
                continue
            install(tree, data_root, in_place)
            return
    raise UserError(f"could not download {spec['name']} into {os.path.abspath(data_root)}:\n" +
                    "".join(f"  {failure}\n" for failure in failures) +
                    "Nothing was written there.\n" + by_hand(dataset, data_root) + f"\n{TRY_DEMO}")


def install(tree, data_root, in_place):
    """Rename the complete tree into place, in one step: data_root itself, or data_root/dataset/ when filling an
    existing folder (data_loader.dataset_root finds it there)."""
    try:
        os.replace(tree, os.path.join(data_root, "dataset") if in_place else data_root)
    except OSError:  # without the lock (no flock): another process put its complete tree there first
        if not find_domains(dataset_root(data_root)):
            raise


def lock_path(data_root):
    """The lock file beside data_root: one file however the path is spelled (data/x, ./data/x/, /abs/data/x)."""
    data_root = os.path.abspath(data_root)
    return os.path.join(os.path.dirname(data_root), f".{os.path.basename(data_root)}.lock")


@contextlib.contextmanager
def download_lock(data_root):
    """An exclusive lock on a file beside data_root, so that processes starting together on an empty data root
    (the shards of a sweep) download once: the others wait, then find the tree."""
    path = lock_path(data_root)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        if not lock(f, wait=False):  # (Windows: no flock; concurrent downloads use whichever tree lands first)
            print(f"another process is downloading into '{data_root}': waiting for it.")
            lock(f)
        yield


def visible_entries(folder):
    """What a user put in folder: hidden names (an interrupted download's staging folder) do not count."""
    return [name for name in os.listdir(folder) if not name.startswith(".")]


def prepare_data_root(data_root, download, dataset="office31", names=()):
    """The folder to read domains from: data_root, fetching the dataset into it when it is missing or empty. names:
    the domains the run asks for, checked against the dataset's before anything is fetched."""
    if os.path.exists(data_root) and not os.path.isdir(data_root):
        raise UserError(f"--data_root={data_root} is a file, not a folder. Point --data_root at the folder that holds "
                        "the domains (or at a folder to download them into), and move the file away if it is in "
                        "the way. Nothing was downloaded.")
    root = dataset_root(data_root)
    if find_domains(root):
        return root
    spec = DATASETS[dataset]
    how = by_hand(dataset, data_root) if "official" in spec else \
        "The demo dataset is drawn into an empty or missing folder: point --data_root at one."
    if os.path.isdir(data_root) and visible_entries(data_root):
        raise UserError(f"'{data_root}' holds no domain folders with class folders inside.\n{how}")
    if not download:
        raise UserError(f"'{data_root}' does not exist or is empty, and --download=False.\n{how}" +
                        (f"\n{TRY_DEMO}" if "official" in spec else ""))
    for name in names if "domains" in spec else ():  # a mistyped domain found now, not after an 18 GB download
        try:
            match_domain(name, list(spec["domains"]), f"in {spec['name']}, whose domains are")
        except UserError as e:
            raise UserError(f"{e} Nothing was downloaded.") from None
    with download_lock(data_root):
        if dataset == "demo" and not find_domains(data_root):
            print(f"drawing the demo dataset into '{data_root}' (a second; demo.py).")
            demo.make_demo(data_root)
        elif not find_domains(dataset_root(data_root)):  # else another process downloaded it while we waited
            print(f"{spec['name']} not found in '{data_root}': downloading it ({spec['size']}).")
            download_dataset(data_root, dataset)
            print(f"{spec['name']} is in '{data_root}'.")
    return dataset_root(data_root)
