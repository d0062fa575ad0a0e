"""create_topics without a broker: what it asks the admin client for, per topic."""

from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from rankstream.deploy import kafka_local
from rankstream.deploy.errors import StackError


class FakeAdmin:
    """Records the topics it is asked to create; answers with `errors` (topic -> error code)."""

    created: list[NewTopic] = []
    options: dict[str, Any] = {}
    errors: dict[str, int] = {}

    def __init__(self, **options: Any) -> None:
        FakeAdmin.options = options

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def create_topics(self, new: list[NewTopic]) -> SimpleNamespace:
        FakeAdmin.created = list(new)
        return SimpleNamespace(topic_errors=[(t.name, self.errors.get(t.name, 0), None) for t in new])


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> type[FakeAdmin]:
    monkeypatch.setattr(kafka_local, "AIOKafkaAdminClient", FakeAdmin)
    FakeAdmin.created, FakeAdmin.options, FakeAdmin.errors = [], {}, {}
    return FakeAdmin


def _asked(admin: type[FakeAdmin]) -> dict[str, tuple[int, int, dict[str, str]]]:
    return {t.name: (t.num_partitions, t.replication_factor, t.topic_configs) for t in admin.created}


def test_without_configs_every_topic_gets_the_broker_defaults(admin: type[FakeAdmin]) -> None:
    kafka_local.create_topics("k:9092", {"clicks": 12, "clicks.dlq": 1})
    assert _asked(admin) == {"clicks": (12, 1, {}), "clicks.dlq": (1, 1, {})}


def test_configs_go_to_their_topic_only(admin: type[FakeAdmin]) -> None:
    kafka_local.create_topics(
        "k:9092",
        {"catalog": 4, "catalog.dlq": 1},
        topic_configs={"catalog": {"cleanup.policy": "compact"}},
        security_protocol="SASL_SSL",
    )
    assert _asked(admin) == {"catalog": (4, 1, {"cleanup.policy": "compact"}), "catalog.dlq": (1, 1, {})}
    # Client options still reach the admin client, and the configs are not among them.
    assert admin.options["security_protocol"] == "SASL_SSL" and "topic_configs" not in admin.options


def test_configs_for_a_topic_not_created_are_refused(admin: type[FakeAdmin]) -> None:
    with pytest.raises(ValueError, match="catalg"):
        kafka_local.create_topics("k:9092", {"catalog": 4}, topic_configs={"catalg": {"cleanup.policy": "compact"}})
    assert admin.created == []


def test_an_existing_topic_is_no_error_and_another_failure_is(admin: type[FakeAdmin]) -> None:
    admin.errors = {"catalog": TopicAlreadyExistsError.errno}
    kafka_local.create_topics("k:9092", {"catalog": 4}, topic_configs={"catalog": {"cleanup.policy": "compact"}})
    admin.errors = {"catalog": 40}  # INVALID_CONFIG, e.g. a misspelt cleanup policy
    with pytest.raises(StackError, match="creating topic 'catalog' failed"):
        kafka_local.create_topics("k:9092", {"catalog": 4}, topic_configs={"catalog": {"cleanup.policy": "compacted"}})
