"""Files written whole or not at all, and file locks, for every part that writes where another process may read.

    write_file(path, write)                   # replaces path by what write(f) writes, whole or not at all
    with temporary(path) as tmp: ...          # a temporary beside path, removed however the block ends, unless
        os.replace(tmp, path)                 #   it was renamed (or linked) into place first
    with open(path + ".lock", "a") as f:
        lock(f)                               # exclusive (shared=True: shared); wait=False: False where it is held

The callers' temporaries differ in what they hold (a file, a large memory-mapped file, a folder) and in how they land
(a rename that replaces, a link that never does), so those stay theirs; what is the same is here: the temporary's name
in the destination's folder (a rename across file systems would copy), and its removal on any failure.
"""
import contextlib
import os
import shutil
import tempfile

try:
    import fcntl
except ImportError:  # Windows has no flock: what the locks serialise then runs unlocked (each caller says how)
    fcntl = None


@contextlib.contextmanager
def temporary(path, tag=None, suffix=".tmp", folder=False, separator="."):
    """The name of a temporary beside path, for what becomes path once whole: <path>.<tag><suffix> (a tag that says
    whose it is, e.g. its process id, so that what a killed process left can be found), or, without a tag, a name
    of the form <path>.<random><suffix> that no other process uses, made now (an empty file, or a folder where
    folder); separator: what stands for the dot. When the block ends, however it ends, what is still at that name
    (a file or a folder) is removed: a temporary renamed or linked into place is not touched."""
    if tag is not None:
        tmp = f"{path}{separator}{tag}{suffix}"
    else:
        make = tempfile.mkdtemp if folder else tempfile.mkstemp
        made = make(dir=os.path.dirname(path) or ".", prefix=os.path.basename(path) + separator, suffix=suffix)
        tmp = made if folder else made[1]
        if not folder:
            os.close(made[0])
        os.chmod(tmp, (0o777 if folder else 0o666) & ~umask())  # mkstemp's 0600: what lands is as open() makes it
    try:
        yield tmp
    finally:
        remove(tmp)


def umask():
    """The process's umask (read by setting it, then setting it back: the one way os offers)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove(path):
    """Delete the file or folder at path, if there is one."""
    if os.path.isdir(path) and not os.path.islink(path):
        for folder, _, _ in os.walk(path):  # a read-only folder (unpacked from an archive) would keep its files
            with contextlib.suppress(OSError):  # (one not ours: rmtree leaves it, and the block's own error stands)
                os.chmod(folder, 0o700)
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def write_file(path, write):
    """Replace the file at path by what write(f) writes to f (opened binary), whole or not at all: into a temporary
    file of a name no other process uses, in the same folder, then renamed over path. Two processes writing the
    same file at once both succeed; the last rename wins."""
    with temporary(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)


def lock(f, shared=False, wait=True):
    """Lock the open file f (flock) until it is closed: exclusive, or shared with other shared holders. Waits for
    the holders of a lock that excludes it, or, with wait=False, returns False at once. True once it is held, and
    always where the system has no file locks (locks() False)."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def locks():
    """Whether this system has file locks (not Windows)."""
    return fcntl is not None
