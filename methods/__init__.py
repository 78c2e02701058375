"""The domain-adaptation methods: one class a method, in a file of its own (ddc.py, dann.py, ...: its paper's
formula and citation, its layers, its settings, its term), found here by its --method name.

    METHODS["dann"]                  # the class: METHODS["dann"].bottleneck, its term, its layers
    methods(c)                       # ["source_only", "dann"] for --method=source_only,dann
    with_method(c, "dann")           # the config of dann's runs: its bottleneck, the flags it does not read reset
    unread_flags("source_only")      # ["trade_off", "entropy"]: the flags with_method resets for it

method.py holds the base class every method subclasses (the joint forward pass, the term in fp32, what a method
declares) and parts.py the pieces several share (kernels, gradient reversal, the discriminator). A new method is a
new file, its import below and its line in METHODS (docs/new_method.md); nothing else names a method.
"""
from methods.afn import AFN
from methods.bsp import BSP
from methods.cdan import CDAN
from methods.coral import CORAL
from methods.dan import DAN
from methods.dann import DANN
from methods.ddc import DDC
from methods.jan import JAN
from methods.mcc import MCC
from methods.mdd import MDD
from methods.shot import SHOT, ShotSource
from methods.source_only import SourceOnly
from methods.tent import TENT

# --method's names, in the order of the tables' rows (source only first: the flags' default, the row compared with)
METHODS = {
    "source_only": SourceOnly,
    "ddc": DDC,
    "dan": DAN,
    "coral": CORAL,
    "dann": DANN,
    "cdan": CDAN,
    "bsp": BSP,
    "jan": JAN,
    "mcc": MCC,
    "mdd": MDD,
    "afn": AFN,
    "shot_source": ShotSource,  # SHOT's source model, which shot and tent start from (trained first in a sweep)
    "shot": SHOT,  # source-free: from a trained model, the target's images alone
    "tent": TENT,  # test-time: from a trained model, one online pass over the target
}


def methods(c, stages=True):
    """The methods a --method value names: one, or several separated by commas (a sweep); a method that starts from
    another's runs (SHOT, TENT: `starts_from`) brings that method in just before it, where --start_from is "" (not
    with stages=False: the names alone, as --analyze reads them)."""
    named = [m.strip() for m in c["method"].split(",") if m.strip()]
    if not stages:
        return named
    planned = []
    for name in named:
        stage = getattr(METHODS.get(name), "starts_from", None)
        if stage and not c.get("start_from") and stage not in named + planned:
            planned.append(stage)  # (its runs are trained first: each run of this method starts from one of them)
        planned.append(name)  # (a name given twice stays twice: the checks say what is wrong with it)
    return planned


def own_flags():
    """{flag: (what it is, the methods that read it)} of the switches only some methods read (their `flags`)."""
    found = {}
    for name, method in METHODS.items():
        for flag, what in method.flags.items():
            found.setdefault(flag, (what, []))[1].append(name)
    return found


def unread_flags(method):
    """The flags a method's runs do not read, as its class declares them: trade_off where it adds no term (not
    `adapts`: source only), and the switches only other methods read (their `flags`, such as CDAN's --entropy)."""
    chosen = METHODS[method]
    return ([] if chosen.adapts else ["trade_off"]) + [flag for flag in own_flags() if flag not in chosen.flags]


def with_method(c, method):
    """The config of one method's runs: its name, the bottleneck width resolved from "auto", and the flags it does
    not read (unread_flags) set to what it does (source only adds no loss: a trade-off of 0; another method's switch
    is False), so that they do not split one experiment into several."""
    width, chosen = c["bottleneck"], METHODS[method]
    if width == "auto":
        width = chosen.default_bottleneck(c["model"])
    return dict(c, method=method, bottleneck=int(width),
                **{flag: 0.0 if flag == "trade_off" else False for flag in unread_flags(method)})
