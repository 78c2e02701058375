"""Shared pieces that every other part imports and that import nothing of this repo: the user's error (errors.py),
writing a file whole (files.py) and the new layers put on a pretrained network (layers.py)."""
