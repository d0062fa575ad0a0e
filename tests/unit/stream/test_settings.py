import pytest
from redis.asyncio import Redis, RedisCluster

from rankstream.stream.errors import ConfigError
from rankstream.stream.redis_client import connect, connect_from_settings
from rankstream.stream.settings import load_settings
from rankstream.stream.store import Store


def test_env_is_read_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKSTREAM_TOP_K", "7")
    monkeypatch.setenv("RANKSTREAM_KAFKA_OPTIONS", '{"security_protocol": "SSL"}')
    s = load_settings()
    assert s.top_k == 7
    assert s.kafka_options == {"security_protocol": "SSL"}


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKSTREAM_TOP_K", "lots")
    with pytest.raises(ConfigError, match="RANKSTREAM_TOP_K"):
        load_settings()


def test_bad_combination_says_what_to_fix() -> None:
    with pytest.raises(ConfigError, match="raise RANKSTREAM_CANDIDATES or lower RANKSTREAM_TOP_K"):
        load_settings(top_k=20, candidates=10)


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ConfigError):
        load_settings(topk=3)


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(ValueError):
        s.top_k = 3  # type: ignore[misc]


def test_sasl_needs_credentials_and_passes_them_to_kafka() -> None:
    with pytest.raises(ConfigError, match="RANKSTREAM_KAFKA_SASL_MECHANISM"):
        load_settings(kafka_security_protocol="SASL_PLAINTEXT")
    s = load_settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="scorer",
        kafka_sasl_password="s3cret",
    )
    opts = s.kafka_client_options()
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert opts["sasl_plain_username"] == "scorer" and opts["sasl_plain_password"] == "s3cret"
    assert "s3cret" not in repr(s)  # secrets never reach logs through the settings' repr


def test_tls_files_must_exist(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="RANKSTREAM_KAFKA_SSL_CAFILE"):
        load_settings(kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="not rediss://"):
        ca = tmp_path / "ca.pem"
        ca.write_text("x")
        load_settings(redis_ssl_ca=ca)


def test_redis_credentials_are_passed_through() -> None:
    s = load_settings(redis_username="scorer", redis_password="pw", redis_url="rediss://cache:6380/0")
    assert s.redis_client_options() == {
        "username": "scorer",
        "password": "pw",
        "socket_timeout": 5.0,
        "socket_connect_timeout": 5.0,
    }


def test_redis_cluster_switches_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().redis_cluster is False
    monkeypatch.setenv("RANKSTREAM_REDIS_CLUSTER", "true")
    s = load_settings(redis_url="redis://10.0.0.5:7000")
    assert s.redis_cluster is True
    # Nothing connects until the first command, so no server is needed here.
    assert isinstance(connect(s.redis_url, cluster=s.redis_cluster, **s.redis_client_options()), RedisCluster)
    assert type(connect(s.redis_url, **s.redis_client_options())) is Redis


def test_clients_from_settings_follow_cluster_mode_and_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    single = load_settings(redis_url="redis://10.0.0.5:7000/0", redis_password="pw", rec_ttl_s=60)
    client = connect_from_settings(single)
    assert type(client) is Redis
    assert client.connection_pool.connection_kwargs["password"] == "pw"
    store = Store.from_settings(single)
    assert type(store.client) is Redis and store._ttl_s == 60
    monkeypatch.setenv("RANKSTREAM_REDIS_CLUSTER", "true")
    assert isinstance(connect_from_settings(load_settings(redis_url="redis://10.0.0.5:7000")), RedisCluster)


def test_rerank_top_must_cover_the_written_list() -> None:
    with pytest.raises(ConfigError, match="raise RANKSTREAM_RERANK_TOP or set it to 0"):
        load_settings(top_k=10, rerank_top=5)
    assert load_settings(top_k=10, rerank_top=20).rerank_top == 20


def test_rerank_top_refuses_a_model_without_a_linear_part_at_start(fp32_artifact) -> None:  # type: ignore[no-untyped-def]
    from rankstream.stream.ranker import Ranker
    from rankstream.stream.scorer import Scorer

    ranker = Ranker.load(fp32_artifact)
    with pytest.raises(ConfigError, match="set RANKSTREAM_RERANK_TOP=0"):
        Scorer(load_settings(rerank_top=20), ranker, store=None)  # type: ignore[arg-type]


def test_the_tables_job_needs_a_group_of_its_own() -> None:
    with pytest.raises(ConfigError, match="RANKSTREAM_TABLES_GROUP_ID"):
        load_settings(group_id="g", tables_group_id="g")


def test_the_catalog_job_has_topics_and_a_group_of_its_own() -> None:
    s = load_settings()
    assert (s.catalog_topic, s.catalog_dlq_topic, s.catalog_group_id) == (
        "catalog",
        "catalog.dlq",
        "rankstream-catalog",
    )
    assert s.encoder_dir is None
    with pytest.raises(ConfigError, match="RANKSTREAM_CATALOG_DLQ_TOPIC must differ"):
        load_settings(catalog_topic="c", catalog_dlq_topic="c")
    with pytest.raises(ConfigError, match="RANKSTREAM_CATALOG_TOPIC"):
        load_settings(catalog_topic="clicks")
    with pytest.raises(ConfigError, match="RANKSTREAM_CATALOG_DLQ_TOPIC"):
        load_settings(catalog_dlq_topic="clicks.dlq")
    with pytest.raises(ConfigError, match="RANKSTREAM_CATALOG_GROUP_ID"):
        load_settings(catalog_group_id="rankstream-tables")


def test_text_candidates_need_an_encoder(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="needs RANKSTREAM_ENCODER_DIR"):
        load_settings(text_candidates=20)
    assert load_settings(text_candidates=20, encoder_dir=tmp_path).text_candidates == 20
    assert load_settings().text_candidates == 0  # off unless asked: the served models were trained without it


def test_a_merge_needs_an_encoder_and_replaces_the_interleave(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="RANKSTREAM_MERGE_DIR=.* needs RANKSTREAM_ENCODER_DIR"):
        load_settings(merge_dir=tmp_path)
    with pytest.raises(ConfigError, match="set one"):
        load_settings(merge_dir=tmp_path, encoder_dir=tmp_path, text_candidates=20)
    assert load_settings(merge_dir=tmp_path, encoder_dir=tmp_path).merge_dir == tmp_path
    assert load_settings().merge_dir is None


def test_ort_spin_reads_as_an_operator_writes_it_and_refuses_anything_else(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().ort_spin is True
    for text, want in (("false", False), ("0", False), ("true", True), ("1", True)):
        monkeypatch.setenv("RANKSTREAM_ORT_SPIN", text)
        assert load_settings().ort_spin is want
    monkeypatch.setenv("RANKSTREAM_ORT_SPIN", "sometimes")
    with pytest.raises(ConfigError, match="RANKSTREAM_ORT_SPIN"):
        load_settings()


def test_a_sleeping_session_is_asked_for_in_its_options() -> None:
    from rankstream.stream.ranker import session_options

    assert session_options(2, spin=False).get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(RuntimeError):  # not set: ONNX Runtime's default, spinning
        session_options(2).get_session_config_entry("session.intra_op.allow_spinning")
