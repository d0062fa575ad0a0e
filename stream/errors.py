"""The one exception hierarchy. Messages say what to do, not only what went wrong."""


class RankstreamError(Exception):
    """Root of every error rankstream raises on purpose."""

    retriable = False
    exit_code = 1  # what the `rankstream` command exits with when this error ends it


class ConfigError(RankstreamError):
    """Settings or a command line that cannot work; raised at start, before any I/O."""

    exit_code = 2


class ArtifactError(RankstreamError):
    """A model artifact that must not be served: missing files, bad checksum, wrong spec, failed smoke test."""

    exit_code = 3


class JobError(RankstreamError):
    """An offline job (compress, recompress, bench) cannot go on with the inputs it was given."""

    exit_code = 4


class StoreError(RankstreamError):
    """Redis refused or failed a write; the batch is retried, its offsets stay uncommitted."""

    retriable = True
    exit_code = 5
