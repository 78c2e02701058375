"""Source only: plain fine-tuning on the labelled source images, the row every table compares with."""
from methods.method import Method


class SourceOnly(Method):
    """Source only (the "source only" rows of the DAN and DANN papers): the network fine-tuned on the source's
    labels alone, no term, no layer. Never built: make_adaptation gives None, and the loop takes its plain path,
    one source batch a step (the target's images are not even loaded)."""
    adapts = False
    colour = "#7f7f7f"  # (grey: the baseline)
