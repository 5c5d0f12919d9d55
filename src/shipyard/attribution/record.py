"""Explanations kept in the database, apart from the prediction log (they never enter drift
windows, and an explained request is not a prediction the monitor counts): one row per request,
found again by its request id (`shipyard trace ID`)."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import sqlalchemy as sa

from shipyard.attribution.explainer import Explanation
from shipyard.store.schema import explanations


def save(engine: sa.Engine, model: str, version: int | None, request_id: str, ex: Explanation) -> None:
    """Store one explanation (its arrays as an .npz, no pickle)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, allow_pickle=False, **{k.replace("/", "|"): v for k, v in ex.attributions.items()})
    with engine.begin() as conn:
        conn.execute(explanations.insert().values(
            model=model, version=version, request_id=request_id, ts=time.time(), method=ex.method,
            n=len(ex.target), summary=ex.summary(), attributions=buf.getvalue()))


def find(engine: sa.Engine, request_id: str, *, model: str | None = None, arrays: bool = False
         ) -> list[dict[str, Any]]:
    """The explanations recorded for a request id (the newest last); `arrays`: with the
    attributions as lists."""
    e = explanations
    q = sa.select(e).where(e.c.request_id == request_id)
    if model is not None:
        q = q.where(e.c.model == model)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(q.order_by(e.c.id)).mappings()]
    for r in rows:
        blob = r.pop("attributions")
        if arrays:
            with np.load(io.BytesIO(blob), allow_pickle=False) as f:
                r["attributions"] = {k.replace("|", "/"): f[k].tolist() for k in f.files}
    return rows
