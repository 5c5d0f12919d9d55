"""Class maps in HTML, for the report and the serving dashboard: each map a small PNG written by
hand (zlib and a colour ramp: the server has no matplotlib), inline as a data: URL, so the report
stays one self-contained file and nothing is fetched."""

from __future__ import annotations

import base64
import struct
import zlib
from html import escape
from typing import Any

import numpy as np

#: black → purple → orange → pale yellow (a magma-like ramp), 256 steps
_ANCHORS = np.array([[0, 0, 4], [80, 18, 123], [183, 55, 121], [252, 137, 97], [252, 253, 191]], np.float64)
RAMP = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c])
                 for c in range(3)], axis=1).astype(np.uint8)


def png(values: np.ndarray, vmax: float, scale: int = 3) -> bytes:
    """A 2-D array as an RGB PNG (0 → black, `vmax` → pale yellow), each value `scale`×`scale` pixels."""
    idx = np.clip(np.asarray(values, np.float64) / (vmax or 1.0) * 255, 0, 255).astype(np.uint8)
    rgb = RAMP[np.kron(idx, np.ones((scale, scale), np.uint8))]
    h, w = rgb.shape[:2]
    raw = b"".join(b"\x00" + rgb[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def _img(values: np.ndarray, vmax: float, alt: str) -> str:
    data = base64.b64encode(png(values, vmax)).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}" title="{escape(alt)}">'


def _image(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(values).reshape(shape)
    return a if a.ndim == 2 else a.sum(-1)  # colour channels together


def maps_html(docs: list[dict[str, Any]]) -> str:
    """Per version: what each class looks at, at bundle time over recent traffic, with the shift
    (1 − cosine similarity) per class; a table's columns as a small table of shares."""
    if not docs:
        return "<p class=sub>no explanations yet</p>"
    parts = []
    for doc in docs:
        head = f"<h3>v{doc['version']}: mean |attribution| per predicted class</h3>"
        if doc.get("error"):
            parts.append(head + f"<p class=sub>{escape(doc['error'])}</p>")
            continue
        rows = [(label, doc[key]) for label, key in (("bundle", "bundle"), ("recent", "recent"))
                if doc.get(key) is not None]
        note = [] if doc.get("note") is None else [doc["note"]]
        if doc.get("recent") is None:
            note.append("no recent inputs kept in the prediction log for this version")
        shift = doc.get("shift") or [None] * len(doc["classes"])
        if doc.get("shape") is not None and rows:
            vmax = max(float(np.max(m)) for _, m in rows)
            shape = tuple(doc["shape"])
            cells = "".join(f"<th>{escape(str(c))}</th>" for c in doc["classes"])

            body = "".join(f"<tr><th>{label}</th>" + "".join(
                f"<td>{_img(_image(m[c], shape), vmax, f'{label} {cls}')}</td>" for c, cls in enumerate(doc["classes"]))
                + "</tr>" for label, m in rows)
            body += "<tr><th>shift</th>" + "".join(f"<td>{'–' if s is None else f'{s:.2f}'}</td>"
                                                     for s in shift) + "</tr>"
            parts.append(head + f'<table class="maps"><tr><th></th>{cells}</tr>{body}</table>')
        elif rows:
            names = [n for n, _ in doc["columns"]] if doc.get("columns") else \
                [str(i) for i in range(len(rows[0][1][0]))]
            widths = [w for _, w in doc["columns"]] if doc.get("columns") else [1] * len(names)
            starts = np.cumsum([0, *widths])
            table = "<tr><th>column</th>" + "".join(f"<th>{label}</th>" for label, _ in rows) + "</tr>"
            means = [np.asarray(m).mean(axis=0) for _, m in rows]
            for j, n in enumerate(names):
                table += f"<tr><td>{escape(n)}</td>" + "".join(
                    f"<td>{float(v[starts[j]:starts[j + 1]].sum()):.3g}</td>" for v in means) + "</tr>"
            parts.append(head + f'<table class="maps">{table}</table>')
        parts.append("".join(f"<p class=sub>{escape(n)}</p>" for n in note))
    return "".join(parts)
