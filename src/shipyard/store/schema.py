"""The tables of the project's one database, as SQLAlchemy Core. Alembic migrations under
`migrations/versions` create and evolve them; `HEAD` names the newest migration."""

from __future__ import annotations

import sqlalchemy as sa

HEAD = "0012"

metadata = sa.MetaData()

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("ended_at", sa.DateTime(timezone=True)),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
    sa.Column("host", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("recipe", sa.JSON, nullable=False),
    sa.Column("data_source", sa.String(1024), nullable=False),
    sa.Column("data_fingerprint", sa.String(64)),
    sa.Column("preprocess", sa.JSON),
    sa.Column("library_versions", sa.JSON),
    sa.Column("threads", sa.Integer),
    sa.Column("device", sa.String(32)),
    sa.Column("run_dir", sa.String(1024)),
    sa.Column("epochs_run", sa.Integer, nullable=False, default=0),
    sa.Column("best_epoch", sa.Integer),
    sa.Column("best_val_accuracy", sa.Float),
    sa.Column("test_accuracy", sa.Float),
    sa.Column("parent_run_id", sa.String(32)),
    sa.Column("name", sa.String(128), index=True),  # a person's name for the run (0011)
    sa.Column("tags", sa.JSON),  # {key: value}, both strings (0011)
)

run_metrics = sa.Table(
    "run_metrics",
    metadata,
    sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

run_artifacts = sa.Table(
    "run_artifacts",
    metadata,
    sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# -- the model registry (0002) ------------------------------------------------------------
NAME_LEN, ALIAS_LEN = 128, 64

models = sa.Table(
    "models",
    metadata,
    sa.Column("name", sa.String(NAME_LEN), primary_key=True),
    sa.Column("description", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # the highest version ever allocated: a deleted version's number is never handed out again
    sa.Column("last_version", sa.Integer, nullable=False, server_default="0"),
)

model_versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("name", sa.String(NAME_LEN), sa.ForeignKey("models.name", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("bundle_sha256", sa.String(64), nullable=False, index=True),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("run_id", sa.String(32), index=True),
    sa.Column("description", sa.Text),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("meta", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

aliases = sa.Table(
    "aliases",
    metadata,
    sa.Column("name", sa.String(NAME_LEN), primary_key=True),
    sa.Column("alias", sa.String(ALIAS_LEN), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    # no cascade: the database itself refuses to delete a version an alias points at
    sa.ForeignKeyConstraint(["name", "version"], ["model_versions.name", "model_versions.version"],
                            name="fk_aliases_model_versions"),
    sa.Index("ix_aliases_name_version", "name", "version"),
)

model_events = sa.Table(
    "model_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(NAME_LEN), nullable=False),
    sa.Column("version", sa.Integer),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("alias", sa.String(ALIAS_LEN)),
    sa.Column("from_version", sa.Integer),
    sa.Column("to_version", sa.Integer),
    sa.Column("reason", sa.Text),
    sa.Column("actor", sa.String(255)),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("details", sa.JSON),
    # history(name) reads one model's events in order
    sa.Index("ix_model_events_name_id", "name", "id"),
)

# -- deployments (0003) ---------------------------------------------------------------------
deployments = sa.Table(
    "deployments",
    metadata,
    sa.Column("name", sa.String(NAME_LEN), sa.ForeignKey("models.name", ondelete="CASCADE"),
              primary_key=True),
    # {alias: percent}, only aliases with a share > 0; the shares sum to 100
    sa.Column("weights", sa.JSON, nullable=False),
    # an alias that sees a copy of every request, its answers logged and never returned
    sa.Column("shadow", sa.String(ALIAS_LEN)),
    # +1 on every change, so a reader can tell two configs apart without comparing them
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# -- the prediction log and feedback (0004) ---------------------------------------------------
# Columnar: one row per model version per writer flush, each column a little-endian array with
# one entry per answered instance. A row per prediction cost ~10 µs per request to build and
# write on SQLite (20% of the server's throughput at c=64); a chunk costs about a memcpy.
prediction_chunks = sa.Table(
    "prediction_chunks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(NAME_LEN), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("ts_first", sa.Float, nullable=False),
    sa.Column("ts_last", sa.Float, nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("ids", sa.LargeBinary, nullable=False),  # int64: links to prediction_inputs
    sa.Column("request_ids", sa.LargeBinary, nullable=False),  # UTF-8, newline-separated
    sa.Column("id_hashes", sa.LargeBinary, nullable=False),  # uint32 crc32 of each request id: lookups
    sa.Column("ts", sa.LargeBinary, nullable=False),  # float64 unix seconds
    sa.Column("predicted", sa.LargeBinary, nullable=False),  # int32 class index
    sa.Column("confidence", sa.LargeBinary, nullable=False),  # float32
    sa.Column("sampled", sa.LargeBinary, nullable=False),  # bool: full input kept beyond the ring
    # float16 n × proj_dim: PCA coordinates on the reference basis, then the reconstruction error
    sa.Column("projection", sa.LargeBinary),
    sa.Column("proj_dim", sa.Integer, nullable=False),
    # float16 n × classes: every class's probability (models with up to 32 classes; else NULL)
    sa.Column("probabilities", sa.LargeBinary),
    sa.Index("ix_prediction_chunks_model_ts", "model", "ts_last"),
)

# Full inputs, many per row: one row per writer flush and kind ("ring": the most recent, evicted
# by count; "sample": a share kept until retention). `ids` are the
# predictions' ids (int64), `data` the features quantized to uint8 over [lo, hi] (lossless for
# 8-bit sources such as pixels/255).
prediction_inputs = sa.Table(
    "prediction_inputs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(NAME_LEN), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("ts_first", sa.Float, nullable=False),
    sa.Column("ts_last", sa.Float, nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("ids", sa.LargeBinary, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("shape", sa.JSON, nullable=False),  # one instance's feature shape
    sa.Column("lo", sa.Float, nullable=False),
    sa.Column("hi", sa.Float, nullable=False),
    sa.Index("ix_prediction_inputs_model_kind_ts", "model", "kind", "ts_last"),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("model", sa.String(NAME_LEN), primary_key=True),
    sa.Column("request_id", sa.String(128), primary_key=True),
    sa.Column("label", sa.Integer, nullable=False),  # class index; a second label replaces the first
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("value", sa.Float),  # a regression's true value (0009; its `label` is 0)
    sa.Index("ix_feedback_model_ts", "model", "ts"),
)

# A label that replaces a different earlier label for the same prediction is kept here (0007): who
# relabelled what, when, from where — labels steer gates and retraining, so changes are audited.
feedback_changes = sa.Table(
    "feedback_changes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(NAME_LEN), nullable=False),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("old_label", sa.Integer, nullable=False),
    sa.Column("new_label", sa.Integer, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("old_value", sa.Float),  # a regression's (0009)
    sa.Column("new_value", sa.Float),
    sa.Column("client", sa.String(255)),  # the address the new label came from
    sa.Column("identity", sa.String(64)),  # bearer, feedback-token or anonymous
    sa.Index("ix_feedback_changes_model_request", "model", "request_id"),
)

# -- monitoring state, leases, alerts (0005) ---------------------------------------------------
# A lease names one job that exactly one process may do at a time ("monitor:NAME",
# "rollout:NAME"): the holder renews it before `expires_at`; anyone may take an expired one.
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=False),
    sa.Column("acquired_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)

# One row per evaluated window of one model version: the three drift tests, accuracy estimated
# from confidence and realised from labels at the time.
monitor_windows = sa.Table(
    "monitor_windows",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(NAME_LEN), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("ts_first", sa.Float, nullable=False),
    sa.Column("ts_last", sa.Float, nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("evaluated_at", sa.Float, nullable=False),
    sa.Column("alarm", sa.Boolean, nullable=False),
    sa.Column("results", sa.JSON, nullable=False),
    sa.Index("ix_monitor_windows_model_ts", "model", "ts_last"),
)

# The evaluator's current view of each served version (what `monitor status` prints), replaced
# on every evaluation; `cursor` is the last prediction chunk it has read.
monitor_state = sa.Table(
    "monitor_state",
    metadata,
    sa.Column("model", sa.String(NAME_LEN), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("state", sa.JSON, nullable=False),
    sa.Column("cursor", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(NAME_LEN), nullable=False),
    sa.Column("version", sa.Integer),
    sa.Column("rule", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # firing | resolved
    sa.Column("opened_at", sa.Float, nullable=False),
    sa.Column("last_seen_at", sa.Float, nullable=False),
    sa.Column("resolved_at", sa.Float),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("details", sa.JSON, nullable=False),
    sa.Column("notified", sa.String(32)),  # webhook outcome: sent | failed | none
    # acknowledged (0011): no further firing notification for this row; its resolution is still sent
    sa.Column("acknowledged_at", sa.Float),
    sa.Column("acknowledged_by", sa.String(255)),
    sa.Column("ack_reason", sa.Text),
    sa.Index("ix_alerts_model_status", "model", "status"),
)

# What each server worker answered, per model version per interval (a few seconds): the
# request counts by outcome and a latency histogram, so error-rate and latency rules, the
# dashboard and the report see every worker and replica through the database.
serving_stats = sa.Table(
    "serving_stats",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(NAME_LEN), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("worker", sa.String(64), nullable=False),
    sa.Column("ts_start", sa.Float, nullable=False),
    sa.Column("ts_end", sa.Float, nullable=False),
    sa.Column("requests", sa.Integer, nullable=False),
    sa.Column("errors", sa.Integer, nullable=False),  # 5xx
    sa.Column("rejected", sa.Integer, nullable=False),  # 4xx: bad input (NaN, shape, dtype, range)
    sa.Column("latency", sa.JSON, nullable=False),  # counts per bucket of `LATENCY_BUCKETS_MS`
    sa.Index("ix_serving_stats_model_ts", "model", "ts_end"),
)

# The same, rolled up per minute per version, every worker together (0012): what a day's charts
# read. Counters (and the 15 latency buckets `l0`..`l14`) are added by an upsert, so workers
# writing the same minute never lose each other's counts; `peak_rps` is the busiest interval a
# single worker reported.
serving_minutes = sa.Table(
    "serving_minutes",
    metadata,
    sa.Column("model", sa.String(NAME_LEN), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("minute", sa.Integer, primary_key=True, autoincrement=False),  # unix time // 60
    sa.Column("requests", sa.Integer, nullable=False),
    sa.Column("errors", sa.Integer, nullable=False),
    sa.Column("rejected", sa.Integer, nullable=False),
    sa.Column("peak_rps", sa.Float, nullable=False),
    *[sa.Column(f"l{i}", sa.Integer, nullable=False) for i in range(15)],
    sa.Index("ix_serving_minutes_model_minute", "model", "minute"),
)

# -- rollouts (0006) ----------------------------------------------------------------------------
# One row per model: the current (or last) rollout of a candidate, step by step, so `rollout
# status|abort|resume` work from any process and a crashed rollout can be resumed.
rollouts = sa.Table(
    "rollouts",
    metadata,
    sa.Column("name", sa.String(NAME_LEN), sa.ForeignKey("models.name", ondelete="CASCADE"), primary_key=True),
    sa.Column("candidate", sa.Integer, nullable=False),
    sa.Column("champion", sa.Integer, nullable=False),
    sa.Column("steps", sa.JSON, nullable=False),  # canary weights, percent
    sa.Column("step", sa.Integer, nullable=False),  # index into steps of the step under way
    sa.Column("status", sa.String(16), nullable=False),  # running | promoted | rolled_back | aborted | failed
    sa.Column("config", sa.JSON, nullable=False),  # gates, minimums, timeouts
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("step_started_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("holder", sa.String(255)),
    sa.Column("reason", sa.Text),
    sa.Column("verdicts", sa.JSON, nullable=False),  # one per finished step
)

# -- explanations (0010) ------------------------------------------------------------------------
# One row per explained request, apart from the prediction log (explanations never enter drift
# windows): `shipyard trace ID` shows it. `attributions`: an .npz of the arrays sent back.
explanations = sa.Table(
    "explanations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(NAME_LEN), nullable=False),
    sa.Column("version", sa.Integer),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("method", sa.String(32), nullable=False),
    sa.Column("n", sa.Integer, nullable=False),  # instances
    sa.Column("summary", sa.JSON, nullable=False),  # target, outputs, parameters (`Explanation.summary`)
    sa.Column("attributions", sa.LargeBinary, nullable=False),
    sa.Index("ix_explanations_request", "request_id"),
    sa.Index("ix_explanations_model_ts", "model", "ts"),
)
