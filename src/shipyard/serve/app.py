"""Assembling a server: `create_app(config)` builds the data plane over the registry and puts the
HTTP transport in front of it; `app_from_env` does the same in a worker process of `shipyard
serve`, from the `ServeConfig` its supervisor wrote into the environment."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from shipyard.monitor.alert_rules import DEFAULT_RULES
from shipyard.monitor.alert_rules import load as load_alerts
from shipyard.monitor.evaluator import Evaluator
from shipyard.monitor.predlog import PredictionLog
from shipyard.registry import Registry
from shipyard.serve.config import ServeConfig
from shipyard.serve.dataplane import DataPlane
from shipyard.serve.fleet import Fleet, Spec
from shipyard.serve.follow import Follower
from shipyard.serve.http import HttpApp
from shipyard.serve.supervisor import die_with_parent
from shipyard.settings import Settings

if TYPE_CHECKING:
    from shipyard.monitor.alert_rules import AlertConfig

__all__ = ["ServeConfig", "app_from_env", "create_app"]
#: how long a thread may hold the GIL while another waits for it, in a worker of `shipyard serve`
#: (Python's default: 5 ms). The event loop shares the GIL with granian's I/O threads (they hand
#: requests in and answers out through it) and the prediction log's writer: at 5 ms one of them
#: holding on stalls the loop. Measured at c=64 (benchmarks/serve_bench.py set-up): 9.4k req/s
#: at 5 ms, 10.0k at 1 ms, 11.3k at 0.2 ms, no better below.
SWITCH_INTERVAL_S = 2e-4


def create_app(config: ServeConfig | None = None, *, registry: Registry | None = None,
               settings: Settings | None = None, alerts: AlertConfig | None = None) -> HttpApp:
    """The server application over `registry` (default: the one `settings` names), serving
    `config.models` (`NAME` follows its deployment config, `NAME@ALIAS` one alias, `NAME@VERSION`
    one version; none: every model with a `production` alias); embed it in any ASGI server or run
    it with `shipyard serve`. With the prediction log on and `config.evaluate`, the server also
    runs the drift evaluator, which computes in the one worker that holds each deployment's lease."""
    config = (config or ServeConfig()).checked()
    reg = registry or Registry(settings=settings)
    specs = [Spec.parse(r) for r in config.models] if config.models else None
    fleet = Fleet(reg, specs, threads=config.threads)
    predlog = PredictionLog(reg.engine, config.log_config) if config.log else None
    evaluator = None
    if predlog is not None and config.evaluate:
        if alerts is None:
            alerts = load_alerts(config.alerts) if config.alerts else DEFAULT_RULES
        evaluator = Evaluator(reg, lambda: list(fleet.served), config.monitor, alerts=alerts)
    plane = DataPlane(fleet, batching=config.batching, predlog=predlog, evaluator=evaluator,
                      feedback_horizon_s=config.feedback_horizon_s, metrics_enabled=config.metrics,
                      feedback_secret=config.feedback_secret)
    return HttpApp(plane, config, follower=Follower(fleet, poll_s=config.poll_s, notify=config.notify))


def app_from_env() -> HttpApp:
    """Factory for server worker processes (`granian`/`uvicorn --factory`). A worker dies with
    the process that started it (SIGTERM: it drains), so a killed server leaves no worker behind."""
    die_with_parent()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(ServeConfig.from_env(), settings=Settings.from_env())
