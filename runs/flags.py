"""Command-line overrides of the flags at the top of office31.py, as nanoGPT's configurator does them: each
--name=value (or --name value, the same for every flag; a bare --name, before another flag or at the end, for a
boolean's True) replaces one flag and is echoed; anything else is an error, which names the flag meant where it looks
like a typo. Plain Python, so that office31.py reads and checks its flags before torch is imported.

    config = parse(sys.argv[1:], FLAGS)       # FLAGS: {name: default}; the values take the defaults' types
    parse(["--lr=0.001,0.01"], FLAGS, several=("lr",))   # a grid: kept as the text "0.001,0.01", each value checked
    print(help_text("office31.py", FLAGS))    # the flags with their defaults and comments, group by group
    print_config(config, (bf16, why))         # "config: dataset=office31  ...  amp=auto→bf16 (why)": the run's
"""
import difflib
import sys

from common.errors import UserError

RULE = "# " + "-" * 107  # the lines around the flags at the top of office31.py
BOOLEAN_WORDS = ("true", "false", "1", "0")
BOOLEAN_TAKES = "true or false (or 1 or 0, any case)"  # what errors say a boolean takes: BOOLEAN_WORDS


def parse_value(name, text, default):
    """text as the type of the flag's default; a wrong type is a UserError naming the flag."""
    try:
        if isinstance(default, bool):
            if text.lower() not in BOOLEAN_WORDS:
                raise ValueError
            return text.lower() in ("true", "1")
        return type(default)(text)
    except ValueError:
        if isinstance(default, bool):
            raise UserError(f"--{name}={text}: a boolean flag takes {BOOLEAN_TAKES}, or no value for true (a bare "
                            f"--{name}).") from None
        raise UserError(f"--{name}={text}: expected {type(default).__name__} "
                        f"(like the default, {default!r}).") from None


def parse_values(name, text, default, several):
    """One value as parse_value gives it; several comma-separated ones (for a flag in `several`; a string flag not
    in it keeps its own commas) as their text, without spaces, after each parses."""
    if "," not in text or (isinstance(default, str) and name not in several):
        return parse_value(name, text, default)
    if name not in several:
        raise UserError(f"--{name}={text}: one value only. Several values (a grid) are taken by "
                        f"{', '.join('--' + n for n in several)}; run one command per {name} with the same --out_dir "
                        "instead (--report lists them all).")
    values = [part.strip() for part in text.split(",")]
    for value in values:
        try:
            parse_value(name, value, default)
        except UserError:
            if isinstance(default, bool):
                raise UserError(f"--{name}={text}: '{value}' is not a boolean; each of a grid's values must be "
                                f"{BOOLEAN_TAKES}.") from None
            raise UserError(f"--{name}={text}: '{value}' is not a {type(default).__name__}; each of a grid's values "
                            f"must be one, like the default, {default!r}.") from None
    return ",".join(values)


def help_text(path, defaults):
    """The flags as the top of the file at path lists them, group by group, each with its default and its comment:
    the comments there are the one place a flag is explained."""
    with open(path, encoding="utf-8") as f:
        block = f.read().split(RULE)[1]
    lines = []
    for line in block.strip().splitlines():
        if line.startswith("# "):  # a group: data, model, adaptation, ...
            lines.append(f"\n{line[2:]}")
            continue
        code, _, comment = line.partition("  # ")
        name = code.split(" = ")[0]
        lines.append(f"  --{name}={defaults[name]!r}: {comment}")
    return "\nflags (--name=value; each shown with its default):" + "\n".join(lines)


def parse(argv, defaults, echo=True, usage=lambda: "", several=()):
    """The flags' defaults with argv's overrides; -h or --help prints usage() and exits. A flag named in `several`
    may take comma-separated values (a grid: grid.py), kept as the text once each value parses."""
    config, args = dict(defaults), list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            print(usage())
            sys.exit(0)
        name, eq, text = arg[2:].partition("=")
        if not arg.startswith("--") or name not in defaults:
            raise UserError(unknown_argument(arg, name if arg.startswith("--") else None, defaults))
        if not eq and args and not args[0].startswith("--") and args[0] != "-h":
            text = args.pop(0)  # --name value, read as --name=value whatever the flag (a boolean's "yes" is refused)
        elif not eq and isinstance(defaults[name], bool):
            text = "true"  # a bare --report
        elif not eq:
            raise UserError(f"--{name} needs a value: --{name}=VALUE or --{name} VALUE (default: {defaults[name]!r}).")
        config[name] = parse_values(name, text, defaults[name], several)
        if echo:
            print(f"overriding: {name} = {config[name]!r}")
    return config


def unknown_argument(arg, name, defaults):
    """The error for an argument that names no flag: the flag meant, where one is close, and the list."""
    close = difflib.get_close_matches(name, defaults, n=1, cutoff=0.6) if name else []
    meant = f" Did you mean --{close[0]}?" if close else ""
    return (f"unknown argument '{arg}'.{meant} Flags are --name=value (or --name value) with a name among: "
            f"{', '.join(defaults)}.")


def given(argv, defaults):
    """The names of the flags a command line gives (--name=value, --name value, a bare --name)."""
    return {arg[2:].partition("=")[0] for arg in argv if arg.startswith("--") and arg[2:].partition("=")[0] in defaults}


def print_config(c, precision=None):
    """The resolved flags in one line; amp also shows what it resolved to on this device, and why (precision:
    precision.choose_amp's (bf16, why))."""
    shown = dict(c)
    if precision:
        bf16, why = precision
        shown["amp"] = f"{c['amp']}→{'bf16' if bf16 else 'fp32'} ({why})"
    print("config: " + "  ".join(f"{k}={v}" for k, v in shown.items()))
