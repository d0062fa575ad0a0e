"""Offline jobs: compress (build and gate models), recompress (rebuild the served model from recent clicks)."""
