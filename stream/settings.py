"""The scorer's one settings object: frozen, typed, read from RANKSTREAM_* environment variables."""

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rankstream.stream.errors import ConfigError


class Settings(BaseSettings):
    """What an operator tunes. Anything else for the Kafka client goes through `kafka_options`."""

    model_config = SettingsConfigDict(env_prefix="RANKSTREAM_", frozen=True, extra="forbid")

    kafka_bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: SecretStr | None = None
    model_dir: Path | None = None
    topic: str = "clicks"
    dlq_topic: str = "clicks.dlq"
    group_id: str = "rankstream-scorer"
    top_k: int = Field(default=10, ge=1, le=200)
    candidates: int = Field(default=50, ge=1, le=1000)
    history_len: int = Field(default=50, ge=1, le=1000)
    batch_max_records: int = Field(default=500, ge=1, le=100_000)
    batch_linger_ms: int = Field(default=100, ge=0, le=60_000)
    score_batch_size: int = Field(default=32, ge=1, le=4096)
    threads: int = Field(default=2, ge=1, le=256)
    max_event_bytes: int = Field(default=16_384, ge=64, le=1_048_576)
    rec_ttl_s: int = Field(default=7 * 86_400, ge=60)
    metrics_port: int = Field(default=0, ge=0, le=65_535)  # 0: no /metrics endpoint
    # Passed to aiokafka unchanged (security_protocol, sasl_*, ssl_context is not settable this way).
    kafka_options: dict[str, Any] = {}

    @model_validator(mode="after")
    def _combinations(self) -> "Settings":
        if self.top_k > self.candidates:
            raise ValueError(
                f"top_k ({self.top_k}) is larger than candidates ({self.candidates}); "
                "raise RANKSTREAM_CANDIDATES or lower RANKSTREAM_TOP_K"
            )
        if self.topic == self.dlq_topic:
            raise ValueError("RANKSTREAM_DLQ_TOPIC must differ from RANKSTREAM_TOPIC")
        return self


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment plus overrides; a bad value raises ConfigError saying what to fix."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            env = f"RANKSTREAM_{field.upper()}" if field else "settings"
            lines.append(f"{env}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from exc
