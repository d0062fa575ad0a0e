"""The `rankstream` command line: one subcommand per job, user mistakes as one-line errors."""

import os

# Before numpy loads OpenBLAS, which sizes its thread pool once: one thread. numpy's products here are
# small (a text search: the catalog's vectors by the user's 5 newest) and run beside ONNX Runtime's
# threads on the same cores, where a pool of several threads is many times slower than one
# (docs/results.md, "Text retrieval in the scorer"). An operator's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from rankstream.cli.main import main  # noqa: E402 - after the thread setting, on purpose

__all__ = ["main"]
