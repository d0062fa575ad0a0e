"""The scorer's one settings object: frozen, typed, read from RANKSTREAM_* environment variables."""

from pathlib import Path
from typing import Annotated, Any, Literal

from aiokafka.helpers import create_ssl_context
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from rankstream.stream.errors import ConfigError


class Settings(BaseSettings):
    """What an operator tunes. Anything else for the Kafka client goes through `kafka_options`."""

    model_config = SettingsConfigDict(env_prefix="RANKSTREAM_", frozen=True, extra="forbid")

    kafka_bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_username: str | None = None  # Redis 6+ ACL user
    redis_password: SecretStr | None = None
    redis_ssl_ca: Path | None = None  # CA bundle for a rediss:// URL
    redis_timeout_s: float = Field(default=5.0, gt=0, le=300)  # a stalled Redis fails the batch, not the loop
    # RANKSTREAM_REDIS_URL names one node of a Redis Cluster; the client discovers the others and routes
    # each key to its slot's primary (stream/redis_client.py).
    redis_cluster: bool = False
    # Sentinels (`host:port,host:port`) that name the primary of `redis_sentinel_master`: the client asks
    # them for the primary and follows it across a failover; the URL's host and port are then not used.
    redis_sentinels: Annotated[tuple[str, ...], NoDecode] = ()
    redis_sentinel_master: str = "mymaster"
    # N > 0: every Redis round trip of a batch ends in WAIT N, and the batch fails (rewound, retried) when
    # fewer replicas acknowledged within redis_wait_timeout_ms, so no offset is committed for writes that
    # a failover could take back (stream/store.py). 0: don't wait.
    redis_wait_replicas: int = Field(default=0, ge=0, le=100)
    redis_wait_timeout_ms: int = Field(default=1000, ge=1, le=60_000)  # WAIT 0 would block for ever
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    # An artifact directory (served as is), or a registry root of `<version>/` directories: then the
    # version active in Redis is served and followed (hot swap), see stream/registry.py.
    model_dir: Path | None = None
    model_poll_s: float = Field(default=2.0, gt=0, le=3600)  # how often the active version is re-read
    # A canary is judged once both arms have this many events checked against their lists (earlier only
    # on overwhelming evidence), and rolled back on worse hit-rate (one-sided z-test at 5%), on a p99
    # latency above both the ratio and the slack over the active version's, or on an error rate above
    # the active one's by more than the excess (stream/canary.py).
    canary_min_events: int = Field(default=2000, ge=10, le=100_000_000)
    canary_max_p99_ratio: float = Field(default=1.5, ge=1.0, le=100.0)
    canary_p99_slack_ms: float = Field(default=50.0, ge=0.0, le=60_000.0)
    canary_max_error_excess: float = Field(default=0.01, ge=0.0, le=1.0)
    # Most of a replica's wall time a shadow version may spend scoring (stream/shadow.py).
    shadow_max_share: float = Field(default=0.1, gt=0.0, le=1.0)
    replica: str = ""  # this replica's name in the registry's serving report (default: host-pid)
    topic: str = "clicks"
    dlq_topic: str = "clicks.dlq"
    group_id: str = "rankstream-scorer"
    tables_group_id: str = "rankstream-tables"  # the live-tables job's own consumer group
    # The catalog job (`rankstream catalog serve`): item records in, titles and their vectors out to Redis.
    catalog_topic: str = "catalog"
    catalog_dlq_topic: str = "catalog.dlq"
    catalog_group_id: str = "rankstream-catalog"
    # A text encoder artifact directory (stream/encoder.py): the catalog job embeds titles with it, and
    # `rankstream load` seeds every item's vector with it. Unset: no title vectors.
    encoder_dir: Path | None = None
    # How long a scorer serves a live-table read before reading it again: freshness against Redis load.
    tables_max_age_ms: int = Field(default=500, ge=0, le=600_000)
    # The tables job writes a share at most this often: an item that events of many fetches change is
    # written once per interval, not once per fetch. Adds up to this much to the tables' freshness.
    tables_flush_ms: int = Field(default=200, ge=0, le=10_000)
    # The tables job's fetches wait up to this long for records to pile up (0: return with the first
    # byte, Kafka's default). At 1,000 events/s a consumer fetching as soon as anything arrives spends
    # 7x the CPU of one whose fetches wait 50 ms (docs/results.md), CPU the scorer beside it needs; the
    # tables are written every `tables_flush_ms` anyway, so the wait adds little to their freshness.
    tables_fetch_wait_ms: int = Field(default=50, ge=0, le=5_000)
    top_k: int = Field(default=10, ge=1, le=200)
    candidates: int = Field(default=50, ge=1, le=1000)
    # Text neighbours per user merged into the candidates (`stream.retrieval`): items whose title vectors
    # (from RANKSTREAM_ENCODER_DIR's encoder) are closest to the user's newest items', new items included.
    # 0: co-visitation and trending only, as the served models were trained.
    text_candidates: int = Field(default=0, ge=0, le=1000)
    # A learned merge (`rankstream merge fit`: a folder with merge.json): the candidates are the best
    # RANKSTREAM_CANDIDATES of a pool of co-visitation candidates and text neighbours, by a head over their
    # signals and places (`stream.retrieval`). Replaces RANKSTREAM_TEXT_CANDIDATES's interleave.
    merge_dir: Path | None = None
    # How often a scorer applies the catalog's change log (new, retitled, removed items); a click on an
    # item it does not know yet makes it look at once before the click is refused as `unknown_item`.
    catalog_refresh_ms: int = Field(default=250, ge=0, le=600_000)
    history_len: int = Field(default=50, ge=1, le=1000)
    batch_max_records: int = Field(default=500, ge=1, le=100_000)
    batch_linger_ms: int = Field(default=100, ge=0, le=60_000)
    # After taking the consumer's buffered records, wait up to this long for what the broker holds now
    # (0: don't). aiokafka fetches a partition again only once its buffered records are taken, so events
    # that arrived during the last batch are still on the broker when the next one starts.
    batch_topup_ms: int = Field(default=3, ge=0, le=1_000)
    # A user whose last event is younger than this is scored in a later batch, with what they click
    # meanwhile (0: score every user in the batch their events arrive in). A basket's lines arrive one
    # after another; scoring after each part of it is work that the next part throws away. A user is held
    # back at most 3x this long from their first waiting event.
    user_quiet_ms: int = Field(default=0, ge=0, le=10_000)
    score_batch_size: int = Field(default=32, ge=1, le=4096)
    # Users scored per Redis write inside a batch: a list is written as soon as its chunk is scored, so
    # the first users of a large batch do not wait for the last (one extra round trip per chunk). One: a
    # user's model call is theirs alone anyway, and a chunk-mate's call only delayed their write (on an
    # AVX2 CPU, where a user costs 30 ms, half the scoring p99; docs/results.md).
    score_chunk_users: int = Field(default=1, ge=1, le=100_000)
    # Chunks of a batch in flight at once: while one chunk's model call runs in a worker thread, the next
    # chunk's reads and candidates are prepared and its call starts beside it. Chunks hold distinct users,
    # so their lists may be written in any order. lanes x threads is the cores a replica's model calls may
    # take. Two lanes of one thread: a user's 10 pairs split badly over two threads (x1.3 for twice the
    # CPU), so two calls side by side reached the same maximum rate as one call on two threads with a
    # quarter less of the machine busy (docs/results.md).
    score_lanes: int = Field(default=2, ge=1, le=64)
    # How many candidates the cross-encoder scores per user, picked by the model's linear part (position
    # prior + signal head, `linear.json` in the artifact); the rest follow in that part's order. Unset: the
    # artifact decides (`rerank_top_for`): a model with a linear part is pre-selected, one without is
    # scored in full. 0: always score every candidate. N: pre-select N (needs a linear part).
    rerank_top: int | None = Field(default=None, ge=0, le=1000)
    threads: int = Field(default=1, ge=1, le=256)  # ONNX Runtime intra-op threads per model call
    # Whether ONNX Runtime's intra-op threads spin for more work after a run (its default) or sleep. Spinning
    # answers the next run sooner under load; at a small share of a replica's maximum it keeps a third of
    # a core busy waiting, which a tables job or a broker on the same cores could use (docs/results.md).
    ort_spin: bool = True
    # The text encoder's intra-op threads (catalog job, `load`, `catalog reembed`). A title is about 10
    # tokens: a 2-layer student runs one in ~0.3 ms on one thread, and a second thread buys it a fifth more
    # for a whole core that the scorers beside it need (docs/results.md).
    encoder_threads: int = Field(default=1, ge=1, le=256)
    max_event_bytes: int = Field(default=16_384, ge=64, le=1_048_576)
    # A record whose processing stopped this many replicas in a row (a crash the code could not catch:
    # out of memory, a native fault, kill -9 mid-batch) is dead-lettered as `crash_loop` on the next try.
    crash_loop_limit: int = Field(default=3, ge=1, le=1_000)
    rec_ttl_s: int = Field(default=7 * 86_400, ge=60)
    metrics_port: int = Field(default=0, ge=0, le=65_535)  # /metrics, /healthz, /readyz (0: none)
    # /healthz fails when the scorer's loop has not turned for this long (a hung batch): the orchestrator
    # restarts the replica. Longer than the longest backoff wait and a slow batch together.
    liveness_s: float = Field(default=60.0, ge=15.0, le=3600.0)
    # Passed to aiokafka unchanged (security_protocol, sasl_*, ssl_context is not settable this way).
    kafka_options: dict[str, Any] = {}
    # Passed to the consumer only (session_timeout_ms, heartbeat_interval_ms, max_poll_interval_ms, …).
    kafka_consumer_options: dict[str, Any] = {}

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _split_sentinels(cls, value: object) -> object:
        """`host:port,host:port` as an operator writes it in one environment variable."""
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _combinations(self) -> "Settings":
        if self.tables_group_id == self.group_id:
            raise ValueError(
                f"RANKSTREAM_TABLES_GROUP_ID equals RANKSTREAM_GROUP_ID ({self.group_id!r}): the tables job and the "
                "scorer would split the partitions between them; give the tables job a group of its own"
            )
        if self.top_k > self.candidates:
            raise ValueError(
                f"top_k ({self.top_k}) is larger than candidates ({self.candidates}); "
                "raise RANKSTREAM_CANDIDATES or lower RANKSTREAM_TOP_K"
            )
        if self.rerank_top is not None and 0 < self.rerank_top < self.top_k:
            raise ValueError(
                f"rerank_top ({self.rerank_top}) is below top_k ({self.top_k}): the written list would hold "
                "candidates that were never cross-encoded; raise RANKSTREAM_RERANK_TOP or set it to 0"
            )
        if self.topic == self.dlq_topic:
            raise ValueError("RANKSTREAM_DLQ_TOPIC must differ from RANKSTREAM_TOPIC")
        if self.text_candidates and self.encoder_dir is None:
            raise ValueError(
                f"RANKSTREAM_TEXT_CANDIDATES={self.text_candidates} needs RANKSTREAM_ENCODER_DIR (the text encoder "
                "whose title vectors to search); set it, or set RANKSTREAM_TEXT_CANDIDATES=0"
            )
        if self.merge_dir is not None and self.encoder_dir is None:
            raise ValueError(
                f"RANKSTREAM_MERGE_DIR={self.merge_dir} needs RANKSTREAM_ENCODER_DIR (the text encoder whose title "
                "vectors its pool searches); set it, or unset RANKSTREAM_MERGE_DIR"
            )
        if self.merge_dir is not None and self.text_candidates:
            raise ValueError(
                "RANKSTREAM_MERGE_DIR and RANKSTREAM_TEXT_CANDIDATES are two ways of merging text neighbours; "
                "set one (the merge file says how many text neighbours it pools)"
            )
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"RANKSTREAM_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "RANKSTREAM_KAFKA_SASL_MECHANISM, RANKSTREAM_KAFKA_SASL_USERNAME and RANKSTREAM_KAFKA_SASL_PASSWORD"
            )
        for name in ("kafka_ssl_cafile", "redis_ssl_ca"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"RANKSTREAM_{name.upper()}={path} is not a readable file")
        if self.redis_ssl_ca is not None and not self.redis_url.startswith("rediss://"):
            raise ValueError("RANKSTREAM_REDIS_SSL_CA is set but RANKSTREAM_REDIS_URL is not rediss://")
        self._check_replication()
        self._check_catalog()
        return self

    def _check_catalog(self) -> None:
        """The catalog job's topics and group against each other and the scorer's."""
        if self.catalog_topic == self.catalog_dlq_topic:
            raise ValueError("RANKSTREAM_CATALOG_DLQ_TOPIC must differ from RANKSTREAM_CATALOG_TOPIC")
        for name in ("catalog_topic", "catalog_dlq_topic"):
            value = getattr(self, name)
            if value in (self.topic, self.dlq_topic):
                raise ValueError(
                    f"RANKSTREAM_{name.upper()} ({value!r}) is one of the click topics (RANKSTREAM_TOPIC, "
                    "RANKSTREAM_DLQ_TOPIC): catalog records and click events need topics of their own"
                )
        if self.catalog_group_id in (self.group_id, self.tables_group_id):
            raise ValueError(
                f"RANKSTREAM_CATALOG_GROUP_ID ({self.catalog_group_id!r}) equals the scorer's or the tables job's "
                "group: give the catalog job a group of its own"
            )

    def _check_replication(self) -> None:
        """The Sentinel and WAIT settings against each other and the rest of the Redis settings."""
        if self.redis_sentinels:
            self.sentinel_addresses()  # each one host:port
            if self.redis_cluster:
                raise ValueError(
                    "RANKSTREAM_REDIS_SENTINELS and RANKSTREAM_REDIS_CLUSTER=true are both set: a Redis Cluster "
                    "fails over by itself; unset one of them"
                )
            if self.redis_url.startswith("rediss://"):
                raise ValueError(
                    "RANKSTREAM_REDIS_SENTINELS is set with a rediss:// URL: TLS through Sentinel is not "
                    "supported; use redis:// or unset RANKSTREAM_REDIS_SENTINELS"
                )
            if not self.redis_sentinel_master:
                raise ValueError("RANKSTREAM_REDIS_SENTINELS is set but RANKSTREAM_REDIS_SENTINEL_MASTER is empty")
        if not self.redis_wait_replicas:
            return
        if self.redis_cluster:
            raise ValueError(
                "RANKSTREAM_REDIS_WAIT_REPLICAS is not supported with RANKSTREAM_REDIS_CLUSTER=true (WAIT would "
                "have to run on every master a batch wrote); use a primary with replicas and Sentinel "
                "(RANKSTREAM_REDIS_SENTINELS), or set RANKSTREAM_REDIS_WAIT_REPLICAS=0"
            )
        if self.redis_wait_timeout_ms >= self.redis_timeout_s * 1000:
            raise ValueError(
                f"RANKSTREAM_REDIS_WAIT_TIMEOUT_MS ({self.redis_wait_timeout_ms}) is not below "
                f"RANKSTREAM_REDIS_TIMEOUT_S ({self.redis_timeout_s:g} s): the socket would time out before WAIT "
                "answers; lower RANKSTREAM_REDIS_WAIT_TIMEOUT_MS or raise RANKSTREAM_REDIS_TIMEOUT_S"
            )

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """RANKSTREAM_REDIS_SENTINELS as (host, port) pairs; ValueError naming the entry that is not host:port."""
        out = []
        for entry in self.redis_sentinels:
            host, _, port = entry.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65_536:
                raise ValueError(f"RANKSTREAM_REDIS_SENTINELS: {entry!r} is not host:port (e.g. 10.0.0.7:26379)")
            out.append((host, int(port)))
        return out

    def kafka_client_options(self) -> dict[str, Any]:
        """Keyword arguments every aiokafka client of this process gets."""
        opts: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            opts["ssl_context"] = create_ssl_context(
                cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None
            )
        if self.kafka_sasl_mechanism:
            opts["sasl_mechanism"] = self.kafka_sasl_mechanism
            opts["sasl_plain_username"] = self.kafka_sasl_username
            opts["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        return {**opts, **self.kafka_options}

    def redis_client_options(self) -> dict[str, Any]:
        """Keyword arguments for `redis.asyncio.from_url` besides the URL."""
        opts: dict[str, Any] = {"socket_timeout": self.redis_timeout_s, "socket_connect_timeout": self.redis_timeout_s}
        if self.redis_username:
            opts["username"] = self.redis_username
        if self.redis_password:
            opts["password"] = self.redis_password.get_secret_value()
        if self.redis_ssl_ca:
            opts["ssl_ca_certs"] = str(self.redis_ssl_ca)
        return opts


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
