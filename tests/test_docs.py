"""The README and docs/ stay true: every command in them parses and passes the checks made before any work, every
flag they name exists, every link leads to a file, and the README stays short, with contents and every page linked."""
import glob
import os
import re
import shlex

import pytest

from runs import flags
import office31
from conftest import ROOT

PAGES = ["README.md", "data/README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(f"{ROOT}/docs/*.md"))]
# flags of other programs the pages show: sbatch's, torchrun's, and tests/benchmark.py's (read from its argparse lines)
OTHERS = {"array", "gres", "signal", "requeue", "open-mode", "help", "nodes", "ntasks-per-node", "nnodes",
          "nproc_per_node", "rdzv_backend", "rdzv_endpoint"}
ILLUSTRATIONS = {"name", "epoch"}  # "--name=value", and the typo "--epoch=3" that the Flags section shows refused


def read(page):
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return f.read()


def pytest_options():
    """The options tests/conftest.py adds to pytest (--bf16-everywhere)."""
    return set(re.findall(r'addoption\("--([\w-]+)"', read("tests/conftest.py")))


def benchmark_flags():
    return set(re.findall(r'add_argument\("--(\w+)"', read("tests/benchmark.py")))


def blocks(text):
    """The text of each code block of a page shown without a language tag (commands and what they print). A block
    tagged python is code; one tagged sh, a command that needs the page's own steps done first (docs/new_method.md's,
    which tests/test_new_method.py runs)."""
    found, lines = [], None
    for line in text.splitlines():
        if line.startswith("```") and lines is None:
            lines, tagged = [], line[3:].strip()
        elif line.startswith("```"):
            found += [] if tagged else ["\n".join(lines)]
            lines = None
        elif lines is not None:
            lines.append(line)
    return found


def commands(text):
    """The office31.py command lines of a page's code blocks, as argument lists (the flags after the script)."""
    found = []
    for block in blocks(text):
        for line in block.splitlines():
            words = shlex.split(line.split("#", 1)[0].replace("${SLURM_ARRAY_TASK_ID}", "0").replace("$i", "0"))
            scripts = [k for k, w in enumerate(words) if w.endswith("office31.py") and (words[k - 1] == "python"
                                                                                         or "torchrun" in words[:k])]
            if scripts:
                found.append([w for w in words[scripts[0] + 1:] if w not in ("&", "&&")])
    return found


@pytest.mark.parametrize("page", PAGES)
def test_every_flag_a_page_names_exists(page):
    named = set(re.findall(r"(?<![\w-])--([a-zA-Z_][\w-]*)", read(page)))
    unknown = named - set(office31.FLAGS) - benchmark_flags() - OTHERS - pytest_options() - ILLUSTRATIONS
    assert not unknown, f"{page} names flags that do not exist: {sorted(unknown)}"


@pytest.mark.parametrize("page", PAGES)
def test_every_command_a_page_shows_passes_the_checks_made_before_any_work(page):
    for argv in commands(read(page)):
        c = office31.resolve(office31.parse_flags(argv, echo=False))
        office31.check_settings(c, office31.FLAGS)  # names, types, values, the network, its input (each setting)


def test_the_pages_show_the_commands_a_newcomer_runs():
    shown = {" ".join(argv) for page in PAGES for argv in commands(read(page))}
    assert {"", "--dataset=demo", "--tasks=all --seeds=3 --method=source_only,dann,cdan"} <= shown


@pytest.mark.parametrize("page", PAGES)
def test_every_link_leads_to_a_file(page):
    folder = os.path.dirname(os.path.join(ROOT, page))
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", read(page)):
        if not target.startswith(("http://", "https://")):
            assert os.path.exists(os.path.join(folder, target)), f"{page} links to {target}, which is not there"


def test_the_readme_is_short_with_contents_and_links_every_page():
    readme = read("README.md")
    assert len(readme.split()) <= 2500 and "## Contents" in readme
    for page in PAGES[2:]:
        assert f"]({page})" in readme, f"the README does not link {page}"
    anchors = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", readme, re.M)}
    for anchor in re.findall(r"\]\(#([\w-]+)\)", readme):
        assert anchor in anchors, f"the contents link #{anchor}, a heading the README does not have"


def test_the_readme_flag_table_is_the_comments_of_the_flags():
    """The README's table shows each flag's default and the comment it has at the top of office31.py."""
    rows = dict(re.findall(r"^\| `(\w+)` \| `[^`]*` \| (.*) \|$", read("README.md"), re.M))
    assert set(rows) == set(office31.FLAGS)
    source = read("office31.py").split(flags.RULE)[1]
    for name in office31.FLAGS:
        [comment] = re.findall(rf"^{name} = .*?  # (.*)$", source, re.M)
        shown = rows[name].replace("&lt;", "<").replace("&gt;", ">").replace("\\|", "|")
        assert shown == comment, name
