"""Counts as printed lines say them, the noun agreeing with the number.

    counted(1, "run")        # "1 run"
    counted(2, "seed")       # "2 seeds"
    counted(3, "copy", "copies")
"""


def counted(number, word, plural=None):
    """The number and the noun in its number: "1 run", "2 runs" (plural: where it is not word + "s")."""
    return f"{number} {word if number == 1 else plural or word + 's'}"
