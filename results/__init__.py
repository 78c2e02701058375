"""What runs leave behind: the results file's rows (store.py), what makes two runs the same experiment
(experiments.py), task names and their order (tasks.py), each run's own file (run_files.py), the number that
scores a run (metric.py), the tables papers print (tables.py) and the learning curves (curves.py)."""
