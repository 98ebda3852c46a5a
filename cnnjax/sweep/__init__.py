"""Ablation sweeps: a grid declared in a config file (plan), one wrapper per run (worker),
run states read from workdirs (status), and the aggregated report with intervals (report)."""
