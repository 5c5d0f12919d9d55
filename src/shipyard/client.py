"""`shipyard.Client`: a small Python client for a shipyard server (V2 Open Inference Protocol).

    with shipyard.Client("http://localhost:8000", token=os.environ.get("SHIPYARD_TOKEN")) as c:
        p = c.predict("digits", images)          # numpy array, list of PIL images / 2-D arrays, DataFrame
        p.probabilities, p.labels, p.request_id  # FP32 [N, classes], str [N], the server's id
        c.feedback("digits", p.instance_ids, true_labels)

Why our own when `tritonclient` works: it picks the model input from the array's shape (features
or raw pixels), sends binary tensors by default (3 KB per 784-float instance, not ~9 KB of JSON
to parse), hands back the ids feedback takes per instance, retries what the server asks to be
retried (503/429 with `Retry-After`) and raises typed errors carrying the server's message. It
imports neither torch, ONNX Runtime nor the server; pandas and Pillow only when given their objects."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import orjson

from shipyard.client_wire import (
    DTYPES,
    _is_dataframe,
    _is_image,
    _lossless,
    _stack_images,
    dataframe_inputs,
    decode_response,
    encode_request,
)
from shipyard.errors import ShipyardError

__all__ = ["AuthError", "BadRequestError", "Client", "ClientError", "Explained", "FeedbackResult", "NotFoundError",
           "OverloadedError", "PayloadTooLargeError", "Prediction", "ServedModel", "ServerError", "TransportError",
           "encode_request"]

_TOKENS_KEPT = 4096  # feedback tokens remembered per client (answers of a server with a feedback secret)


# -- errors -------------------------------------------------------------------------------------
class ClientError(ShipyardError):
    """The server refused or failed a request: `status` (None: no answer came) and `message`,
    the server's own `{"error": …}` text, so callers can show or match what the server said."""

    def __init__(self, message: str, status: int | None = None, *, body: bytes = b"") -> None:
        super().__init__(f"{status}: {message}" if status is not None else message)
        self.status = status
        self.message = message
        self.body = body


class BadRequestError(ClientError):
    """400: the request cannot be served as sent (the message names the input and the problem)."""


class PayloadTooLargeError(BadRequestError):
    """413: over the server's body or element limit: send fewer instances per request."""


class AuthError(ClientError):
    """401/403: a missing or wrong bearer token, or a route the server keeps closed."""


class NotFoundError(ClientError):
    """404: no such model (or version, or request id for feedback) on this server."""


class ServerError(ClientError):
    """5xx: the server failed; the request may be retried later."""


class OverloadedError(ServerError):
    """503 (or 429) still answered after the retries: `retry_after` is the server's last hint."""

    def __init__(self, message: str, status: int | None = 503, *, body: bytes = b"",
                 retry_after: float | None = None) -> None:
        super().__init__(message, status, body=body)
        self.retry_after = retry_after


class TransportError(ClientError):
    """No HTTP answer: connection refused (after the retries), a timeout, a broken connection."""


def _error_for(status: int, message: str, body: bytes, retry_after: float | None) -> ClientError:
    if status in (503, 429):
        return OverloadedError(message, status, body=body, retry_after=retry_after)
    cls: type[ClientError] = {400: BadRequestError, 401: AuthError, 403: AuthError, 404: NotFoundError,
                              413: PayloadTooLargeError}.get(status, ServerError if status >= 500 else ClientError)
    return cls(message, status, body=body)


# -- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """One inference answer. `instance_ids`: the ids the feedback route takes for each instance
    (the server logs a one-instance request under its request id, and instance j of a larger one
    as `ID/j`); `feedback_token`: the proof a server started with a feedback secret wants with
    each label (the client remembers it, so `Client.feedback` sends it by itself)."""

    outputs: dict[str, np.ndarray]
    request_id: str
    model_name: str
    model_version: str | None
    instance_ids: list[str] = field(default_factory=list)
    feedback_token: str | None = None

    @property
    def probabilities(self) -> np.ndarray:
        """FP32 [N, classes]."""
        return self.outputs["probabilities"]

    @property
    def labels(self) -> np.ndarray:
        """The predicted class names, str [N]."""
        return self.outputs["label"]

    def __len__(self) -> int:
        return len(self.instance_ids)


@dataclass(frozen=True)
class Explained:
    """An explanation from the server: `attributions` (name → array shaped like the input sent;
    a table: `attributions/COLUMN`), and per instance the `target` explained, its `output` and
    `baseline_output`; `method` and the rest in `parameters`."""

    attributions: dict[str, np.ndarray]
    parameters: dict[str, Any]
    request_id: str
    model: str
    version: str | None

    @property
    def method(self) -> str:
        return str(self.parameters.get("method"))

    @property
    def target(self) -> list[int]:
        return list(self.parameters.get("target") or [])

    @property
    def output(self) -> np.ndarray:
        return np.asarray(self.parameters.get("output") or [], np.float64)

    @property
    def baseline_output(self) -> np.ndarray:
        return np.asarray(self.parameters.get("baseline_output") or [], np.float64)


@dataclass(frozen=True)
class FeedbackResult:
    """What the server did with the labels: counts per outcome and the items not accepted (each
    with its `id`, `status` and `error`)."""

    accepted: int
    unknown: int = 0
    late: int = 0
    invalid: int = 0
    forbidden: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ServedModel:
    """A model this server serves, with the version that answers by default."""

    name: str
    version: str
    state: str


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


# -- the client ---------------------------------------------------------------------------------
class Client:
    """A connection pool to one shipyard server. `token`: sent as `Authorization: Bearer TOKEN`
    (what `SHIPYARD_TOKEN` is on the server). `retries`: how many times a request is sent again
    when the server answers 503 or 429 with `Retry-After` (waiting what it says, at most
    `max_retry_wait` seconds) or the connection is refused (a restart: backoff from 0.1 s).
    Thread-safe as httpx is; use as a context manager or call `close()`."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 30.0, retries: int = 3,
                 max_retry_wait: float = 10.0, headers: dict[str, str] | None = None) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.url = url.rstrip("/")
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=hdrs)
        self._inputs: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
        self._tokens: dict[str, str] = {}  # request id → feedback token (insertion order: oldest first)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- transport ------------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, content: bytes | None = None,
                 headers: dict[str, str] | None = None) -> httpx.Response:
        """Send, retrying what the server (or a refused connection) says may be retried; raise
        the typed error of any other failure."""
        attempt = 0
        while True:
            try:
                resp = self._http.request(method, path, content=content, headers=headers)
            except httpx.ConnectError as e:  # nothing reached the server: safe to send again
                if attempt >= self.retries:
                    raise TransportError(f"cannot connect to {self.url}: {e}") from e
                time.sleep(min(0.1 * 2 ** attempt, self.max_retry_wait))
                attempt += 1
                continue
            except httpx.TransportError as e:
                raise TransportError(f"{method} {self.url}{path}: {type(e).__name__}: {e}") from e
            if resp.status_code < 400:
                return resp
            wait = _retry_after(resp.headers.get("retry-after"))
            if resp.status_code in (503, 429) and wait is not None and attempt < self.retries:
                time.sleep(min(wait, self.max_retry_wait))
                attempt += 1
                continue
            raise _error_for(resp.status_code, _message(resp), resp.content, wait)

    def _json(self, method: str, path: str, doc: Any = None) -> Any:
        content = orjson.dumps(doc) if doc is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else None
        return orjson.loads(self._request(method, path, content=content, headers=headers).content)

    # -- models -----------------------------------------------------------------------------------
    def models(self) -> list[ServedModel]:
        """The models this server serves, with the version that answers by default."""
        doc = self._json("GET", "/v2/models")
        return [ServedModel(m["name"], str(m.get("version")), m.get("state", "READY")) for m in doc["models"]]

    def metadata(self, name: str, version: str | int | None = None) -> dict[str, Any]:
        """V2 model metadata: inputs (name, datatype, shape, kind), outputs, classes, deployment."""
        meta: dict[str, Any] = self._json("GET", _model_path(name, version))
        self._inputs[(name, None if version is None else str(version))] = meta.get("inputs", [])
        return meta

    def ready(self) -> bool:
        """Whether the server is ready to serve (its readiness probe answers 200)."""
        try:
            return self._http.get("/v2/health/ready").status_code == 200
        except httpx.TransportError:
            return False

    # -- inference --------------------------------------------------------------------------------
    def predict(self, name: str, inputs: Any, *, version: str | int | None = None, input_name: str | None = None,
                binary: bool = True, outputs: Sequence[str] | None = None, request_id: str | None = None,
                route_key: str | None = None) -> Prediction:
        """Predict for a batch. `inputs`: a numpy array [N, …] (or nested lists) sent as the model
        input whose shape it fits — ready features or the raw form, e.g. uint8 [N, 28, 28] pixels —
        asked once from the metadata and cached, or named by `input_name`; a list of PIL images or
        2-D arrays (stacked to uint8 [N, H, W]); or a pandas DataFrame (one input per column).
        `binary`: tensors both ways as binary data (False: JSON). `request_id`: the V2 `id` (else
        the server draws one); `route_key`: pins a traffic split's choice to this key."""
        v = None if version is None else str(version)
        body, headers = self._encode(name, v, inputs, input_name, binary, outputs, request_id, route_key, None)
        resp = self._request("POST", _model_path(name, v) + "/infer", content=body, headers=headers)
        raw_len = resp.headers.get("inference-header-content-length")
        doc, outs = decode_response(resp.content, int(raw_len) if raw_len is not None else None)
        rid = str(doc.get("id") or resp.headers.get("x-request-id") or "")
        n = len(next(iter(outs.values()))) if outs else 0
        token = resp.headers.get("x-feedback-token")
        if token is not None:
            self._remember(rid, token)
        version_out = doc.get("model_version")
        ids = [rid] if n == 1 else [f"{rid}/{j}" for j in range(n)]  # as the prediction log keeps them
        return Prediction(outs, rid, str(doc.get("model_name", name)),
                          str(version_out) if version_out is not None else None, ids, token)

    def _encode(self, name: str, v: str | None, inputs: Any, input_name: str | None, binary: bool,
                outputs: Sequence[str] | None, request_id: str | None, route_key: str | None,
                parameters: dict[str, Any] | None) -> tuple[bytes, dict[str, str]]:
        """The body and headers of an /infer or /explain request for `inputs`."""
        if _is_dataframe(inputs):
            tensors = dataframe_inputs(inputs)
            body, hlen = encode_request(tensors, binary=binary, request_id=request_id, outputs=outputs,
                                        parameters={"content_type": "pd", **(parameters or {})},
                                        input_parameters={n: {"content_type": "str"} for n, dt, _ in tensors
                                                          if dt == "BYTES"})
        else:
            array = self._as_array(inputs)
            spec = self._pick_input(name, v, array, input_name)
            arr = _lossless(array, DTYPES[spec["datatype"]], f"input {spec['name']!r}") \
                if spec["datatype"] in DTYPES else array
            body, hlen = encode_request([(spec["name"], spec["datatype"], arr)], binary=binary,
                                        request_id=request_id, outputs=outputs, parameters=parameters)
        headers = {"Content-Type": "application/octet-stream" if hlen is not None else "application/json"}
        if hlen is not None:
            headers["Inference-Header-Content-Length"] = str(hlen)
        if route_key is not None:
            headers["X-Shipyard-Route-Key"] = route_key
        return body, headers

    def explain(self, name: str, inputs: Any, *, version: str | int | None = None, target: int | str | None = None,
                method: str | None = None, steps: int | None = None, baseline: str | None = None,
                input_name: str | None = None, binary: bool = True, request_id: str | None = None,
                **parameters: Any) -> Explained:
        """Attributions for a batch, from the server's `/explain` (the same inputs as `predict`):
        `attributions` shaped like the input sent (a table: one array per column), the target
        explained and its output and baseline output per instance. Other keyword arguments go
        to the server as parameters (integration, patch, samples)."""
        v = None if version is None else str(version)
        given = {"target": target, "method": method, "steps": steps, "baseline": baseline, **parameters}
        body, headers = self._encode(name, v, inputs, input_name, binary, None, request_id, None,
                                     {k: x for k, x in given.items() if x is not None})
        resp = self._request("POST", _model_path(name, v) + "/explain", content=body, headers=headers)
        raw_len = resp.headers.get("inference-header-content-length")
        doc, outs = decode_response(resp.content, int(raw_len) if raw_len is not None else None)
        p = doc.get("parameters") or {}
        version_out = doc.get("model_version")
        return Explained(outs, p, str(doc.get("id") or resp.headers.get("x-request-id") or ""),
                         str(doc.get("model_name", name)), str(version_out) if version_out is not None else None)

    @staticmethod
    def _as_array(inputs: Any) -> np.ndarray:
        if isinstance(inputs, np.ndarray):
            return inputs
        if _is_image(inputs):
            return _stack_images([inputs])
        if isinstance(inputs, (list, tuple)) and inputs and \
                all(_is_image(x) or (isinstance(x, np.ndarray) and x.ndim == 2) for x in inputs):
            return _stack_images(inputs)
        return np.asarray(inputs)

    def _pick_input(self, name: str, version: str | None, array: np.ndarray,
                    input_name: str | None) -> dict[str, Any]:
        """The model input to send `array` as: the one named, else the one whose instance shape
        it has; when none fits, the features input, so the server's 400 names it and its shape."""
        specs = self._inputs.get((name, version))
        if specs is None:
            self.metadata(name, version)
            specs = self._inputs[(name, version)]
        if input_name is not None:
            named = [s for s in specs if s["name"] == input_name]
            if not named:
                takes = ", ".join(f"{s['name']!r} {s['shape']}" for s in specs)
                raise BadRequestError(f"model {name!r} has no input {input_name!r}; it takes {takes}")
            return named[0]
        for s in specs:
            if len(s["shape"]) == array.ndim and all(d < 0 or d == n for d, n in zip(s["shape"], array.shape,
                                                                                      strict=True)):
                return s
        features = [s for s in specs if (s.get("parameters") or {}).get("kind") == "features"]
        if not (features or specs):
            raise BadRequestError(f"model {name!r} lists no inputs in its metadata")
        return (features or specs)[0]

    # -- feedback ---------------------------------------------------------------------------------
    def feedback(self, name: str, ids: Sequence[str] | Prediction, labels: Sequence[Any] | np.ndarray,
                 *, tokens: Sequence[str | None] | None = None) -> FeedbackResult:
        """True labels for earlier predictions: `ids` from `Prediction.instance_ids` (or the
        Prediction itself), one label (class name) each. A feedback token the client saw with the
        answer is sent along (a server with a feedback secret wants it). The server counts each
        label accepted, unknown, late, invalid or forbidden; a request of one label that is not
        accepted is an error (404 unknown id, 410 late, 400 invalid, 403 forbidden)."""
        id_list = list(ids.instance_ids if isinstance(ids, Prediction) else ids)
        label_list = labels.tolist() if isinstance(labels, np.ndarray) else list(labels)
        if len(id_list) != len(label_list):
            raise ValueError(f"{len(id_list)} ids but {len(label_list)} labels")
        if tokens is not None and len(tokens) != len(id_list):
            raise ValueError(f"{len(id_list)} ids but {len(tokens)} tokens")
        items = []
        for i, (rid, label) in enumerate(zip(id_list, label_list, strict=True)):
            item: dict[str, Any] = {"id": str(rid), "label": label.item() if isinstance(label, np.generic) else label}
            # an instance `ID/j` of a request of several is proven by its request's token
            token = tokens[i] if tokens is not None else \
                self._tokens.get(str(rid)) or self._tokens.get(str(rid).rpartition("/")[0])
            if token is not None:
                item["token"] = token
            items.append(item)
        doc = self._json("POST", f"/v2/models/{quote(name, safe='')}/feedback", {"feedback": items})
        return FeedbackResult(**{k: doc.get(k, 0) for k in ("accepted", "unknown", "late", "invalid", "forbidden")},
                              items=list(doc.get("items", [])))

    def _remember(self, rid: str, token: str) -> None:
        self._tokens[rid] = token
        while len(self._tokens) > _TOKENS_KEPT:  # the oldest go first
            self._tokens.pop(next(iter(self._tokens)), None)


def _model_path(name: str, version: str | int | None) -> str:
    path = f"/v2/models/{quote(name, safe='')}"
    return path if version is None else f"{path}/versions/{quote(str(version), safe='')}"


def _message(resp: httpx.Response) -> str:
    """The server's `{"error": …}` text, else the body itself (a proxy's page), else the reason."""
    try:
        doc = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return doc["error"]
    text = resp.content.decode("utf-8", "replace").strip()
    return text[:500] if text else resp.reason_phrase
