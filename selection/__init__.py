"""Choosing a model without the target's labels: the scores of each evaluated epoch (validators.py), the table of
what each score would choose against the oracle (selection_table.py), and a finished run's features (analysis.py:
t-SNE, proxy A-distance)."""
