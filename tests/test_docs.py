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


def headings(page):
    """The headings of a page (those of its code blocks aside: a #SBATCH line is none), as written."""
    found, inside = [], False
    for line in read(page).splitlines():
        inside = not inside if line.startswith("```") else inside
        found += re.findall(r"^#+ (.*)$", line) if not inside else []
    return found


def names_a_heading(name, page):
    """Whether a reference's name is a heading of the page: the heading itself, or its words before a colon
    ("Resume" for "Resume: a killed run goes on ..."), in any case, code marks aside."""
    name = name.replace("`", "").strip().lower()
    return any(name in (h.replace("`", "").lower(), h.replace("`", "").split(":")[0].lower()) for h in headings(page))


def anchor(heading):
    """A heading's anchor, as GitHub makes it: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


CODE = sorted(os.path.relpath(p, ROOT) for p in glob.glob(f"{ROOT}/**/*.py", recursive=True)
              if os.sep + "tests" + os.sep not in p)
# A place named in words: "(README, Speed)" or "docs/sweeps.md, Resume)" (a page and one of its headings); "see X"
# after an opening bracket or a comma, semicolon or colon (a page's own heading, or a link); and what points by
# position, which a page split into others leaves pointing nowhere ("next section", "see below", "see above")
PAGE_REFERENCE = re.compile(r"\b(README|docs/\w+\.md), ([^);\n]+)\)")
SEE = re.compile(r"(?:[(;,:]|^)\s*see ([^);,.\n]+)", re.M)
BY_POSITION = re.compile(r"\b(?:next|previous|following) section\b|\bsection (?:below|above)\b", re.I)


def stale_references(page):
    """The references of a page (or a file of code: its "(README, X)" ones only) that name no heading where they
    point, as (reference, why)."""
    text, found = read(page), []
    for where, name in PAGE_REFERENCE.findall(text):
        if not names_a_heading(name, "README.md" if where == "README" else where):
            found.append((f"{where}, {name}", f"{where} has no heading {name!r}"))
    if page.endswith(".md"):
        for name in SEE.findall(text):
            if not name.startswith(("[", "`", "http")) and not names_a_heading(name, page):
                found.append((f"see {name}", f"{page} has no heading {name!r}: link the page meant"))
    found += [(m, "a position, not a heading") for m in BY_POSITION.findall(text)]
    found += [(f"docs/{name}", "no such page") for name in re.findall(r"\bdocs/(\w+\.md)", text)
              if not os.path.exists(os.path.join(ROOT, "docs", name))]
    return found


@pytest.mark.parametrize("page", PAGES + CODE)
def test_every_reference_in_words_names_a_heading_where_it_points(page):
    """`--help` (office31.py's comments), the README's flag table and the docs send readers to headings that exist:
    a page split into others once left "(README, Speed)" and "see Resume" pointing at nothing."""
    assert stale_references(page) == [], page


@pytest.mark.parametrize("page", PAGES)
def test_every_link_to_a_heading_finds_it(page):
    folder = os.path.dirname(os.path.join(ROOT, page))
    for target, mark in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", read(page)):
        linked = os.path.relpath(os.path.join(folder, target), ROOT) if target else page
        assert mark in {anchor(h) for h in headings(linked)}, f"{page} links {target}#{mark}, a heading not there"


def outputs(page):
    """The example outputs of a page that show numbers (a code block without a language tag whose lines, commands
    aside, hold a decimal such as 39.00, a flag's value such as lr=0.001 aside), each as (block, the text of its
    section up to it, the paragraph just before it). A block with elided parts ("...", xx.xx) shows a format."""
    found, lines, section, paragraph = [], None, [], []
    for line in read(page).splitlines():
        if line.startswith("```") and lines is None:
            lines, tagged = [], line[3:].strip()
        elif line.startswith("```"):
            block = "\n".join(lines)
            shown = [k for k in lines if "office31.py" not in k and not k.startswith(("python", "cd "))]
            elided = any("..." in k or "x.x" in k for k in shown)
            if not tagged and not elided and any(re.search(r"(?<![=\d.])\d+\.\d", k) for k in shown):
                found.append((block, "\n".join(section), "\n".join(paragraph)))
            section, paragraph, lines = section + lines, [], None
        elif lines is not None:
            lines.append(line)
        elif line.startswith("#"):
            section, paragraph = [], []
        elif line.strip():  # a line of text: the paragraph goes on, or one begins after a blank line
            section, paragraph = section + [line], (paragraph if paragraph and paragraph[-1] else []) + [line]
        else:
            paragraph += [""] if paragraph else []
    return found


@pytest.mark.parametrize("page", PAGES)
def test_every_example_output_says_how_it_was_made(page):
    """Numbers a page shows as output say how they were made: the command in their section, and the precision (fp32
    or bf16: a bf16 CPU gives other numbers) in the block or the paragraph just before it; a line of output shown
    in the text is a format (`A→W accuracy: xx.xx% (nnn/795)`), not a number that reads as measured."""
    text = read(page)
    for block, section, paragraph in outputs(page):
        assert "office31.py" in section, f"{page}: an example output with no command before it:\n{block[:200]}"
        assert re.search(r"\b(fp32|bf16)\b", block + paragraph), \
            f"{page}: an example output that does not say its precision (fp32 or bf16):\n{block[:200]}"
    printed = [span for span in re.findall(r"`([^`\n]+)`", text) if re.search(r"accuracy: \d", span)]
    assert not printed, f"{page} shows a printed line with numbers, not its format (xx.xx%): {printed}"


def test_the_pages_name_every_dataset_and_every_experiment_key():
    """docs/flags.md's --dataset row names every dataset --dataset takes; docs/sweeps.md names every key of the
    config that makes two runs the same experiment (the later ones too)."""
    from datasets.download import DATASETS
    from results.experiments import EXPERIMENT_KEYS, LATER_KEYS
    [row] = [line for line in read("docs/flags.md").splitlines() if line.startswith("| `dataset` |")]
    assert {name for name in DATASETS if f"`{name}`" not in row} == set(), row
    keys = read("docs/sweeps.md").split("these keys of the row's `config`", 1)[1].split("\n\n")[0].split("\n-")[0]
    assert {key for key in (*EXPERIMENT_KEYS, *LATER_KEYS) if f"`{key}`" not in keys} == set(), keys


def test_the_readme_is_short_with_contents_and_links_every_page():
    readme = read("README.md")
    assert len(readme.split()) <= 2500 and "## Contents" in readme
    for page in PAGES[2:]:
        assert f"]({page})" in readme, f"the README does not link {page}"
    anchors = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", readme, re.M)}
    for anchor in re.findall(r"\]\(#([\w-]+)\)", readme):
        assert anchor in anchors, f"the contents link #{anchor}, a heading the README does not have"


def test_the_readme_gives_the_tests_times_with_the_quick_tier_beside_the_full_suite():
    """The README's Tests section shows the full suite and the quick tier side by side, each with its time as
    docs/tests.md measured it (rounded to minutes); .ci/run runs the first line."""
    [block] = blocks(read("README.md").split("\n## Tests\n", 1)[1])
    full, quick = block.splitlines()
    measured = {kind: round(int(m) + int(s) / 60) for kind, m, s in
                re.findall(r"the (full suite|quick tier), [^;]*?(\d+) min (\d+) s", read("docs/tests.md"))}
    assert set(measured) == {"full suite", "quick tier"}
    for line, kind in ((full, "full suite"), (quick, "quick tier")):
        assert f"{kind}: about {measured[kind]} minutes" in line, (line, measured)
    assert '-m "not slow"' in quick and '-m "not slow"' not in full
    assert read(".ci/run").strip().splitlines()[-1] == full.split("#")[0].strip()


def test_the_readme_flag_table_is_the_comments_of_the_flags():
    """The README's table shows each flag's default and the comment it has at the top of office31.py."""
    rows = dict(re.findall(r"^\| `(\w+)` \| `[^`]*` \| (.*) \|$", read("README.md"), re.M))
    assert set(rows) == set(office31.FLAGS)
    source = read("office31.py").split(flags.RULE)[1]
    for name in office31.FLAGS:
        [comment] = re.findall(rf"^{name} = .*?  # (.*)$", source, re.M)
        shown = rows[name].replace("&lt;", "<").replace("&gt;", ">").replace("\\|", "|")
        assert shown == comment, name
