"""The learning-curve figure: written for one run and for a sweep, its lines equal to the run files' numbers (read
through matplotlib's objects), a run without evaluated epochs said so, and no matplotlib for a run that draws none."""
import json
import os
import subprocess
import sys

import pytest

from results import curves
from conftest import ROOT, make_tree, table_file
from results.store import latest_per_seed
from test_sweep import rows_of, sweep


def figure_of(out, methods):
    """curves.draw again on the rows of the results file, for its matplotlib objects: {gid: (x, y)} of the lines."""
    rows = rows_of(out)
    by_method = {m: [r for r in rows if r["config"]["method"] == m] for m in methods}
    fig = curves.draw(str(out), by_method, lambda s, t: f"{s[0].upper()}→{t[0].upper()}", "title",
                      str(out / "again.png"))
    return fig, rows


def panels(fig):
    """{gid: axes}: each task's "<task>:accuracy" and "<task>:loss" panels."""
    return {ax.get_gid(): ax for ax in fig.axes if ax.get_gid()}


def lines_of(axis):
    return {line.get_gid(): (list(line.get_xdata()), list(line.get_ydata())) for line in axis.get_lines()}


def epochs_of(out, row):
    with open(os.path.join(out, row["run_file"]), encoding="utf-8") as f:
        return json.load(f)["epochs"]


def test_one_run_draws_its_accuracy_and_loss_per_epoch(tmp_path):
    root = make_tree(tmp_path / "office31", {"amazon": 2, "webcam": 2}, size=(20, 20))
    out = tmp_path / "out"
    sweep(root, out, "--tasks=A-W", "--epochs=3", "--eval_every=1")
    assert os.path.getsize(table_file(out, "png")) > 0
    fig, [row] = figure_of(out, ["source_only"])
    epochs = epochs_of(out, row)
    top, bottom = panels(fig)["A→W:accuracy"], panels(fig)["A→W:loss"]
    assert top.get_title() == "A→W" and top.get_ylabel() == "target accuracy (%)"
    assert lines_of(top)["source_only:target"] == ([1, 2, 3], [100 * e["target_acc"] for e in epochs])
    assert lines_of(bottom)["source_only:loss"] == ([1, 2, 3], [e["loss"] for e in epochs])
    assert "source_only:adaptation" not in lines_of(bottom)
    assert top.get_legend().get_texts()[0].get_text() == "source_only (1 seed)"


def test_a_visda_curve_is_its_mean_class_accuracy_per_epoch(tmp_path):
    """Each epoch records both numbers; VisDA-2017's rows are scored by the mean class accuracy, and so is its curve."""
    epochs = [{"epoch": k + 1, "loss": 1.0 / (k + 1), "target_acc": acc, "target_class_acc": class_acc}
              for k, (acc, class_acc) in enumerate([(0.5, 0.25), (0.75, 0.4)])]
    (tmp_path / "run.json").write_text(json.dumps({"epochs": epochs}))
    row = {"source": "synthetic", "target": "real", "seed": 0, "run_file": "run.json", "accuracy": 0.4,
           "mean_class_accuracy": 0.4, "metric": "mean class accuracy"}
    fig = curves.draw(str(tmp_path), {"dann": [row]}, lambda s, t: "S→R", "title", str(tmp_path / "curves.png"))
    top = panels(fig)["S→R:accuracy"]
    assert lines_of(top)["dann:target"] == ([1, 2], [25.0, 40.0])
    assert top.get_ylabel() == "target mean class accuracy (%)"


def test_shot_and_tent_are_not_drawn_as_source_losses_and_the_panel_says_so(tmp_path, monkeypatch):
    """SHOT's target stage has epochs of its own and no source loss (its pseudo-label loss is on the target); TENT
    has one pass: drawn on the source runs' axes they would read as what they are not. The panel names them."""
    from methods.shot import SHOT
    monkeypatch.setattr(SHOT, "epochs", 3)
    root = make_tree(tmp_path / "office31", {"amazon": 2, "webcam": 2}, size=(20, 20))
    out = tmp_path / "out"
    sweep(root, out, "--tasks=A-W", "--epochs=2", "--method=shot,tent")
    fig, _ = figure_of(out, ["shot_source", "shot", "tent"])
    top, bottom = panels(fig)["A→W:accuracy"], panels(fig)["A→W:loss"]
    assert set(lines_of(top)) <= {"shot_source:target"} and set(lines_of(bottom)) == {"shot_source:loss"}
    [note] = [t for t in top.texts if t.get_gid() == "no curve"]
    assert "not drawn: shot, tent (adapted from a trained model" in " ".join(note.get_text().split())


@pytest.mark.slow
def test_a_sweep_draws_each_method_as_the_mean_of_its_seeds_in_each_task(tmp_path):
    root = make_tree(tmp_path / "office31", {"amazon": 2, "webcam": 2}, size=(20, 20))
    out = tmp_path / "out"
    sweep(root, out, "--tasks=A-W,W-A", "--seeds=2", "--epochs=2", "--eval_every=1", "--method=source_only,coral")
    assert os.path.exists(table_file(out, "png"))
    fig, rows = figure_of(out, ["source_only", "coral"])
    assert sorted(panels(fig)) == ["A→W:accuracy", "A→W:loss", "W→A:accuracy", "W→A:loss"]
    for name, task in {"A→W": ("amazon", "webcam"), "W→A": ("webcam", "amazon")}.items():
        top, bottom = panels(fig)[f"{name}:accuracy"], panels(fig)[f"{name}:loss"]
        for method in ("source_only", "coral"):
            runs = [epochs_of(out, r) for r in latest_per_seed([r for r in rows if r["config"]["method"] == method])
                    [task].values()]
            assert len(runs) == 2
            mean = [sum(100 * run[k]["target_acc"] for run in runs) / 2 for k in range(2)]
            x, y = lines_of(top)[f"{method}:target"]
            assert x == [1, 2] and y == [pytest.approx(v, rel=1e-6) for v in mean]
            loss = [sum(run[k]["loss"] for run in runs) / 2 for k in range(2)]
            assert lines_of(bottom)[f"{method}:loss"][1] == [pytest.approx(v, rel=1e-6) for v in loss]
        assert "coral:adaptation" in lines_of(bottom) and "source_only:adaptation" not in lines_of(bottom)
        assert len(top.collections) == 2  # a band for each method's spread over seeds
        assert sorted(t.get_text() for t in top.get_legend().get_texts()) == ["coral (2 seeds)",
                                                                               "source_only (2 seeds)"]


def test_a_run_that_evaluated_only_its_final_model_gets_no_curve_but_a_note(tmp_path):
    root = make_tree(tmp_path / "office31", {"amazon": 2, "webcam": 2}, size=(20, 20))
    out = tmp_path / "out"
    sweep(root, out, "--tasks=A-W", "--epochs=2", "--eval_every=0")
    fig, _ = figure_of(out, ["source_only"])
    top, bottom = panels(fig)["A→W:accuracy"], panels(fig)["A→W:loss"]
    assert "source_only:target" not in lines_of(top) and "source_only:loss" in lines_of(bottom)
    [note] = [t for t in top.texts if t.get_gid() == "no curve"]
    assert "source_only" in note.get_text() and "eval_every=0" in note.get_text()


@pytest.mark.slow
def test_a_run_that_draws_no_figure_never_imports_matplotlib(tree, tmp_path):
    code = ("import sys, office31; office31.main(['--data_root=' + sys.argv[1], '--model=resnet18', '--weights=none',"
            " '--resize_size=36', '--crop_size=32', '--epochs=1', '--iters_per_epoch=1', '--batch_size=4',"
            " '--num_workers=0', '--device=cpu', '--out_dir=' + sys.argv[2]]); print('matplotlib' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, tree, str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, TORCH_HOME=str(tmp_path / "torch")))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.slow
def test_whole_epochs_a_legend_for_the_dashed_line_one_colour_per_method_and_rows_of_tasks(tmp_path):
    """Twelve tasks wrap into three rows of four; the epoch axis is marked in whole numbers; the line styles are
    in a legend; a method's colour depends on its name alone, the same in a figure of other methods."""
    domains = {"Art": 1, "Clipart": 1, "Product": 1, "Real_World": 1}
    root = make_tree(tmp_path / "home", domains, size=(20, 20))
    out = tmp_path / "out"
    sweep(root, out, "--tasks=all", "--epochs=3", "--eval_every=1", "--method=coral,dann")
    fig, _ = figure_of(out, ["coral", "dann"])
    tops = [ax for gid, ax in panels(fig).items() if gid.endswith(":accuracy")]
    assert len(tops) == 12 and len({round(ax.get_position().x0, 3) for ax in tops}) == 4  # four columns
    assert len({round(ax.get_position().y0, 3) for ax in tops}) == 3  # three rows of accuracy panels
    for ax in panels(fig).values():
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    [kinds] = [ax.get_legend() for ax in fig.axes if ax.get_legend() and ax.get_gid().endswith(":loss")]
    assert [(line.get_linestyle(), text.get_text()) for line, text in zip(kinds.get_lines(), kinds.get_texts())] == \
        [("-", "source classification loss"), ("--", "adaptation term")]
    top = tops[0]
    colours = {line.get_gid(): line.get_color() for line in top.get_lines()}
    assert colours["dann:target"] == curves.colour("dann") != curves.colour("coral") == colours["coral:target"]
    rows = rows_of(out)
    alone = curves.draw(str(out), {"dann": [r for r in rows if r["config"]["method"] == "dann"]},
                        lambda s, t: f"{s}→{t}", "title", str(out / "dann.png"))
    [line] = [line for ax in alone.axes for line in ax.get_lines() if line.get_gid() == "dann:target"][:1]
    assert line.get_color() == colours["dann:target"]  # the same colour without coral beside it
