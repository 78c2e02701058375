"""No dead ends on the way in: a download that cannot happen names the offline demo as the way to try the repo now,
the demo's own data is not taken for a partial Office-31, and a flag that no chosen method reads is said to be
ignored, once, before any work."""
import os
import urllib.error

import pytest

from datasets import demo, download
import data_loader
import office31
from conftest import make_tree


def offline(monkeypatch):
    def refused(*args):
        raise urllib.error.URLError("Temporary failure in name resolution")
    monkeypatch.setattr(download, "fetch_drive_archive", refused)
    monkeypatch.setattr(download, "fetch_url", refused)


def test_the_default_run_offline_ends_by_pointing_to_the_demo(tmp_path, monkeypatch):
    offline(monkeypatch)
    monkeypatch.chdir(tmp_path)  # the default data root, data/office31, is missing here
    with pytest.raises(SystemExit) as stopped:
        office31.main(["--device=cpu", "--amp=off"])
    message = str(stopped.value.code)
    assert message.startswith("error: could not download Office-31") and "Nothing was written there." in message
    last = message.splitlines()[-1]
    assert "python office31.py --dataset=demo" in last, last
    with pytest.raises(SystemExit) as stopped:  # the same where the user turned the download off
        office31.main(["--device=cpu", "--amp=off", "--download=False"])
    assert "python office31.py --dataset=demo" in str(stopped.value.code).splitlines()[-1]
    assert not os.path.exists("data/office31")


def test_the_demo_data_gives_no_partial_office31_notice_and_a_partial_office31_does(tmp_path, capsys):
    root = demo.make_demo(str(tmp_path / "demo"))
    for name in demo.DOMAINS:
        data_loader.load_domain(root, name, resize_size=16, cache="none", num_workers=0, device="cpu")
    assert "notice" not in capsys.readouterr().out
    partial = make_tree(tmp_path / "office31", {"amazon": 3, "webcam": 2}, classes=demo.CLASSES)  # the demo's
    for name, count in (("amazon", 15), ("webcam", 10)):  # classes, but not its drawing: a subset of Office-31
        data_loader.load_domain(partial, name, resize_size=16, cache="none", num_workers=0, device="cpu")
        full = data_loader.OFFICE31_SIZES[name]
        assert f"notice: {name} has {count} images, not the {full} of the full Office-31" in capsys.readouterr().out
