"""--analyze=True: the features of a finished run, as the papers show them. No training.

    python office31.py --method=dann --save_model=True           # the run, its weights kept
    python office31.py --method=dann --analyze=True              # the same flags: its t-SNE figure and A-distance
    python office31.py --method=source_only,dann --analyze=True  # two saved runs of one task and seed, side by side

The features are the classifier's input (the bottleneck's output where there is one, else the backbone's pooled
output) of every source and target image, centre-cropped as for testing. Printed: the proxy A-distance (Ben-David
et al., "Analysis of Representations for Domain Adaptation", NIPS 2007; as DANN and DAN report it), 2 (1 - 2 err)
with err the test error of a linear domain classifier trained on half of the features, tested on the other half:
0 where the domains cannot be told apart, 2 where they are separable. Written: tsne_<run>.png, a t-SNE map of the
features by domain (left) and by class (right), circles the source's images and crosses the target's; of two runs,
tsne_<task>_<model>_<method>_vs_<method>_seed<seed>.png, a map of each by class. scikit-learn fits the t-SNE and
splits the features in halves; it is imported here only.
"""
import hashlib
import os

import numpy
import torch

from common.errors import UserError
from data_loader import choose_cache, load_domain
from networks.models import build_model, classifier, input_size, network_pixels
from results.tasks import domain_name, task_name
from results.store import read_rows
from results.experiments import method_label, same_experiment
from common.files import write_file
from results.tasks import names_and_fingerprints
from selection.validators import domain_classifier

MOST_POINTS = 4000  # t-SNE on a seeded sample of at most this many images (Office-31's largest task has 3,315)


def saved_run(c, results_path, data, source, target):
    """The row of the latest finished run of config c on this task and seed whose weights were saved, and the path
    of its weights; a UserError saying how to make one where there is none."""
    rows = [r for r in read_rows(results_path) if same_experiment(r, c, data)
            and (r["source"], r["target"], r["seed"]) == (source, target, c["seed"])]
    saved = [r for r in rows if os.path.exists(weights_path(results_path, r))]
    if not saved:
        why = ("its weights were not saved: run it again with --save_model=True --rerun=True" if rows else
               "there is no finished run of it there: train it first with these flags and --save_model=True")
        raise UserError(f"--analyze=True reads a finished run's weights from {os.path.dirname(results_path) or '.'}, "
                        f"but for {method_label(c)} on {source}→{target} seed {c['seed']} with these flags {why}.")
    return saved[-1], weights_path(results_path, saved[-1])


def weights_path(results_path, row):
    return os.path.join(os.path.dirname(results_path), (row.get("run_file") or ".json")[:-len(".json")] + ".pt")


def features(c, net, layer, domain, evaluate, pixels):
    """(features, labels) of every image of a domain: the input of `layer` (the classifier)."""
    outputs = evaluate(net, domain.test_batches(c["eval_batch_size"], c["crop_size"], pixels), False,
                       torch.contiguous_format, layer)
    return outputs.features, outputs.labels


def proxy_a_distance(source, target, seed=0):
    """(2 (1 - 2 err), err): err is the test error of a linear domain classifier (DEV's,
    validators.domain_classifier: a logistic regression on standardised features) trained on a seeded,
    domain-stratified half of the features and tested on the other. Its L2 weight is scikit-learn's default
    (C = 1: 1 / n on the mean loss of n points), as the split is scikit-learn's; the fit runs L-BFGS to convergence,
    where scikit-learn's LogisticRegression, which this repo used before, stops at a tolerance: on thousands of
    points the two can differ in the error's third decimal."""
    from sklearn.model_selection import train_test_split
    x = torch.cat([source, target]).double()  # (in float64, as scikit-learn fitted it)
    y = [0] * len(source) + [1] * len(target)
    fit, test = (torch.from_numpy(half) for half in train_test_split(
        numpy.arange(len(y)), test_size=0.5, stratify=y, random_state=seed))
    mean, std = x[fit].mean(0), x[fit].std(0, unbiased=False)  # over the fitted half, as scikit-learn's StandardScaler
    std[std == 0] = 1
    _, _, accuracy = domain_classifier((x - mean) / std, torch.tensor(y).double(), fit, test, [1 / len(fit)],
                                       steps=2000)
    error = 1 - accuracy
    return 2 * (1 - 2 * error), error


def tsne(points, seed=0):
    """2-D t-SNE coordinates of the rows of points (scikit-learn's, PCA-initialised, seeded)."""
    from sklearn.manifold import TSNE
    perplexity = min(30.0, (len(points) - 1) / 3)  # (it must stay below the number of points)
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points.numpy())


def class_colours(count):
    """A colour per class: matplotlib's tab10 or tab20 where they have enough, else evenly spaced along turbo."""
    import matplotlib
    from matplotlib.colors import ListedColormap
    if count <= 20:
        return ListedColormap(matplotlib.colormaps["tab10" if count <= 10 else "tab20"].colors[:count])
    return ListedColormap(matplotlib.colormaps["turbo"](numpy.linspace(0, 1, count)))


MOST_CLASS_NAMES = 20  # classes named in a legend; more (Office-31's 31, Office-Home's 65): a colour bar of names
DOMAIN_MARKS = ({"marker": "o", "s": 10, "alpha": 0.6}, {"marker": "x", "s": 14, "linewidths": 0.8, "alpha": 0.8})


def draw(maps, names, classes, title, path):
    """The t-SNE figure, written to path; returns it. maps: [(panel title, note under the panel, coordinates,
    domains, labels)], domains 0 (source) and 1 (target), names the two domains'. One map: two panels, its points
    by domain (grey circles for the source, black crosses for the target) and by class (the class's colour, the same
    marks); two maps (source only and a method, say): a panel of each, by class. The marks' key and the classes'
    (a legend, or a colour bar of their names where there are many) are the figure's; no axis ticks: t-SNE's
    coordinates mean nothing."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm
    from matplotlib.lines import Line2D
    panels = [("by domain", "", *maps[0][2:], "domain"), ("by class", "", *maps[0][2:], "class")] \
        if len(maps) == 1 else [(*m, "class") for m in maps]  # (one map: its title and note are the figure's)
    cmap = class_colours(len(classes))
    norm = BoundaryNorm(numpy.arange(len(classes) + 1) - 0.5, len(classes))
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 2.2, 5.4), squeeze=False,
                                layout="constrained")
    for axis, (name, note, coordinates, domains, labels, by) in zip(axes[0], panels):
        for k in (0, 1):
            mine = domains == k
            shade = {"color": ("0.55", "black")[k]} if by == "domain" else {"c": labels[mine], "cmap": cmap,
                                                                            "norm": norm}
            axis.scatter(*coordinates[mine].T, **DOMAIN_MARKS[k], **shade, gid=f"{by}:{names[k]}")
        axis.set_title(name, fontsize=10)
        axis.set_xlabel(note, fontsize=7)
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_gid(by if len(maps) == 1 else name.split(":")[0])
    marks = [Line2D([], [], linestyle="", marker=DOMAIN_MARKS[k]["marker"], color=("0.55", "black")[k],
                    label=f"{names[k]} ({('source', 'target')[k]})") for k in (0, 1)]
    figure.legend(handles=marks, loc="outside lower center", ncols=2, fontsize=9, title="domain", frameon=False)
    if len(classes) <= MOST_CLASS_NAMES:
        key = [Line2D([], [], linestyle="", marker="s", color=cmap(k), label=name) for k, name in enumerate(classes)]
        figure.legend(handles=key, loc="outside right upper", fontsize=8, title="class", frameon=False)
    else:
        bar = figure.colorbar(ScalarMappable(norm, cmap), ax=axes[0].tolist(), location="right", fraction=0.04)
        every = max(1, len(classes) // 70)  # (at most about 70 names: DomainNet's 345, every fourth)
        bar.set_ticks(range(0, len(classes), every), labels=list(classes)[::every], fontsize=6)
        bar.set_label("class")
    figure.suptitle(title, fontsize=10)
    try:
        write_file(path, lambda f: figure.savefig(f, format="png", dpi=90))
    finally:
        plt.close(figure)
    return figure


def run_features(c, path, domains, device, evaluate):
    """(source features, source labels, target features, target labels, what the features are) of the run of
    config c whose weights are at path."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    head = "shot" if any("parametrizations." in key for key in state) else "plain"  # (SHOT's weight-normed classifier)
    net, new_layer = build_model(c["model"], len(domains[0].classes), "none", c["bottleneck"], c["freeze"], head)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"--analyze: the weights at {path} do not load into {c['model']} with --bottleneck="
                        f"{c['bottleneck']} ({str(e).splitlines()[0]}). A tent run's cannot: its BatchNorm layers "
                        "keep no statistics, since it adapts as it predicts; analyze the run it started from "
                        "instead.") from None
    net = net.to(device)
    layer = classifier(new_layer(net))
    pixels = network_pixels(c["model"], c["weights"])
    (xs, ys), (xt, yt) = (features(c, net, layer, d, evaluate, pixels) for d in domains)
    named = (f"the classifier's input: the {c['bottleneck']}-wide bottleneck's output" if c["bottleneck"] else
             f"the classifier's input: {c['model']}'s {xs.shape[1]} pooled features")
    return xs, ys, xt, yt, named


def analyze(configs, data_root, device, results_path, evaluate):
    """The proxy A-distance and t-SNE map of the finished run of each config (one method each, resolved; one run,
    or two of one task and seed, such as source only and a method, side by side in one figure); returns {"figure",
    "runs": [{"proxy_a_distance", "domain_error", "layer", "run_file", "method"}]}. evaluate: office31.evaluate."""
    labels, data = names_and_fingerprints(data_root)
    first = configs[0]
    source_name, target_name = domain_name(data_root, first["source"]), domain_name(data_root, first["target"])
    saved = [saved_run(dict(c, source=source_name, target=target_name), results_path, data, source_name, target_name)
             for c in configs]  # (every run found before any work)
    cache = choose_cache(first["cache"], data_root, [source_name, target_name], first["resize_size"], device)
    interpolation = input_size(first["model"], first["weights"])[2]
    domains = [load_domain(data_root, name, first["resize_size"], cache, first["num_workers"], device, interpolation,
                           first["cache_dir"]) for name in (source_name, target_name)]
    task = task_name(source_name, target_name, labels)
    maps, runs = [], []
    for c, (row, path) in zip(configs, saved):
        xs, ys, xt, yt, named = run_features(c, path, domains, device, evaluate)
        distance, error = proxy_a_distance(xs, xt)
        print(f"{task} proxy A-distance: {distance:.3f} (a linear domain classifier's test error {100 * error:.1f}%; "
              f"features: {named}; {len(xs)} source and {len(xt)} target images; run {row['run_file']})")
        points = torch.cat([xs, xt])
        domain_of = torch.cat([torch.zeros(len(xs), dtype=torch.long), torch.ones(len(xt), dtype=torch.long)])
        class_of = torch.cat([ys, yt])
        if len(points) > MOST_POINTS:
            keep = torch.randperm(len(points), generator=torch.Generator().manual_seed(0))[:MOST_POINTS]
            points, domain_of, class_of = points[keep], domain_of[keep], class_of[keep]
        label = method_label(c)
        maps.append((f"{label}: proxy A-distance {distance:.3f}",
                     f"run {row['run_file']}\nt-SNE of {named} ({len(points)} images)",
                     tsne(points), domain_of.numpy(), class_of.numpy()))
        runs.append({"proxy_a_distance": distance, "domain_error": error, "layer": named,
                     "run_file": row["run_file"], "method": label})
    folder = os.path.dirname(results_path)
    if len(configs) == 1:
        figure = os.path.join(folder, "tsne_" + saved[0][0]["run_file"][:-len(".json")] + ".png")
        title = (f"t-SNE of {task}, {runs[0]['method']}, seed {first['seed']}: proxy A-distance "
                 f"{runs[0]['proxy_a_distance']:.3f}\n{maps[0][1]}")
    else:  # one name for the pair, rewritten in place when drawn again; the hash of its two run files tells it
        pair = hashlib.sha1(" ".join(run["run_file"] for run in runs).encode()).hexdigest()[:8]  # from other pairs
        figure = os.path.join(folder, f"tsne_{source_name}-{target_name}_{first['model']}_"
                                      + "_vs_".join(run["method"] for run in runs) + f"_seed{first['seed']}_{pair}.png")
        title = f"t-SNE of {task}, seed {first['seed']}: " + " beside ".join(run["method"] for run in runs)
    draw(maps, [source_name, target_name], domains[0].classes, title, figure)
    print(f"wrote {figure}")
    return {"figure": figure, "runs": runs}
