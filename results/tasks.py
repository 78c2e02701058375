"""Tasks: which ones a sweep runs (--tasks, --seeds), their short names (A→W) and the papers' column order.

    plan_runs(c, "data/office31")             # [(source, target, seed), ...] of --tasks and --seeds
    ordered([("webcam", "dslr"), ("amazon", "webcam")])   # in the papers' column order: A→W first
    short_names(["amazon", "dslr", "webcam"]) # {"amazon": "A", ...}: initials, longer where they collide
"""
import itertools
import os



from common.errors import UserError
from data_loader import find_domains, resolve_domain
from data_loader import fingerprint
from results.store import latest_per_seed


# The column order of the papers' Office-31 tables (DAN, DANN, CDAN): A→W, D→W, W→D, A→D, D→A, W→A.
PAPER_ORDER = [("amazon", "webcam"), ("dslr", "webcam"), ("webcam", "dslr"), ("amazon", "dslr"), ("dslr", "amazon"),
               ("webcam", "amazon")]


def ordered(tasks, order=PAPER_ORDER):
    """The tasks ((source, target) pairs) once each, in `order` where it lists them, the others after, as they
    come: the column order of every table."""
    tasks = list(dict.fromkeys(tasks))
    return sorted(tasks, key=lambda task: order.index(task) if task in order else len(order))


def tasks_in_order(rows_by_method, order=PAPER_ORDER):
    """Every task of these rows ({label: rows}), ordered()."""
    return ordered((task for rows in rows_by_method.values() for task in latest_per_seed(rows)), order)


def short_names(domains):
    """Labels for task names: the shortest prefix at which all domain names differ, first letter upper-case:
    A, D, W for Office-31; Mnist, Mnistm, Svhn where initials (and shorter prefixes) collide."""
    longest = max(map(len, domains), default=1)
    length = next((k for k in range(1, longest + 1) if len({d[:k].lower() for d in domains}) == len(domains)),
                  longest)
    return {d: d[:length][0].upper() + d[1:length] for d in domains}


def task_name(source_name, target_name, labels):
    return f"{labels[source_name]}→{labels[target_name]}"


def domain_name(data_root, name):
    return os.path.basename(resolve_domain(data_root, name))


def task_pairs(c):
    """The (source, target) pairs --tasks, or --source and --target, name, as written (names or initials); None for
    --tasks=all."""
    if c["tasks"] == "all":
        return None
    if not c["tasks"]:
        if same_domain(c["source"], c["target"]):
            raise UserError(f"--source={c['source']} --target={c['target']}: the task trains and tests on the same "
                            f"domain, but the target must be a domain the network was not trained on. Give another "
                            "--target (or --source); an empty one is the dataset's first task's.")
        return [(c["source"], c["target"])]
    pairs = []
    for task in c["tasks"].split(","):
        names = task.strip().split("-")
        if len(names) != 2 or not all(names):
            raise UserError(f"--tasks: '{task}' is not a task; write SOURCE-TARGET pairs with domain names or "
                            "initials, separated by commas (e.g. A-W,W-A), or all.")
        if same_domain(*names):
            raise UserError(f"--tasks: '{task.strip()}' trains and tests on the same domain, but the target must be a "
                            "domain the network was not trained on. Leave it out (--tasks=all pairs every two "
                            "different domains).")
        pairs.append(tuple(names))
    return pairs


def same_domain(source, target):
    """Whether two names of a task (domain names or initials, any case) name the same domain, found before the data
    is: the same name, or a name and its initial (an initial names one domain only, so both name that one; domain
    folders named by one letter aside)."""
    source, target = source.strip().lower(), target.strip().lower()
    return source == target or (min(len(source), len(target)) == 1 and source[0] == target[0])


def plan_runs(c, data_root):
    """The sweep as (source, target, seed) tuples with domain folder names, before sharding."""
    pairs = task_pairs(c)
    if pairs is None:
        found = find_domains(data_root)
        if len(found) < 2:
            raise UserError(f"--tasks=all needs at least two domains under '{data_root}'; found: "
                            f"{', '.join(found) or 'none'}.")
        pairs = list(itertools.permutations(found, 2))
    else:
        pairs = list(dict.fromkeys(tuple(domain_name(data_root, n) for n in pair) for pair in pairs))
    return [(source, target, c["seed"] + k) for source, target in pairs for k in range(c["seeds"])]


def names_and_fingerprints(data_root):
    """The domains under data_root: {domain: its label in task names}, {domain: fingerprint of its data}."""
    labels = short_names(find_domains(data_root))
    return labels, {name: fingerprint(data_root, name) for name in labels}
