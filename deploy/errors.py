"""The deploy layer's error: the local stack's own failures, under rankstream's one root exception."""

from rankstream.stream.errors import RankstreamError


class StackError(RankstreamError):
    """The local Kafka/Redis stack, or a process started on it, could not be started or found."""
