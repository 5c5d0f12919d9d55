"""The prediction log's size budget without a server: sizes as operators write them, the default
derived from the disk, and the flag's trip through `ServeConfig` to the workers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from shipyard.errors import UsageError
from shipyard.monitor import logbudget
from shipyard.monitor.config import parse_size
from shipyard.serve.config import ServeConfig


@pytest.mark.parametrize(("text", "size"), [("0", 0), ("123", 123), ("500M", 500 << 20), ("20G", 20 << 30),
                                            ("2GiB", 2 << 30), ("64MB", 64 << 20), ("1.5T", int(1.5 * (1 << 40))),
                                            ("10k", 10 << 10)])
def test_sizes_are_read_as_operators_write_them(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "ten", "-1", "nan", "inf", "5X"])
def test_a_size_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


def test_the_default_is_a_tenth_of_the_disk_between_a_floor_and_a_cap(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "shipyard.db"
    db.write_bytes(b"\0" * 4096)
    engine = sa.create_engine(f"sqlite:///{db}")
    free = {"n": 100 << 30}
    monkeypatch.setattr(logbudget.shutil, "disk_usage", lambda _: SimpleNamespace(free=free["n"]))
    assert logbudget.default_max_bytes(engine) == int(0.1 * ((100 << 30) + 4096))  # the file counts as free
    free["n"] = 1 << 40
    assert logbudget.default_max_bytes(engine) == logbudget.MAX_BYTES
    free["n"] = 10 << 20
    assert logbudget.default_max_bytes(engine) == logbudget.MIN_BYTES
    assert logbudget.default_max_bytes(sa.create_engine("postgresql://u@h/db")) == logbudget.MAX_BYTES


def test_the_flag_reaches_the_workers_with_the_feedback_horizon() -> None:
    config = ServeConfig(log_max_bytes=5 << 30, feedback_horizon_h=24.0).checked()
    back = ServeConfig.from_env(config.to_env())
    assert back.log_config.max_bytes == 5 << 30 and back.log_config.horizon_s == 24 * 3600
    assert ServeConfig().log_config.max_bytes == 0  # derived from the disk at start
    with pytest.raises(UsageError, match="log_max_bytes"):
        ServeConfig(log_max_bytes=-1).checked()


def test_bytes_are_written_for_people() -> None:
    assert [logbudget.human(n) for n in (512, 1536, 5 << 20, 20 << 30, 3 << 40)] == [
        "512 B", "1.5 KiB", "5.0 MiB", "20.0 GiB", "3.0 TiB"]
