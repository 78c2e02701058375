"""Figures fit to print: the validators' figure (selection_table.draw)."""
import json

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from results.curves import colour
from selection import selection_table, validators

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
