"""The domain-adaptation methods: the loss each adds on the target's unlabelled images (adaptation.py)."""
