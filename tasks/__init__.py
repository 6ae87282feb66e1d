"""clipops stages and ML core: every stage is one pure `run()` per module."""
