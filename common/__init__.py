"""Shared pieces that every other part imports and that import nothing of this repo: the user's error (errors.py),
writing a file whole (files.py), a count in words ("1 run", "2 runs": words.py), the new layers put on a
pretrained network (layers.py) and the learning-rate schedule (schedule.py)."""
