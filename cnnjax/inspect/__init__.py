"""Looking inside models and runs: summaries, gradient checks, evaluation, visualization."""
