"""common/files.py: the temporary beside a file that every whole-or-nothing write goes through, and the file lock."""
import os

import pytest

from common import files
from datasets import demo
from results import store


def test_a_temporary_renamed_into_place_lands_and_one_left_is_removed(tmp_path):
    path = str(tmp_path / "f.bin")
    with files.temporary(path, 42) as tmp:
        assert tmp == path + ".42.tmp"
        with open(tmp, "wb") as f:
            f.write(b"whole")
        os.replace(tmp, path)
    with files.temporary(path, 43) as tmp:  # never renamed: removed at the end all the same
        with open(tmp, "wb") as f:
            f.write(b"left")
    assert open(path, "rb").read() == b"whole" and os.listdir(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("folder", [False, True])
def test_a_failure_leaves_no_temporary_and_the_old_file_as_it_was(tmp_path, folder):
    path = tmp_path / "tree"
    path.write_text("old")
    with pytest.raises(OSError, match="No space"):
        with files.temporary(str(path), folder=folder) as tmp:
            assert os.path.basename(tmp).startswith("tree.") and tmp.endswith(".tmp")
            assert os.path.isdir(tmp) == folder and os.path.exists(tmp)  # made: its name is no other process's
            if folder:
                os.makedirs(os.path.join(tmp, "amazon", "bike"))
            raise OSError(28, "No space left on device")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["tree"]


def test_two_temporaries_without_a_tag_never_share_a_name(tmp_path):
    with files.temporary(str(tmp_path / "f")) as first, files.temporary(str(tmp_path / "f")) as second:
        assert first != second
    assert os.listdir(tmp_path) == []


def test_write_file_replaces_the_file_whole(tmp_path):
    path = tmp_path / "table.md"
    path.write_text("old")
    files.write_file(str(path), lambda f: f.write(b"new"))
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["table.md"]


def test_a_demo_drawing_that_fails_leaves_no_staging_folder(tmp_path, monkeypatch):
    def fails(k, size, index, seed):
        if seed == 3:
            raise OSError(28, "No space left on device")
        return demo.draw(k, size, 0, seed)
    monkeypatch.setattr(demo, "draw_object", fails)
    with pytest.raises(OSError):
        demo.make_demo(str(tmp_path / "demo"))
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not files.locks(), reason="no file locks on this system")
def test_a_lock_held_elsewhere_is_said_without_waiting_and_shared_locks_go_together(tmp_path):
    path = tmp_path / "f.lock"
    with open(path, "a") as holder, open(path, "a") as other:
        assert files.lock(holder)
        assert files.lock(other, wait=False) is False and files.lock(other, shared=True, wait=False) is False
    with open(path, "a") as reader, open(path, "a") as another, open(path, "a") as writer:
        assert files.lock(reader, shared=True) and files.lock(another, shared=True, wait=False)
        assert files.lock(writer, wait=False) is False


def test_without_file_locks_rows_are_still_appended_and_read(tmp_path, monkeypatch):
    """Windows has no fcntl: the lock is then held by no one, and the results file is written all the same."""
    monkeypatch.setattr(files, "fcntl", None)
    assert not files.locks()
    path = str(tmp_path / "results.jsonl")
    with open(path, "a") as f:
        assert files.lock(f, wait=False)
    for seed in (1, 2):
        store.append_row(path, {k: seed for k in store.ROW_KEYS})
    assert [row["seed"] for row in store.read_rows(path)] == [1, 2]


def test_a_file_written_whole_is_as_readable_as_one_open_makes(tmp_path):
    """A table written through a temporary gets the mode a plain open() would give it (0644 under umask 022), not
    the temporary's private 0600: colleagues on a shared machine read the tables."""
    old = os.umask(0o022)
    try:
        files.write_file(str(tmp_path / "table.md"), lambda f: f.write(b"| a |"))
        with open(tmp_path / "plain.md", "w") as f:
            f.write("| a |")
        with files.temporary(str(tmp_path / "staged"), folder=True) as folder:
            made = os.stat(folder).st_mode & 0o777
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "table.md").st_mode & 0o777 == os.stat(tmp_path / "plain.md").st_mode & 0o777 == 0o644
    assert made == 0o755


def test_a_read_only_folder_inside_a_temporary_folder_is_made_removable(tmp_path, monkeypatch):
    """An archive may unpack a read-only folder into a download's staging folder: its files could not be deleted
    (by anyone but root), so the staging folder, up to a dataset's size, would stay. Every folder is made writable
    before the removal."""
    modes = []
    remove = files.shutil.rmtree
    monkeypatch.setattr(files.shutil, "rmtree", lambda path, **kw: modes.append(
        os.stat(os.path.join(path, "images")).st_mode & 0o777) or remove(path, **kw))
    with pytest.raises(RuntimeError):
        with files.temporary(str(tmp_path / "data"), folder=True) as staging:
            os.makedirs(os.path.join(staging, "images"))
            open(os.path.join(staging, "images", "a.jpg"), "wb").close()
            os.chmod(os.path.join(staging, "images"), 0o555)
            raise RuntimeError("the download failed")
    assert modes and modes[0] & 0o200 and os.listdir(tmp_path) == []
