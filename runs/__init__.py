"""Running: the flags (flags.py), their grids (grid.py) and the configuration they resolve to (config.py), the checks
made before any training (checks.py), the optimiser and what each step checks (optimizer.py), the sweep of tasks,
seeds and settings (sweep.py), the report of a results file (report.py), stopping and resuming (checkpoint.py), bf16
or fp32 (precision.py), several processes under torchrun (distributed.py), and what machine made a run (machine.py).
office31.py calls these; they call the other folders."""
