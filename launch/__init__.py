"""Ways to start runs: `local` (concurrent pinned processes), `slurm` (job arrays).

`cnnjax sweep --launcher=NAME` picks one; see launch/README.md.
"""
