"""Benchmarks (`rankstream bench ...`): model quality and speed, the stream, hot swap. Run on demand."""
