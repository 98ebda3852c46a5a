"""Ways to start runs: `local` (a sweep's runs as concurrent pinned processes), `slurm` (a
sweep as a job array), `multihost` (one run over several processes, hosts or TPU VM workers).

`cnnjax sweep --launcher=NAME` picks local or slurm; `python -m launch.multihost` starts a
multi-host run; see launch/README.md.
"""
