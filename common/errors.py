"""The one exception a user can fix: a bad flag, path, file or value. office31.py prints it as one paragraph and
exits non-zero, with no traceback (exit_with; user_message: its words alone, where a DataLoader worker raised it).
It imports only the standard library, so the flags can be checked before torch is loaded."""
import os
import sys
import time

# Under torchrun every process meets the same mistake (the same flags, files and data) at about the same moment:
# process 0 says it, and the others wait this long, silent, for torchrun to end them when process 0 exits. One that
# is still running then says it itself: a mistake that process 0 did not meet is not lost.
GRACE_SECONDS = 10


class UserError(Exception):
    """A mistake the user can fix (bad path, bad flag, bad file): printed as one paragraph, no traceback."""


class Diverged(UserError):
    """A loss that is not finite: the run stops at that step and writes no result."""


class Stopped(Exception):
    """A signal (SIGTERM, Ctrl-C) stopped the run at the end of a step: its last epoch end's checkpoint resumes it."""


def exit_with(message):
    """Exit non-zero, printing message: under torchrun once, by process 0 (GRACE_SECONDS)."""
    if os.environ.get("RANK", "0") != "0":
        time.sleep(GRACE_SECONDS)
    sys.exit(message)


def user_message(error):
    """DataLoader workers re-raise our UserError with the worker's traceback in front: keep our words only."""
    text = str(error)
    return text.rsplit("UserError: ", 1)[1].strip() if "Original Traceback" in text else text
