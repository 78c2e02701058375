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
    counts = {name: n for name, n in demo.DOMAINS.items() if name != "dslr"}  # and even its counts: its photographs'
    partial = make_tree(tmp_path / "subset" / "office31", counts, classes=demo.CLASSES, size=(40, 30))  # size differs
    for name, count in ((name, n * len(demo.CLASSES)) for name, n in counts.items()):
        data_loader.load_domain(partial, name, resize_size=16, cache="none", num_workers=0, device="cpu")
        full = data_loader.OFFICE31_SIZES[name]
        assert f"notice: {name} has {count} images, not the {full} of the full Office-31" in capsys.readouterr().out


TINY = ["--model=resnet18", "--weights=none", "--resize_size=24", "--crop_size=20", "--epochs=1",
        "--iters_per_epoch=1", "--batch_size=4", "--num_workers=0", "--device=cpu", "--amp=off", "--eval_every=0"]


def notes(argv):
    """The note lines the checks made before any work print for a command line."""
    from runs import checks, flags
    c = office31.resolve(office31.parse_flags(argv, echo=False))
    return checks.unread_notes(c, flags.given(argv, office31.FLAGS))


def test_a_flag_no_chosen_method_reads_is_said_once_before_the_work(tree, tmp_path, capsys):
    office31.main([*TINY, f"--data_root={tree}", f"--out_dir={tmp_path / 'out'}", "--trade_off=0.3"])
    lines = capsys.readouterr().out.splitlines()
    said = [k for k, line in enumerate(lines) if line.startswith("note: --trade_off=0.3 is ignored")]
    assert len(said) == 1, lines
    assert "source_only does not read it" in lines[said[0]]
    assert said[0] < min(k for k, line in enumerate(lines) if line.startswith("config:"))  # before the work


@pytest.mark.parametrize("argv, flag, ignoring", [
    (["--method=source_only", "--trade_off=0.1,0.3"], "trade_off", "source_only does"),  # a grid's values too
    (["--method=dann", "--entropy=False"], "entropy", "dann does"),
    (["--method=dann,mcc", "--entropy=0"], "entropy", "dann, mcc do"),
])
def test_each_flag_that_no_chosen_method_reads_is_named_with_the_methods_that_ignore_it(argv, flag, ignoring):
    [note] = notes(argv)
    assert note.startswith(f"note: --{flag}=") and f" is ignored: {ignoring} not read it" in note, note


@pytest.mark.parametrize("argv", [
    ["--method=source_only,dann", "--trade_off=0.3"],  # dann reads it: the sweep's baseline beside it, as meant
    ["--method=dann,cdan", "--entropy=True"],          # cdan reads it (cdan+e)
    ["--method=dann", "--trade_off=0.3", "--lr=0.01"],  # every flag read
    ["--method=source_only"],                           # nothing given that it ignores
])
def test_no_note_where_a_chosen_method_reads_the_flag(argv):
    assert notes(argv) == []
