"""Prometheus metrics of a scorer process, served on RANKSTREAM_METRICS_PORT (`/metrics`, stream/health.py)."""

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

EVENTS = Counter("rankstream_events_total", "Valid events consumed and scored")
DLQ = Counter("rankstream_dlq_total", "Events sent to the dead-letter topic", ["reason"])
COALESCED = Counter("rankstream_coalesced_events_total", "Events folded into another event's scoring")
LISTS_WRITTEN = Counter("rankstream_lists_written_total", "Per-user lists written to Redis")
STALE_SKIPPED = Counter("rankstream_stale_writes_total", "Writes the fence refused: the list was already newer")
PAIRS = Counter("rankstream_pairs_scored_total", "(history, candidate) pairs scored")
ERRORS = Counter("rankstream_errors_total", "Failed batches (retried)", ["kind"])
BATCH_RECORDS = Histogram(
    "rankstream_batch_records", "Records per micro-batch", buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000)
)
STAGE_SECONDS = Histogram("rankstream_stage_seconds", "Time per batch stage", ["stage"], buckets=_LATENCY_BUCKETS)
EVENT_TO_REDIS = Histogram(
    "rankstream_event_to_redis_seconds",
    "From the event's Kafka record time to its list written in Redis",
    buckets=_LATENCY_BUCKETS,
)
LAG = Gauge("rankstream_lag", "Records behind the partition end, per assigned partition", ["partition"])
PAUSED = Gauge("rankstream_paused", "1 while partitions are paused for backpressure")
READY = Gauge("rankstream_ready", "1 while the replica owns partitions and its last batch succeeded (see /readyz)")
MODELS_REFUSED = Counter(
    "rankstream_models_refused_total", "Artifacts refused at swap time (the old version kept serving)", ["version"]
)
SWAP_SECONDS = Histogram(
    "rankstream_swap_seconds",
    "Load, verify, smoke-test and warm up a new version (off the hot path)",
    buckets=_LATENCY_BUCKETS,
)
MODEL = Gauge("rankstream_model_info", "The model version this process serves (value 1)", ["version"])
LIVE_EVENTS = Counter(
    "rankstream_live_events_total", "Events checked against the list shown before them", ["model_version"]
)
LIVE_HITS = Counter("rankstream_live_hits_total", "Events whose item was in the user's current list", ["model_version"])
TABLES_APPLIED = Counter("rankstream_tables_events_total", "Valid events applied to the live tables (tables job)")
TABLES_SKIPPED = Counter(
    "rankstream_tables_skipped_total", "Invalid records the tables job skipped (the scorer dead-letters them)"
)
TABLES_WRITES = Counter(
    "rankstream_tables_share_writes_total", "Share writes, by outcome (ok, fence_moved)", ["outcome"]
)
VERSION_LATENCY = Histogram(
    "rankstream_version_event_to_list_seconds",
    "Event -> list latency by the model version that wrote the list (canary arms side by side)",
    ["model_version"],
    buckets=_LATENCY_BUCKETS,
)
VERSION_ERRORS = Counter(
    "rankstream_version_errors_total", "Events a model version failed to score (dead-lettered)", ["model_version"]
)
SHADOW_EVENTS = Counter(
    "rankstream_shadow_events_total", "Events checked against a shadow version's would-be list", ["model_version"]
)
SHADOW_HITS = Counter(
    "rankstream_shadow_hits_total", "Events whose item was in the shadow version's would-be list", ["model_version"]
)
SHADOW_SKIPPED = Counter(
    "rankstream_shadow_skipped_users_total",
    "Sampled users not shadow-scored: the shadow was busy or over its CPU share",
    ["model_version"],
)
CATALOG_RECORDS = Counter(
    "rankstream_catalog_items_total",
    "Catalog job: items written (put, del) or found unchanged in Redis, after each batch's last record per item",
    ["outcome"],
)
CATALOG_DLQ = Counter("rankstream_catalog_dlq_total", "Catalog records sent to the catalog DLQ topic", ["reason"])
CATALOG_ERRORS = Counter("rankstream_catalog_errors_total", "Catalog batches that failed and were read again")
