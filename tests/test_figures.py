"""Figures fit to print: the validators' figure (selection_table.draw), the t-SNE figure of one run or two side by
side (analysis.draw, --analyze), and the example of docs/example/ made by today's code."""
import json
import os
import re
import sys

import numpy as np
import pytest
from matplotlib.colors import to_rgba

import office31
from results.curves import colour
from selection import analysis, selection_table, validators

TINY = ["--model=resnet18", "--weights=none", "--resize_size=24", "--crop_size=20", "--iters_per_epoch=2",
        "--batch_size=6", "--num_workers=0", "--device=cpu", "--amp=off"]
SETTINGS = ("source_only", "dann trade_off=0.3", "dann trade_off=1.0")
TASKS = (("amazon", "webcam"), ("dslr", "webcam"), ("webcam", "amazon"))


def short(source, target):
    return f"{source[0].upper()}→{target[0].upper()}"


def swept(folder, tasks):
    """Rows ({label: rows}) and run files of the three SETTINGS on these tasks, two seeds, three evaluated epochs
    each, every epoch scored by every validator (a made-up score that varies with the setting and the epoch)."""
    by_label = {}
    for k, label in enumerate(SETTINGS):
        for task in tasks:
            for seed in (0, 1):
                epochs = [{"epoch": e, "target_acc": 0.3 + 0.1 * k + 0.05 * e + 0.01 * seed,
                           "validators": {name: 0.2 * k - 0.1 * e + 0.05 * n + 0.01 * seed
                                          for n, name in enumerate(validators.NAMES)}} for e in (1, 2, 3)]
                name = f"{label}-{task[0]}-{task[1]}-{seed}.json".replace(" ", "_")
                (folder / name).write_text(json.dumps({"epochs": epochs}))
                by_label.setdefault(label, []).append({"source": task[0], "target": task[1], "seed": seed,
                                                       "run_file": name, "accuracy": epochs[-1]["target_acc"]})
    return by_label


def drawn(folder, tasks):
    by_label = swept(folder, tasks)
    found = selection_table.candidates(str(folder), by_label)
    table = selection_table.picks(found, by_label, "source_only")
    return found, table, selection_table.draw(found, table, short, "accuracy", str(folder / "v.png"))


def shape(figure):
    return figure.axes[0].get_subplotspec().get_gridspec().get_geometry()


# -------------------------------------------------------------------------------------------------------------------
# the validators' figure


def test_the_validators_figure_keys_every_mark_colours_by_method_and_puts_scores_in_their_units(tmp_path):
    found, table, figure = drawn(tmp_path, TASKS[:1])
    [legend] = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == [*SETTINGS, "its pick (one per seed)"]
    # one task: the six validators in a landscape grid, not a column
    assert shape(figure) == (2, 3)
    width, height = figure.get_size_inches()
    assert width > height
    panels = {axis.get_gid(): axis for axis in figure.axes}
    assert sorted(panels) == sorted(f"A→W:{name}" for name in validators.NAMES)
    for name, axis in panels.items():
        points = {c.get_gid(): c for c in axis.collections}
        # each setting's points in its method's colour (the learning curves'), a marker apiece within a method
        for label in SETTINGS:
            assert tuple(points[f"points:{label}"].get_facecolor()[0][:3]) == pytest.approx(
                to_rgba(colour(label.split()[0]))[:3])
        assert not np.array_equal(*(points[f"points:{label}"].get_paths()[0].vertices for label in SETTINGS[1:]))
        assert len(points["picks"].get_offsets()) == 2  # one per seed
    accuracy = panels["A→W:source_val_acc"]
    assert accuracy.get_xlabel() == "source_val_acc: held-out source accuracy (%)"
    assert accuracy.get_ylabel() == "target accuracy (%)"
    scores = [run[3]["source_val_acc"] for runs in found[("amazon", "webcam")].values() for run in runs]
    shown = np.concatenate([c.get_offsets()[:, 0] for c in accuracy.collections if c.get_gid().startswith("points")])
    assert sorted(shown) == pytest.approx(sorted(100 * s for s in scores))  # a fraction drawn in percent
    assert panels["A→W:entropy"].get_xlabel() == "entropy: minus the mean target entropy (nats)"
    for name in ("dev", "bnm", "snd"):
        assert panels[f"A→W:{name}"].get_xlabel().endswith("(own scale)")


def test_the_validators_figure_of_three_tasks_has_a_row_per_validator_and_a_column_per_task(tmp_path):
    _, _, figure = drawn(tmp_path, TASKS)
    assert shape(figure) == (len(validators.NAMES), 3)
    assert [axis.get_gid() for axis in figure.axes[:3]] == ["A→W:source_val_acc", "D→W:source_val_acc",
                                                            "W→A:source_val_acc"]
    assert [axis.get_ylabel() for axis in figure.axes[:3]] == ["target accuracy (%)", "", ""]


# -------------------------------------------------------------------------------------------------------------------
# the t-SNE figure


def maps(count, classes, points=60):
    """count maps of random points: (title, note, coordinates, domains, labels)."""
    generator = np.random.default_rng(0)
    return [(f"{method}: proxy A-distance 1.000", f"run {method}.json", generator.normal(size=(points, 2)),
             np.arange(points) % 2, np.arange(points) % classes) for method in ("source_only", "dann")[:count]]


def test_a_t_sne_figure_has_its_title_a_class_legend_a_domain_key_of_marks_and_no_ticks(tmp_path):
    classes = ["back_pack", "bike", "calculator", "mug"]
    figure = analysis.draw(maps(1, 4), ["amazon", "webcam"], classes, "t-SNE of A→W, dann, seed 0",
                           tmp_path / "t.png")
    assert figure.texts[0].get_text() == "t-SNE of A→W, dann, seed 0"  # (the suptitle)
    assert [axis.get_title() for axis in figure.axes] == ["by domain", "by class"]
    domain, by_class = figure.legends
    assert [t.get_text() for t in domain.get_texts()] == ["amazon (source)", "webcam (target)"]
    # the domain key is marks, not colours: grey and black, a circle and a cross, in both panels
    handles = domain.legend_handles
    assert [h.get_marker() for h in handles] == ["o", "x"]
    assert all(to_rgba(h.get_color())[0] == to_rgba(h.get_color())[1] == to_rgba(h.get_color())[2] for h in handles)
    assert [t.get_text() for t in by_class.get_texts()] == classes
    for axis in figure.axes:
        assert list(axis.get_xticks()) == [] and list(axis.get_yticks()) == []
        assert [c.get_gid() for c in axis.collections] == [f"{axis.get_gid()}:amazon", f"{axis.get_gid()}:webcam"]
    assert os.path.getsize(tmp_path / "t.png") > 0


def test_many_classes_are_named_on_a_colour_bar_and_two_runs_sit_side_by_side(tmp_path):
    classes = [f"class{k}" for k in range(31)]
    figure = analysis.draw(maps(2, 31, 93), ["amazon", "webcam"], classes, "t-SNE of A→W, seed 0: source_only "
                           "beside dann", tmp_path / "t.png")
    panels = [axis for axis in figure.axes if axis.get_gid() in ("source_only", "dann")]
    assert [axis.get_title() for axis in panels] == ["source_only: proxy A-distance 1.000",
                                                     "dann: proxy A-distance 1.000"]
    assert [axis.get_xlabel() for axis in panels] == ["run source_only.json", "run dann.json"]
    [bar] = [axis for axis in figure.axes if axis not in panels]
    assert [t.get_text() for t in bar.get_yticklabels()] == classes
    assert len(figure.legends) == 1  # the domain key alone: the classes are on the bar


def test_analyze_refuses_three_methods_a_grid_or_a_sweep_before_any_work(tmp_path):
    argv = [f"--data_root={tmp_path / 'none'}", f"--out_dir={tmp_path}", *TINY, "--analyze"]
    for wrong in ("--method=source_only,dann,cdan", "--method=dann,dann", "--trade_off=0.1,1", "--tasks=all",
                  "--seeds=2"):
        with pytest.raises(SystemExit, match=r"--analyze=True reads one finished run, or two side by side "
                                             r"\(--method=source_only,dann"):
            office31.main([*argv, "--method=source_only,dann", wrong])


@pytest.mark.slow
def test_analyze_two_methods_draws_their_saved_runs_side_by_side(tmp_path, shifted, capsys, monkeypatch):
    argv = [f"--data_root={shifted}", f"--out_dir={tmp_path}", *TINY, "--epochs=1", "--eval_every=0"]
    office31.main([*argv, "--method=dann", "--save_model"])
    with pytest.raises(SystemExit, match=r"for source_only on amazon→webcam seed 0 with these flags there is no "
                                         r"finished run of it there"):
        office31.main([*argv, "--method=source_only,dann", "--analyze"])
    office31.main([*argv, "--method=source_only"])
    with pytest.raises(SystemExit, match=r"for source_only on amazon→webcam seed 0 with these flags its weights "
                                         r"were not saved"):
        office31.main([*argv, "--method=source_only,dann", "--analyze"])
    office31.main([*argv, "--method=source_only", "--save_model", "--rerun"])
    figures = []
    monkeypatch.setattr(analysis, "draw", lambda *a, draw=analysis.draw: figures.append(draw(*a)) or figures[-1])
    capsys.readouterr()
    found = office31.main([*argv, "--method=source_only,dann", "--analyze"])
    printed = capsys.readouterr().out
    # each run's proxy A-distance, printed as for one run
    assert [float(d) for d in re.findall(r"A→W proxy A-distance: (-?[\d.]+)", printed)] == [
        round(run["proxy_a_distance"], 3) for run in found["runs"]]
    assert [run["method"] for run in found["runs"]] == ["source_only", "dann"]
    assert re.fullmatch(r"tsne_amazon-webcam_resnet18_source_only_vs_dann_seed0_[0-9a-f]{8}\.png",
                        os.path.basename(found["figure"]))  # (the hash: of its two run files)
    [figure] = figures
    assert figure.texts[0].get_text() == "t-SNE of A→W, seed 0: source_only beside dann"
    panels = [axis for axis in figure.axes if axis.get_gid() in ("source_only", "dann")]
    assert [axis.get_title().split(":")[0] for axis in panels] == ["source_only", "dann"]
    assert [axis.get_xlabel().split("\n")[0] for axis in panels] == [f"run {run['run_file']}" for run in found["runs"]]
    # one run: its title names the task, method and seed, its proxy A-distance and its run
    [one] = office31.main([*argv, "--method=dann", "--analyze"])["runs"]
    assert figures[-1].texts[0].get_text() == (f"t-SNE of A→W, dann, seed 0: proxy A-distance "
                                               f"{one['proxy_a_distance']:.3f}\nrun {one['run_file']}\nt-SNE of "
                                               f"{one['layer']} (42 images)")


@pytest.fixture
def shifted(tmp_path):
    from conftest import make_tree
    return make_tree(tmp_path / "office31", {"amazon": 8, "webcam": 6}, size=(28, 28))


# -------------------------------------------------------------------------------------------------------------------
# docs/example/


EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "example")


def test_the_example_is_what_todays_code_writes_from_the_runs_of_its_documented_command(tmp_path, monkeypatch,
                                                                                       capsys):
    """docs/example/ keeps its runs' rows and run files (results/): their configs are those of the sweep its README
    shows, and --report, as the README says, writes from them the tables byte for byte and figures of the sizes
    kept there."""
    from PIL import Image
    from results.store import read_rows
    from test_docs import commands
    with open(os.path.join(EXAMPLE, "README.md"), encoding="utf-8") as f:
        sweep, analyze = commands(f.read())
    c = office31.resolve(office31.parse_flags(sweep, office31.dataset_defaults("demo", office31.FLAGS), echo=False))
    rows = read_rows(os.path.join(EXAMPLE, "results", "results.jsonl"))
    assert sorted((r["config"]["method"], r["seed"]) for r in rows) == sorted(
        (m, s) for m in c["method"].split(",") for s in range(c["seeds"]))
    for row in rows:
        for flag in ("model", "weights", "epochs", "iters_per_epoch", "batch_size", "resize_size", "crop_size",
                     "source_val", "lr"):
            assert row["config"][flag] == c[flag], flag
        assert c["amp"] == "off" and row["config"]["precision"] == "fp32"
    assert "--analyze=True" in analyze and "--method=source_only,dann" in analyze
    out = tmp_path / "out" / "demo"
    out.mkdir(parents=True)
    for name in os.listdir(os.path.join(EXAMPLE, "results")):
        (out / name).write_bytes(open(os.path.join(EXAMPLE, "results", name), "rb").read())
    monkeypatch.chdir(tmp_path)
    office31.main(["--dataset=demo", "--report"])
    assert "| method | A→W | average |" in capsys.readouterr().out
    written = {name.split("_")[0] + os.path.splitext(name)[1]: out / name for name in os.listdir(out)
               if name.startswith(("table_", "selection_", "curves_", "validators_"))}
    assert sorted(written) == ["curves.png", "selection.csv", "selection.md", "selection.tex", "table.csv", "table.md",
                               "table.tex", "validators.png"]
    for name, path in written.items():
        kept = os.path.join(EXAMPLE, name)
        if name.endswith(".png"):
            assert Image.open(path).size == Image.open(kept).size, name
            assert os.path.getsize(kept) < 200_000  # (a modest dpi)
        else:
            assert path.read_text(encoding="utf-8") == open(kept, encoding="utf-8").read(), name
    # docs/sweeps.md quotes the example's table as it is here
    with open(os.path.join(EXAMPLE, "..", "sweeps.md"), encoding="utf-8") as f:
        quoted = f.read()
    for name in ("table.md", "table.tex"):  # (and table.csv's first lines)
        assert open(os.path.join(EXAMPLE, name), encoding="utf-8").read().strip() in quoted, name
    assert "\n".join(open(os.path.join(EXAMPLE, "table.csv"), encoding="utf-8").read().splitlines()[:2]) in quoted


def test_the_validators_figure_tells_apart_every_setting_of_a_big_grid_and_fits_its_title(tmp_path, monkeypatch):
    """A 3 x 3 x 2 grid of one method: eighteen settings, each its own mark (marker, filling, shade); the title is
    wrapped to the figure's width (two panels wide, it once ran past both edges)."""
    grid = tuple(f"dann trade_off={t} lr={lr}" for t in (0.1, 0.3, 1.0) for lr in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3))
    monkeypatch.setattr(sys.modules[__name__], "SETTINGS", grid)
    _, _, figure = drawn(tmp_path, TASKS[:1])
    [legend] = figure.legends
    marks = [(h.get_marker(), h.get_markerfacecolor(), h.get_color()) for h in legend.legend_handles[:len(grid)]]
    assert len(set(map(str, marks))) == len(grid)
    _, _, figure = drawn(tmp_path, TASKS[:2])  # two tasks: two panels wide, the narrowest figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)  # (the constrained layout, as savefig placed it)
    box = figure._suptitle.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= figure.bbox.width
