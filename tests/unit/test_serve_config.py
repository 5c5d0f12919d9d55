"""`ServeConfig`: one default per knob, every problem named at once, and a lossless trip through
the environment to the worker processes."""

from __future__ import annotations

import dataclasses

import pytest

from shipyard.errors import UsageError
from shipyard.serve.config import ENV_PREFIX, SECRETS, TOKEN_ENV, ServeConfig


def test_the_defaults_are_valid_and_match_the_parts() -> None:
    c = ServeConfig().checked()
    assert c.batching.max_batch_size == c.max_batch_size and c.monitor.window == c.window
    assert c.max_body == 8 << 20 and c.management and not c.auth_inference


def test_every_knob_survives_the_trip_to_a_worker() -> None:
    c = ServeConfig(models=("digits", "other@candidate"), host="0.0.0.0", port=9001, workers=3, http="uvicorn",
                    threads=2, max_body_mb=2.5, auth_inference=True, max_batch_size=16, max_delay_ms=1.5,
                    max_queue=64, timeout_ms=500.0, concurrency=128, latency_target_ms=20.0, poll_s=0.5,
                    notify=False, drain_timeout_s=3.0, drain_grace_s=0.0, drain_file="/tmp/drain", metrics=False,
                    log=False, log_sample=0.5, log_ring=10, log_retention_days=2.0, feedback_horizon_h=1.0,
                    evaluate=False, window=100, window_max_age_s=9.0, alerts="/etc/rules.toml", token="s3cret",
                    allowed_origins=("https://ops.example.com", "http://localhost:3000"),
                    allowed_hosts=("models.internal",), feedback_secret="f" * 20)
    env = c.to_env()
    assert env[TOKEN_ENV] == "s3cret" and not any("s3cret" in v for k, v in env.items() if k != TOKEN_ENV)
    assert "s3cret" not in repr(c) and "f" * 20 not in repr(c)
    assert ServeConfig.from_env(env) == c
    # every field is sent (a new knob cannot be forgotten on the way)
    assert {k.removeprefix(ENV_PREFIX).lower() for k in env if k.startswith(ENV_PREFIX)} | set(SECRETS) == \
        {f.name for f in dataclasses.fields(ServeConfig)}


def test_missing_variables_take_the_defaults() -> None:
    assert ServeConfig.from_env({}) == ServeConfig()
    assert ServeConfig.from_env({f"{ENV_PREFIX}LATENCY_TARGET_MS": "", TOKEN_ENV: ""}) == ServeConfig()


def test_every_problem_is_named_in_one_usage_error() -> None:
    with pytest.raises(UsageError) as e:
        ServeConfig(workers=0, port=70000, log_sample=2.0, window=5, max_delay_ms=-1, http="nginx",
                    auth_inference=True).checked()
    message = str(e.value)
    for part in ("workers must be ≥ 1, got 0", "port must be in 0..65535, got 70000", "log_sample must be in 0..1",
                 "window must be at least 10 predictions, got 5", "max_delay_ms must be ≥ 0",
                 "http must be granian or uvicorn, got 'nginx'", "auth_inference needs SHIPYARD_TOKEN"):
        assert part in message
    assert e.value.exit_code == 2


def test_a_bad_variable_is_named() -> None:
    with pytest.raises(UsageError, match=f"{ENV_PREFIX}PORT='eighty'"):
        ServeConfig.from_env({f"{ENV_PREFIX}PORT": "eighty"})
    with pytest.raises(UsageError, match=f"{ENV_PREFIX}LOG='yes'"):
        ServeConfig.from_env({f"{ENV_PREFIX}LOG": "yes"})


def test_one_window_rule_everywhere() -> None:
    """A window below the default least window (50) is tested only when full, not refused."""
    c = ServeConfig(window=20).checked()
    assert c.monitor.min_window == 20
    with pytest.raises(UsageError, match="window must be at least 10"):
        ServeConfig(window=9).checked()


def test_management_follows_the_token_or_loopback() -> None:
    assert ServeConfig(host="127.0.0.1").management and ServeConfig(host="localhost").management
    assert ServeConfig(host="::1").management
    assert not ServeConfig(host="0.0.0.0").management
    assert ServeConfig(host="0.0.0.0", token="t").management


def test_origins_and_the_feedback_secret_are_checked() -> None:
    with pytest.raises(UsageError) as e:
        ServeConfig(allowed_origins=("evil.example",), feedback_secret="short").checked()
    assert "is not an origin like https://example.com" in str(e.value)
    assert "SHIPYARD_FEEDBACK_SECRET must be at least 16 characters" in str(e.value)


def test_the_exports_placeholder_is_not_a_secret() -> None:
    with pytest.raises(UsageError) as e:
        ServeConfig(token="CHANGE-ME", feedback_secret="CHANGE-ME" * 2).checked()
    assert "SHIPYARD_TOKEN is still the placeholder" in str(e.value)
    assert "SHIPYARD_FEEDBACK_SECRET is still the placeholder" in str(e.value)
    ServeConfig(token="t0ken", feedback_secret="s" * 16).checked()


@pytest.mark.parametrize(("host", "message"), [
    ("127.1", "not a full IP address"), ("not-a-host.invalid", "neither an IP address nor a name that resolves")])
def test_a_host_the_server_cannot_bind_is_a_usage_error(host: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ServeConfig(host=host).checked()
    for good in ("127.0.0.1", "::1", "0.0.0.0", "localhost"):
        ServeConfig(host=good).checked()
