"""VisDA-2017 and DomainNet by name, on generated trees of their real layouts (tiny): the split lists DomainNet
trains and tests on, the per-class accuracy every run records and VisDA-2017's mean class accuracy in its table,
and their downloads from generated archives (download.fetch_url stands in for the network)."""
import copy
import json
import os
import re
import shutil
import statistics
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

import data_loader
from datasets import download
import office31
from results import store
from selection import validators
from conftest import make_tree
from common.errors import UserError

TINY = ["--model=resnet18", "--weights=none", "--resize_size=24", "--crop_size=20", "--epochs=1",
        "--iters_per_epoch=2", "--batch_size=6", "--num_workers=0", "--device=cpu", "--amp=off"]
VISDA_CLASSES = ["aeroplane", "bicycle", "bus", "car"]


@pytest.fixture
def visda(tmp_path):
    """synthetic/<class>/*.jpg and real/<class>/*.jpg, with the image_list.txt each archive holds beside them."""
    root = Path(make_tree(tmp_path / "visda2017", {"synthetic": 5, "real": 3}, classes=VISDA_CLASSES, layout="flat",
                          size=(28, 28)))
    for domain in ("synthetic", "real"):
        (root / domain / "image_list.txt").write_text("aeroplane/x.jpg 0\n")
    return root


def domainnet_tree(root, domains=("clipart", "sketch"), classes=("bee", "cup", "fan")):
    """<domain>/<class>/*.jpg and <domain>_train.txt, <domain>_test.txt listing them, as DomainNet's: of each class's
    five images, three train and two test."""
    make_tree(root, dict.fromkeys(domains, 5), classes=list(classes), layout="flat", size=(28, 28))
    for domain in domains:
        for split, chosen in (("train", slice(0, 3)), ("test", slice(3, 5))):
            lines = [f"{domain}/{name}/{file} {k}" for k, name in enumerate(classes)
                     for file in sorted(os.listdir(root / domain / name))[chosen]]
            (root / f"{domain}_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.slow
def test_visda_runs_synthetic_to_real_and_tables_its_mean_class_accuracy(visda, tmp_path, capsys):
    argv = ["--dataset=visda2017", f"--data_root={visda}", f"--out_dir={tmp_path / 'out'}", *TINY, "--seeds=2",
            "--save_model"]
    done = office31.main(argv)
    assert [r["task"] for r in done] == ["S→R", "S→R"]
    rows = store.read_rows(os.path.join(tmp_path / "out", "results.jsonl"))
    for row in rows:  # per class, recomputed from the saved model's predictions on every real image
        assert row["metric"] == "mean class accuracy" and list(row["per_class"]) == VISDA_CLASSES
        net, _ = office31.build_model("resnet18", 4, "none")
        net.load_state_dict(torch.load(tmp_path / "out" / row["run_file"].replace(".json", ".pt"), weights_only=True))
        real = data_loader.load_domain(visda, "real", 24, "memory", 0, "cpu")
        outputs = office31.evaluate(net.to(memory_format=torch.channels_last), real.test_batches(5, 20), False,
                                    torch.channels_last)
        predicted = outputs.logits.argmax(1)
        for k, name in enumerate(VISDA_CLASSES):
            assert row["per_class"][name] == (predicted[outputs.labels == k] == k).float().mean().item()
        assert row["mean_class_accuracy"] == pytest.approx(statistics.mean(row["per_class"].values()))
    printed = capsys.readouterr().out
    assert "mean class accuracy, mean ± std over seeds" in printed
    mean = statistics.mean(100 * r["mean_class_accuracy"] for r in rows)
    std = statistics.stdev(100 * r["mean_class_accuracy"] for r in rows)
    assert re.search(rf"^\| S→R \| {mean:.2f} ± {std:.2f} \| 2 \|$", printed, re.M)
    per_class = [statistics.mean(100 * r["per_class"][name] for r in rows) for name in VISDA_CLASSES]
    assert ("| source_only | S→R | " + " | ".join(f"{v:.1f}" for v in per_class)
            + f" | {statistics.mean(per_class):.1f} |") in printed


def test_a_mean_class_accuracy_of_zero_is_kept_in_the_row_and_tabled(visda, tmp_path, monkeypatch, capsys):
    """0.0 is a result, not a missing one: the row keeps it, and the table shows it (a row written when a mean of
    0.0 was left out gets it back from its per-class accuracies)."""
    monkeypatch.setattr(office31, "per_class_accuracy", lambda logits, labels, classes: dict.fromkeys(classes, 0.0))
    out = tmp_path / "out"
    argv = ["--dataset=visda2017", f"--data_root={visda}", f"--out_dir={out}", *TINY, "--eval_every=0"]
    office31.main(argv)
    path = out / "results.jsonl"
    [row] = store.read_rows(str(path))
    assert row["mean_class_accuracy"] == 0.0 and row["metric"] == "mean class accuracy"
    for written in (row, {k: v for k, v in row.items() if k != "mean_class_accuracy"}):  # as rows once were written
        path.write_text(json.dumps(written) + "\n")
        capsys.readouterr()
        office31.main([*argv, "--report=True"])
        printed = capsys.readouterr().out
        assert "mean class accuracy, mean ± std over seeds" in printed and "| S→R | 0.00 | 1 |" in printed
        assert "| source_only | S→R | 0.0 | 0.0 | 0.0 | 0.0 | 0.0 |" in printed


def test_mean_class_accuracy_is_the_mean_over_classes_not_over_images():
    """An imbalanced target, by hand: aeroplane 4 of 6 right, bicycle 0 of 1, bus 2 of 2, car without images."""
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2, 2])
    predicted = torch.tensor([0, 0, 0, 0, 1, 2, 0, 2, 2])
    per_class = store.per_class_accuracy(torch.nn.functional.one_hot(predicted, 4).float(), labels, VISDA_CLASSES)
    assert per_class == {"aeroplane": pytest.approx(4 / 6), "bicycle": 0.0, "bus": 1.0, "car": None}
    assert store.mean_class_accuracy(per_class) == pytest.approx((4 / 6 + 0 + 1) / 3)  # 55.56, where images: 66.67


@pytest.mark.slow
def test_an_imbalanced_visda_run_records_and_selects_by_its_mean_class_accuracy(tmp_path, capsys):
    """Real: aeroplane 6 images, bicycle 3, bus and car 1: each run's recorded per-class and mean class accuracies
    equal the test's own count from its saved model, and the selection table's final model, oracle and picks are
    those numbers, the table's (not the accuracy over images)."""
    root = make_tree(tmp_path / "visda2017", {"synthetic": 5, "real": 6}, classes=VISDA_CLASSES, layout="flat",
                     size=(28, 28))
    for name, keep in {"bicycle": 3, "bus": 1, "car": 1}.items():
        for file in sorted(os.listdir(os.path.join(root, "real", name)))[keep:]:
            os.remove(os.path.join(root, "real", name, file))
    out = tmp_path / "out"
    office31.main(["--dataset=visda2017", f"--data_root={root}", f"--out_dir={out}", *TINY, "--epochs=2",
                   "--lr=0.001,0.01", "--validators=entropy", "--save_model"])
    real = data_loader.load_domain(root, "real", 24, "memory", 0, "cpu")
    finals = {}
    for row in store.read_rows(os.path.join(out, "results.jsonl")):
        net, _ = office31.build_model("resnet18", 4, "none")
        net.load_state_dict(torch.load(out / row["run_file"].replace(".json", ".pt"), weights_only=True))
        outputs = office31.evaluate(net.to(memory_format=torch.channels_last), real.test_batches(5, 20), False,
                                    torch.channels_last)
        right, seen = [0] * 4, [0] * 4
        for guess, label in zip(outputs.logits.argmax(1).tolist(), outputs.labels.tolist()):
            seen[label] += 1
            right[label] += guess == label
        assert seen == [6, 3, 1, 1]
        own = statistics.mean(r / n for r, n in zip(right, seen))
        assert own != pytest.approx(sum(right) / sum(seen))  # (imbalanced: the two differ here)
        assert row["per_class"] == {name: pytest.approx(r / n) for name, r, n in zip(VISDA_CLASSES, right, seen)}
        assert row["mean_class_accuracy"] == pytest.approx(own)
        with open(out / row["run_file"], encoding="utf-8") as f:
            epochs = json.load(f)["epochs"]
        assert epochs[-1]["target_class_acc"] == pytest.approx(own)
        finals[row["config"]["lr"]] = own, [e["target_class_acc"] for e in epochs]
    printed = capsys.readouterr().out
    assert re.search(rf"^\| source_only lr=0.001 \| {100 * finals[0.001][0]:.2f} \|", printed, re.M)
    chosen = printed.split("choosing without target labels")[1]
    assert f"| final model: source_only lr=0.001 | {100 * finals[0.001][0]:.2f} |" in chosen
    best = max(value for _, values in finals.values() for value in values)
    assert f"| oracle (target labels) | {100 * best:.2f} |" in chosen


@pytest.mark.slow
def test_office31_rows_record_per_class_accuracy_and_keep_their_metric(tmp_path, capsys):
    root = make_tree(tmp_path / "office31", {"amazon": 4, "webcam": 2}, size=(28, 28))
    [result] = office31.main([f"--data_root={root}", f"--out_dir={tmp_path / 'out'}", *TINY])
    assert result["metric"] == "accuracy" and set(result["per_class"]) == {"back_pack", "bike", "calculator"}
    assert result["epochs"][-1]["target_class_acc"] == pytest.approx(statistics.mean(result["per_class"].values()))
    assert "A→W accuracy: " in capsys.readouterr().out


def test_domainnet_trains_on_its_train_lists_and_tests_on_its_test_lists(tmp_path):
    root = domainnet_tree(tmp_path / "domainnet")
    domain = data_loader.load_domain(root, "clipart", 24, "memory", 0, "cpu")
    names = [os.path.relpath(domain.paths[k], root) for k in domain.index.tolist()]
    tested = [os.path.relpath(domain.paths[k], root) for k in domain.tested().tolist()]
    assert sorted(names) == sorted(line.split()[0] for line in (root / "clipart_train.txt").read_text().splitlines())
    assert sorted(tested) == sorted(line.split()[0] for line in (root / "clipart_test.txt").read_text().splitlines())
    assert len(domain) == 9 and sum(len(y) for _, y in domain.test_batches(4, 20)) == 6  # each test image once
    drawn = torch.cat([x for x, _ in domain.train_batches(3, 6, 24, torch.Generator().manual_seed(0))])
    test_images = torch.cat([x for x, _ in domain.test_batches(100, 24)])
    assert not any(torch.equal(x, t) or torch.equal(x.flip(-1), t) for x in drawn for t in test_images)
    per_sample = data_loader.load_domain(root, "clipart", 24, "none", 0, "cpu")
    assert torch.equal(torch.cat([y for _, y in per_sample.test_batches(4, 20)]),
                       torch.cat([y for _, y in domain.test_batches(4, 20)]))
    training = data_loader.part(domain, torch.arange(len(domain)))  # DEV's source features: the train list's
    assert torch.equal(training.tested(), domain.index)
    held = data_loader.split_held_out(domain, 0.34)[1]  # a held-out part comes from the train list
    assert set(held.index.tolist()) < set(domain.index.tolist()) and held.test_index is None
    assert data_loader.fingerprint(root, "clipart").endswith("15 images, split 9 / 6 (train / test)")


def test_the_validators_score_the_targets_train_list_and_read_none_of_its_labels(tmp_path):
    """Where the target has a test list, the validators score the images adaptation sees (its train list, one more
    pass), not the test list whose accuracy is reported; scrambling the target's labels changes no score."""
    root = domainnet_tree(tmp_path / "domainnet")
    c = office31.resolve(dict(office31.FLAGS, dataset="domainnet", data_root=str(root), source="clipart",
                              target="sketch", model="resnet18", weights="none", resize_size=24, crop_size=20,
                              epochs=1, iters_per_epoch=2, batch_size=6, num_workers=0, device="cpu", amp="off",
                              method="dann", source_val=0.34, save_model=True))
    c = office31.with_method(dict(c, precision="fp32", grid=[]), "dann")
    source, target = (data_loader.load_domain(root, name, 24, "memory", 0, "cpu") for name in ("clipart", "sketch"))
    scrambled = copy.copy(target)
    scrambled.labels = target.labels[torch.randperm(len(target.labels), generator=torch.Generator().manual_seed(5))]
    runs = [office31.fine_tune(dict(c, out_dir=str(tmp_path / name)), source, domain, torch.device("cpu"), "C→S")
            for name, domain in (("plain", target), ("scrambled", scrambled))]
    recorded = runs[0]["epochs"][-1]["validators"]
    assert recorded == runs[1]["epochs"][-1]["validators"] and runs[0]["total"] == 6  # (the test list's accuracy)
    net, new_layer = office31.build_model("resnet18", 3, "none", c["bottleneck"])
    net.load_state_dict(torch.load(tmp_path / "plain" / runs[0]["run_file"].replace(".json", ".pt"), weights_only=True))
    net = net.to(memory_format=torch.channels_last)

    def outputs(domain):
        return office31.evaluate(net, domain.test_batches(256, 20), False, torch.channels_last,
                                 office31.classifier(new_layer(net)))
    train, held = data_loader.split_held_out(source, 0.34)
    on_held, on_source = outputs(held), outputs(train)

    def scores(on_target):
        return validators.compute(validators.NAMES, on_target.logits, on_target.features,
                                  (on_held.logits, on_held.labels, on_held.features), on_source.features)
    on_train_list = outputs(data_loader.part(target, torch.arange(len(target))))
    assert len(on_train_list.logits) == 9 and set(recorded) == set(validators.NAMES)
    assert recorded == pytest.approx(scores(on_train_list), rel=1e-4)
    assert recorded["entropy"] != pytest.approx(scores(outputs(target))["entropy"], rel=1e-4)  # not the test list's


def test_domainnet_lists_that_do_not_match_the_tree_are_said(tmp_path):
    root = domainnet_tree(tmp_path / "domainnet")
    with open(root / "sketch_test.txt", "a") as f:
        f.write("sketch/bee/gone.jpg 0\n")
    with pytest.raises(UserError, match=r"sketch_test.txt lists 1 images that are not under .*\(the first: "
                                        r"sketch/bee/gone.jpg\)"):
        data_loader.load_domain(root, "sketch", 24, "memory", 0, "cpu")
    os.remove(root / "clipart_test.txt")
    with pytest.raises(UserError, match=r"clipart_test.txt is missing, but .*clipart_train.txt is there"):
        data_loader.load_domain(root, "clipart", 24, "memory", 0, "cpu")


@pytest.mark.slow
def test_a_domainnet_sweep_covers_every_ordered_pair_on_the_test_lists(tmp_path):
    root = domainnet_tree(tmp_path / "domainnet", domains=("clipart", "painting", "sketch"))
    done = office31.main(["--dataset=domainnet", f"--data_root={root}", f"--out_dir={tmp_path / 'out'}", *TINY,
                          "--tasks=all", "--validators=none"])
    assert sorted(r["task"] for r in done) == ["C→P", "C→S", "P→C", "P→S", "S→C", "S→P"]
    assert all(r["total"] == 6 for r in done)  # the target's test list, each image once


# -------------------------------------------------------------------------------------------------------------------
# downloads from generated archives


def serve(monkeypatch, files):
    """download.fetch_url serving files {url: path}; any other URL fails as offline."""
    def fetch(url, folder, filename):
        if url not in files:
            raise OSError(f"offline: {url}")
        shutil.copy(files[url], os.path.join(folder, filename))
        return os.path.join(folder, filename)
    monkeypatch.setattr(download, "fetch_url", fetch)


def test_visda_downloads_from_its_archives_and_renames_them_synthetic_and_real(tmp_path, monkeypatch, capsys):
    made = Path(make_tree(tmp_path / "made", {"train": 5, "validation": 3}, classes=VISDA_CLASSES, layout="flat",
                          size=(20, 20)))
    files = {}
    for domain in ("train", "validation"):
        with tarfile.open(tmp_path / f"{domain}.tar", "w") as out:
            out.add(made / domain, arcname=domain)
        files[f"{download.VISDA}/{domain}.tar"] = tmp_path / f"{domain}.tar"
    monkeypatch.setitem(download.DATASETS["visda2017"], "domains", {"synthetic": 20, "real": 12})
    monkeypatch.setitem(download.DATASETS["visda2017"], "classes", 4)
    serve(monkeypatch, files)
    root = download.prepare_data_root(str(tmp_path / "data"), True, "visda2017")
    assert data_loader.find_domains(root) == ["real", "synthetic"]
    assert "VisDA-2017 is in" in capsys.readouterr().out
    serve(monkeypatch, {})  # offline: the message names every archive and the expected tree
    with pytest.raises(UserError) as error:
        download.prepare_data_root(str(tmp_path / "empty"), True, "visda2017")
    assert f"{download.VISDA}/train.tar" in str(error.value) and f"{download.VISDA}/validation.tar" in str(error.value)
    assert "synthetic/aeroplane/" in str(error.value)


def test_domainnet_downloads_each_archive_and_its_lists(tmp_path, monkeypatch, capsys):
    made = domainnet_tree(tmp_path / "made")
    files = {}
    for domain in ("clipart", "sketch"):
        with zipfile.ZipFile(tmp_path / f"{domain}.zip", "w") as out:
            for folder, _, names in os.walk(made / domain):
                for name in names:
                    out.write(os.path.join(folder, name), os.path.relpath(os.path.join(folder, name), made))
        url = download.DATASETS["domainnet"]["archives"][domain][0]
        files[url] = tmp_path / f"{domain}.zip"
        for split in ("train", "test"):
            files[f"{download.DOMAINNET}/domainnet/txt/{domain}_{split}.txt"] = made / f"{domain}_{split}.txt"
    spec = download.DATASETS["domainnet"]
    monkeypatch.setitem(spec, "archives", {d: spec["archives"][d] for d in ("clipart", "sketch")})
    monkeypatch.setitem(spec, "domains", {"clipart": None, "sketch": None})
    monkeypatch.setitem(spec, "classes", 3)
    serve(monkeypatch, files)
    root = download.prepare_data_root(str(tmp_path / "data"), True, "domainnet")
    assert data_loader.find_domains(root) == ["clipart", "sketch"]
    assert sorted(n for n in os.listdir(root) if n.endswith(".txt")) == \
        ["clipart_test.txt", "clipart_train.txt", "sketch_test.txt", "sketch_train.txt"]
    assert "clipart.zip's SHA-512 does not begin with" in capsys.readouterr().out  # (a generated archive)
    assert data_loader.load_domain(root, "sketch", 24, "memory", 0, "cpu").tested().tolist() != []
    files[f"{download.DOMAINNET}/domainnet/txt/clipart_test.txt"] = tmp_path / "short.txt"
    (tmp_path / "short.txt").write_text("clipart/bee/missing.jpg 0\n")
    with pytest.raises(UserError, match=r"clipart: 3 classes, 10 listed images of which 1 are missing"):
        download.prepare_data_root(str(tmp_path / "data2"), True, "domainnet")
    assert not os.path.exists(tmp_path / "data2")
    by_hand = download.by_hand("domainnet", "x")
    assert all(f"{download.DOMAINNET}/domainnet/txt/{d}_{split}.txt" in by_hand and url in by_hand
               for d, (url, _, _) in spec["archives"].items() for split in ("train", "test"))
