"""--analyze=True: the features of a finished run, as the papers show them. No training.

    python office31.py --method=dann --save_model=True           # the run, its weights kept
    python office31.py --method=dann --analyze=True              # the same flags: its t-SNE figure and A-distance

The features are the classifier's input (the bottleneck's output where there is one, else the backbone's pooled
output) of every source and target image, centre-cropped as for testing. Printed: the proxy A-distance (Ben-David
et al., "Analysis of Representations for Domain Adaptation", NIPS 2007; as DANN and DAN report it), 2 (1 - 2 err)
with err the test error of a linear domain classifier trained on half of the features, tested on the other half:
0 where the domains cannot be told apart, 2 where they are separable. Written: tsne_<run>.png, a t-SNE map of the
features coloured by domain (left) and by class (right). scikit-learn fits the t-SNE and splits the features in
halves; it is imported here only.
"""
import os

import numpy
import torch

from data_loader import UserError, choose_cache, load_domain
from networks.models import build_model, classifier, input_size, network_pixels
from results.tasks import domain_name, task_name
from results.store import read_rows
from results.experiments import same_experiment
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
                        f"but for {source}->{target} seed {c['seed']} with these flags {why}.")
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
    (C = 1: 1 / n on the mean loss of n points)."""
    from sklearn.model_selection import train_test_split
    x = torch.cat([source, target]).double()  # (in float64, as scikit-learn fitted it)
    y = [0] * len(source) + [1] * len(target)
    fit, test = (torch.from_numpy(half) for half in train_test_split(
        numpy.arange(len(y)), test_size=0.5, stratify=y, random_state=seed))
    mean, std = x[fit].mean(0), x[fit].std(0, unbiased=False)  # over the fitted half, as scikit-learn's StandardScaler
    std[std == 0] = 1
    _, _, accuracy = domain_classifier((x - mean) / std, torch.tensor(y).double(), fit, test, [1 / len(fit)])
    error = 1 - accuracy
    return 2 * (1 - 2 * error), error


def tsne(points, seed=0):
    """2-D t-SNE coordinates of the rows of points (scikit-learn's, PCA-initialised, seeded)."""
    from sklearn.manifold import TSNE
    perplexity = min(30.0, (len(points) - 1) / 3)  # (it must stay below the number of points)
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points.numpy())


def draw(coordinates, domains, labels, names, classes, title, path):
    """The t-SNE map twice: coloured by domain (left), by class with the domain as the marker (right)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, (by_domain, by_class) = plt.subplots(1, 2, figsize=(12, 5.5))
    for k, name in enumerate(names):
        mine = domains == k
        by_domain.scatter(*coordinates[mine].T, s=6, alpha=0.6, color=f"C{k}", label=name)
        by_class.scatter(*coordinates[mine].T, s=8, alpha=0.7, c=labels[mine], cmap="tab20", vmin=0,
                         vmax=max(len(classes) - 1, 1), marker="o^"[k], label=f"{name} (marker)")
    by_domain.legend()
    by_class.legend()
    by_domain.set_title("by domain")
    by_class.set_title(f"by class ({len(classes)} classes)")
    by_domain.set_gid("domain")
    by_class.set_gid("class")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    write_file(path, lambda f: figure.savefig(f, format="png", dpi=90))
    plt.close(figure)


def analyze(c, data_root, device, results_path, evaluate):
    """The proxy A-distance and t-SNE figure of the finished run of config c (one method, resolved); returns
    {"proxy_a_distance", "domain_error", "layer", "figure"}. evaluate: office31.evaluate."""
    labels, data = names_and_fingerprints(data_root)
    source_name, target_name = domain_name(data_root, c["source"]), domain_name(data_root, c["target"])
    run = dict(c, source=source_name, target=target_name)
    row, path = saved_run(run, results_path, data, source_name, target_name)
    cache = choose_cache(c["cache"], data_root, [source_name, target_name], c["resize_size"], device)
    interpolation = input_size(c["model"], c["weights"])[2]
    domains = [load_domain(data_root, name, c["resize_size"], cache, c["num_workers"], device, interpolation,
                           c["cache_dir"]) for name in (source_name, target_name)]
    net, new_layer = build_model(c["model"], len(domains[0].classes), "none", c["bottleneck"], c["freeze"])
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net = net.to(device)
    layer = classifier(new_layer(net))
    pixels = network_pixels(c["model"], c["weights"])
    (xs, ys), (xt, yt) = (features(c, net, layer, d, evaluate, pixels) for d in domains)
    named = (f"the classifier's input: the {c['bottleneck']}-wide bottleneck's output" if c["bottleneck"] else
             f"the classifier's input: {c['model']}'s {xs.shape[1]} pooled features")
    distance, error = proxy_a_distance(xs, xt)
    task = task_name(source_name, target_name, labels)
    print(f"{task} proxy A-distance: {distance:.3f} (a linear domain classifier's test error {100 * error:.1f}%; "
          f"features: {named}; {len(xs)} source and {len(xt)} target images; run {row['run_file']})")
    points = torch.cat([xs, xt])
    domain_of = torch.cat([torch.zeros(len(xs), dtype=torch.long), torch.ones(len(xt), dtype=torch.long)])
    class_of = torch.cat([ys, yt])
    if len(points) > MOST_POINTS:
        keep = torch.randperm(len(points), generator=torch.Generator().manual_seed(0))[:MOST_POINTS]
        points, domain_of, class_of = points[keep], domain_of[keep], class_of[keep]
    figure = os.path.join(os.path.dirname(results_path), "tsne_" + row["run_file"][:-len(".json")] + ".png")
    title = (f"{task} {row['run_file']}: t-SNE of {named} ({len(points)} images); proxy A-distance {distance:.3f}")
    draw(tsne(points), domain_of.numpy(), class_of.numpy(), [source_name, target_name], domains[0].classes, title,
         figure)
    print(f"wrote {figure}")
    return {"proxy_a_distance": distance, "domain_error": error, "layer": named, "figure": figure}
