import pytest

from rankstream.stream.errors import ConfigError
from rankstream.stream.settings import load_settings


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
