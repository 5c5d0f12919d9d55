"""Settings.from_env: explicit arguments > SHIPYARD_* environment > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.errors import ConfigError, UsageError
from shipyard.settings import Settings, default_threads

ENV_KEYS = ("SHIPYARD_HOME", "SHIPYARD_DATABASE_URL", "SHIPYARD_THREADS")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_defaults(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = Settings.from_env()
    assert s.home == Path(".shipyard")
    assert s.database_url is None
    assert s.threads == default_threads()
    assert s.db_url == f"sqlite:///{(tmp_path / '.shipyard' / 'shipyard.db').resolve()}"
    assert s.artifacts_dir == Path(".shipyard/artifacts")
    assert s.runs_dir == Path(".shipyard/runs")
    assert s.cache_dir == Path(".shipyard/cache")


def test_defaults_from_empty_mapping_ignore_process_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SHIPYARD_THREADS", "5")
    s = Settings.from_env({})
    assert s.threads == default_threads()
    assert s == Settings()


def test_sqlite_url_is_absolute_and_inside_home(clean_env: pytest.MonkeyPatch) -> None:
    s = Settings.from_env()
    assert s.db_url.startswith("sqlite:///")
    db_path = Path(s.db_url.removeprefix("sqlite:///"))
    assert db_path.is_absolute()
    assert db_path.name == "shipyard.db"
    assert db_path.parent == s.home.resolve()


def test_env_home(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = tmp_path / "elsewhere"
    clean_env.setenv("SHIPYARD_HOME", str(home))
    s = Settings.from_env()
    assert s.home == home
    assert isinstance(s.home, Path)
    assert s.db_url == f"sqlite:///{(home / 'shipyard.db').resolve()}"
    assert s.artifacts_dir == home / "artifacts"


def test_env_database_url(clean_env: pytest.MonkeyPatch) -> None:
    url = "postgresql+psycopg://user@db:5432/shipyard"
    clean_env.setenv("SHIPYARD_DATABASE_URL", url)
    s = Settings.from_env()
    assert s.database_url == url
    assert s.db_url == url


def test_env_threads(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SHIPYARD_THREADS", "4")
    s = Settings.from_env()
    assert s.threads == 4
    assert isinstance(s.threads, int)


def test_environ_mapping_is_used_when_given(clean_env: pytest.MonkeyPatch) -> None:
    s = Settings.from_env({"SHIPYARD_HOME": "/srv/sy", "SHIPYARD_THREADS": "3",
                           "SHIPYARD_DATABASE_URL": "sqlite:////tmp/x.db"})
    assert s.home == Path("/srv/sy")
    assert s.threads == 3
    assert s.db_url == "sqlite:////tmp/x.db"


def test_empty_env_values_are_ignored(clean_env: pytest.MonkeyPatch) -> None:
    s = Settings.from_env({"SHIPYARD_HOME": "", "SHIPYARD_THREADS": "", "SHIPYARD_DATABASE_URL": ""})
    assert s == Settings()


def test_explicit_overrides_beat_env(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("SHIPYARD_HOME", str(tmp_path / "env-home"))
    clean_env.setenv("SHIPYARD_DATABASE_URL", "sqlite:////env.db")
    clean_env.setenv("SHIPYARD_THREADS", "4")
    s = Settings.from_env(home=str(tmp_path / "flag-home"), database_url="sqlite:////flag.db",
                          threads=2)
    assert s.home == tmp_path / "flag-home"
    assert isinstance(s.home, Path)  # a str flag value becomes a Path
    assert s.database_url == "sqlite:////flag.db"
    assert s.threads == 2


def test_none_overrides_do_not_hide_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SHIPYARD_THREADS", "4")
    clean_env.setenv("SHIPYARD_HOME", "/env/home")
    s = Settings.from_env(threads=None, home=None, database_url=None)
    assert s.threads == 4
    assert s.home == Path("/env/home")


def test_bad_env_threads_is_rejected_even_under_a_flag(clean_env: pytest.MonkeyPatch) -> None:
    # the env value is still parsed (and rejected) even when a flag overrides it
    clean_env.setenv("SHIPYARD_THREADS", "many")
    with pytest.raises(ConfigError, match="SHIPYARD_THREADS"):
        Settings.from_env(threads=2)


@pytest.mark.parametrize(
    ("raw", "why"),
    [("abc", "not an integer"), ("2.5", "not an integer"), ("0", "positive"), ("-3", "positive")],
)
def test_bad_env_threads(clean_env: pytest.MonkeyPatch, raw: str, why: str) -> None:
    clean_env.setenv("SHIPYARD_THREADS", raw)
    with pytest.raises(ConfigError) as ei:
        Settings.from_env()
    msg = str(ei.value)
    assert "SHIPYARD_THREADS" in msg
    assert repr(raw) in msg
    assert why in msg
    assert ei.value.key == "SHIPYARD_THREADS"
    assert ei.value.value == raw
    assert isinstance(ei.value, UsageError) and ei.value.exit_code == 2


@pytest.mark.parametrize("threads", [0, -1])
def test_bad_explicit_threads(clean_env: pytest.MonkeyPatch, threads: int) -> None:
    with pytest.raises(ConfigError) as ei:
        Settings.from_env(threads=threads)
    assert ei.value.key == "threads"
    assert ei.value.value == threads
    assert f"'threads' has value {threads}" in str(ei.value)


def test_settings_are_frozen_and_with_returns_a_copy(clean_env: pytest.MonkeyPatch) -> None:
    s = Settings.from_env()
    t = s.with_(threads=7)
    assert t.threads == 7 and s.threads == default_threads()
    with pytest.raises(AttributeError):
        s.threads = 3  # type: ignore[misc]
