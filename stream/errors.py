"""The one exception hierarchy. Messages say what to do, not only what went wrong."""


class RankstreamError(Exception):
    """Root of every error rankstream raises on purpose."""

    retriable = False


class ConfigError(RankstreamError):
    """Settings or a command line that cannot work; raised at start, before any I/O."""


class ArtifactError(RankstreamError):
    """A model artifact that must not be served: missing files, bad checksum, wrong spec, failed smoke test."""


class JobError(RankstreamError):
    """An offline job (compress, recompress, bench) cannot go on with the inputs it was given."""


class StoreError(RankstreamError):
    """Redis refused or failed a write; the batch is retried, its offsets stay uncommitted."""

    retriable = True
