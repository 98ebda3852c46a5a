"""Ablation sweeps: a grid declared in a config file (plan), one wrapper per run (worker),
the executors that start the runs here (local_executor) or as a SLURM job array
(slurm_executor), run states read from workdirs (status), and the aggregated report with
intervals (report)."""
