"""Offline evaluation: the evaluation set built like the scorer builds candidates, and ranking metrics."""
