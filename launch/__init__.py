"""Runnable scripts that start runs; they import cnnjax, never the reverse, and are not installed.

`python -m launch.multihost` (from the checkout) starts one run over several processes, hosts or
TPU VM workers; see launch/README.md. A sweep's executors (`cnnjax sweep --launcher=local|slurm`)
live in cnnjax/sweep.
"""
