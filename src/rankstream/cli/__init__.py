"""The `rankstream` command line: one subcommand per job, user mistakes as one-line errors."""

from rankstream.cli.main import main

__all__ = ["main"]
