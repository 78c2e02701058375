"""Bad input: one clear paragraph, a non-zero exit, no traceback, nothing written."""
import os
import subprocess
import sys
import urllib.error

import pytest
import torch

from runs import checks
from runs import grid
import office31
from conftest import ROOT, make_tree
from test_train import TINY, run_script


def fails_with(argv, capsys, *phrases):
    """Run main() in-process; it must exit non-zero with every phrase in one 'error:' paragraph."""
    with pytest.raises(SystemExit) as stop:
        office31.main(argv)
    message = str(stop.value.code)
    assert message.startswith("error: ") and stop.value.code != 0
    for phrase in phrases:
        assert phrase in message, message
    return message


@pytest.mark.parametrize("argv, phrases", [
    (["--epochs=-1"], ["--epochs=-1", "at least 1"]),
    (["--model=resnet51"], ["--model=resnet51", "alexnet, caffe_alexnet, resnet18"]),
    (["--crop_size=300"], ["--crop_size=300", "larger than --resize_size=256"]),
    (["--weights=IMAGENET1K_V2", "--model=resnet18"], ["resnet18 has IMAGENET1K_V1, none."]),
    (["--epoch=3"], ["unknown argument '--epoch=3'. Did you mean --epochs?", "epochs, iters_per_epoch"]),
    (["--lr_multi=3"], ["Did you mean --lr_mult?"]),
    (["epochs=3"], ["unknown argument 'epochs=3'. Flags are --name=value"]),
    (["--epochs", "3", "stray"], ["unknown argument 'stray'"]),
    (["--lr"], ["--lr needs a value: --lr=VALUE or --lr VALUE (default: 0.001)."]),
    (["--epochs", "--lr=1"], ["--epochs needs a value"]),
    (["--batch_size=3.5"], ["--batch_size=3.5: expected int"]),
    (["--cache=maybe"], ["--cache=maybe: expected auto (memory where it fits, else disk), memory, disk or none."]),
    (["--momentum=1.5"], ["--momentum=1.5"]),
    (["--checkpoint", "yes"], ["--checkpoint=yes: a boolean flag takes true or false (or 1 or 0, any case), or no "
                               "value for true (a bare --checkpoint)."]),
    (["--checkpoint=yes"], ["--checkpoint=yes: a boolean flag takes true or false"]),
    (["--method=cdan", "--entropy", "true,maybe"], ["--entropy=true,maybe: 'maybe' is not a boolean; each of a "
                                                    "grid's values must be true or false (or 1 or 0, any case)."]),
])
def test_bad_flags(argv, phrases, capsys):
    fails_with(argv, capsys, *phrases)


def test_flags_as_people_type_them(capsys):
    c = office31.parse_flags(["--epochs", "3", "--report", "--lr", "0.01", "--cache", "false", "--seed", "-1",
                              "--save_model", "--eval_every=2", "--weights", "None"])
    assert (c["epochs"], c["report"], c["lr"], c["cache"], c["seed"], c["save_model"], c["eval_every"]) == \
        (3, True, 0.01, "false", -1, True, 2)
    assert office31.resolve(c)["cache"] == "none"  # the boolean --cache was: False is none, True memory
    assert "overriding: report = True" in capsys.readouterr().out
    assert office31.resolve(c)["weights"] == "none"  # None, NONE and none alike
    assert office31.resolve(office31.parse_flags(["--weights=AUTO"]))["weights"] == "IMAGENET1K_V1"
    assert office31.parse_flags(["--report", "--epochs=2"])["report"] is True  # a bare boolean before a flag
    assert office31.parse_flags(["--out_dir="])["out_dir"] == ""  # an empty value needs the = form


def test_the_space_form_is_the_equals_form_for_every_flag_and_grid_values_lose_their_spaces(capsys):
    for name, text in (("entropy", "true,false"), ("entropy", "FALSE"), ("report", "0"), ("lr", "0.01, 0.1"),
                       ("bottleneck", "auto, 256"), ("method", "source_only , dann"), ("tasks", "A-W,W-A")):
        assert office31.parse_flags([f"--{name}", text], echo=False) == \
            office31.parse_flags([f"--{name}={text}"], echo=False), (name, text)
    c = office31.parse_flags(["--method=dann", "--bottleneck=auto, 256", "--entropy", "true,false"], echo=False)
    assert (c["bottleneck"], c["entropy"]) == ("auto,256", "true,false")
    assert grid.settings(c, office31.FLAGS) == [{"bottleneck": b, "entropy": e} for b in ("auto", "256")
                                                for e in (True, False)]
    checks.check_settings(office31.resolve(dict(c, entropy=False)), office31.FLAGS)  # 256 is a width: no error
    typed = dict(office31.FLAGS, bottleneck="auto, 256", trade_off=" 0.1 ,1")  # a config not made by the parser
    assert grid.settings(typed, office31.FLAGS) == [{"bottleneck": b, "trade_off": t} for b in ("auto", "256")
                                                    for t in (0.1, 1.0)]


def test_missing_data_root_explains_the_tree(tmp_path, capsys):
    folder = tmp_path / "nowhere"
    fails_with([f"--data_root={folder}", "--download=False"], capsys, "does not exist or is empty",
               f"{folder / 'amazon/images/back_pack/frame_0001.jpg'}   (or amazon/back_pack/frame_0001.jpg)",
               "domain_adaptation_images.tar.gz", f"Download it by hand and unpack it into {folder}:")
    assert not (tmp_path / "nowhere").exists()


def test_folder_without_domains(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    fails_with([f"--data_root={tmp_path / 'junk'}"], capsys, "holds no domain folders", "Expected tree")


def test_unknown_domain_and_class_mismatch(tmp_path, capsys):
    make_tree(tmp_path / "d", {"amazon": 1}, classes=["bike", "mug"])
    make_tree(tmp_path / "d", {"webcam": 1}, classes=["bike", "pen"])
    root = f"--data_root={tmp_path / 'd'}"
    fails_with([root, "--target=clipart", *TINY], capsys, "domain 'clipart' was not found", "found: amazon, webcam")
    fails_with([root, *TINY, f"--out_dir={tmp_path / 'out'}"], capsys, "different classes", ": mug;", ": pen.")
    assert not (tmp_path / "out").exists()


def test_weights_that_cannot_be_downloaded(tree, tmp_path, monkeypatch, capsys):
    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    checkpoints = os.path.join(torch.hub.get_dir(), "checkpoints")
    fails_with([f"--data_root={tree}", *TINY, "--weights=IMAGENET1K_V1"], capsys,
               "https://download.pytorch.org/models/resnet18-f37072fd.pth",
               os.path.join(checkpoints, "resnet18-f37072fd.pth"), "--weights=none")


def test_damaged_checkpoint_says_delete_it(tree, capsys):
    checkpoints = os.path.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(checkpoints)
    with open(os.path.join(checkpoints, "resnet18-f37072fd.pth"), "wb") as f:
        f.write(b"half a file")
    fails_with([f"--data_root={tree}", *TINY, "--weights=IMAGENET1K_V1"], capsys, "delete it")


@pytest.mark.slow
@pytest.mark.parametrize("args, phrase", [
    (["--epochs=0"], "--epochs=0: must be at least 1"),
    (["--source=X"], "domain 'X' was not found"),
    (["--num_workers=2"], "cannot read image"),
])
def test_script_exits_nonzero_without_traceback(tree, tmp_path, args, phrase):
    bad = os.path.join(tree, "amazon", "images", "bike", "frame_0003.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8 truncated")
    result = run_script(f"--data_root={tree}", *TINY, f"--out_dir={tmp_path / 'out'}", *args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and phrase in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_compile_without_a_compiler_says_turn_it_off(tree, tmp_path):
    env = dict(os.environ, CXX=str(tmp_path / "no-such-g++"), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    result = subprocess.run([sys.executable, os.path.join(ROOT, "office31.py"), f"--data_root={tree}", *TINY,
                             "--compile=True", f"--out_dir={tmp_path / 'out'}"],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert "C++ compiler" in result.stderr and "--compile=False" in result.stderr, result.stderr
    assert not list((tmp_path / "out").glob("*.json"))
