"""The OpenAPI 3.1 document of the server (GET /openapi.json), generated from the transport's route
table: each route carries its operations from here, so every route answered is documented and
every documented route is answered."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shipyard._version import __version__

if TYPE_CHECKING:
    from shipyard.serve.http import Route

_ERROR = {"description": "What was wrong",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
_ROUTE_KEY = {"name": "X-Shipyard-Route-Key", "in": "header", "required": False, "schema": {"type": "string"},
              "description": "Sticky routing: requests with the same key reach the same version of a traffic split"}
#: OpenAPI 3.1 describes raw bytes by leaving the schema out (`format: binary` was 3.0's string of bytes)
_BINARY: dict[str, Any] = {}
_HTML_OK = {"description": "OK", "content": {"text/html": {"schema": {"type": "string"}}}}
_ANSWER_HEADERS = {"X-Request-Id": {"schema": {"type": "string"}, "description": "The answer's request id"},
                   "X-Feedback-Token": {"schema": {"type": "string"}, "description": "With a feedback secret: the "
                                        "proof to send with this answer's label"}}
#: the statuses the access rules add (serve/guard.py), by what a route is
_GUARD = {
    "401": "No or wrong bearer token (management routes; with --auth-inference also the read and inference routes)",
    "403": "Management routes off (no token on a non-loopback server), or a cross-site Origin on a route that "
           "changes state",
    "415": "A body that is not application/json on a route that changes state, or an unsupported Content-Encoding",
    "421": "A loopback-bound server answers loopback Host names only",
    "408": "The request body did not arrive in time",
    "429": "This client already has its limit of requests in flight (--per-client-limit); retry later",
    "503": "This worker has its limit of requests in flight (--concurrency); retry later",
}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def ok(summary: str | None = None, schema: str | None = None) -> dict[str, Any]:
    """A GET answering 200 with a JSON object (the named component schema, when given)."""
    body = _ref(schema) if schema else {"type": "object"}
    return {**({"summary": summary} if summary else {}), "responses": {"200": _json(body)}}


def infer(params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "summary": "V2 inference (JSON tensors, or the binary tensor data extension)",
        "parameters": [*params, {"name": "Inference-Header-Content-Length", "in": "header", "required": False,
                                 "schema": {"type": "integer", "minimum": 1}}, _ROUTE_KEY],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _ref("InferRequest")},
            "application/octet-stream": _BINARY}},
        "responses": {"200": {
            "description": "Outputs `probabilities` (FP32) and `label` (BYTES); with binary outputs requested, a "
                           "JSON header of Inference-Header-Content-Length bytes followed by the tensors' bytes "
                           "(application/octet-stream)",
            "headers": {"Inference-Header-Content-Length": {
                "schema": {"type": "integer", "minimum": 1},
                "description": "Binary answers only: the length of the JSON header (an InferResponse)"},
                **_ANSWER_HEADERS},
            "content": {"application/json": {"schema": _ref("InferResponse")},
                        "application/octet-stream": _BINARY}},
            "400": _ERROR, "404": _ERROR, "413": _ERROR,
            "503": {**_ERROR, "description": "Queue full: retry after the Retry-After header's seconds"},
            "504": {**_ERROR, "description": "Waited past the request deadline; the work was dropped"}}}


def explain(params: list[dict[str, Any]]) -> dict[str, Any]:
    doc = infer(params)
    return {**doc, "summary": "Attributions for the instances sent: the /infer body plus request-level parameters "
                              "target, method (integrated_gradients, occlusion, kernel_shap), steps, baseline "
                              "(zeros, mean), integration, patch, samples",
            "responses": {**doc["responses"], "200": {**doc["responses"]["200"], "description": (
                "Outputs `attributions` shaped like the input sent (a table: `attributions/COLUMN` per column); "
                "parameters target, target_label, method, output and baseline_output per instance")}}}


def model_get(*, version: bool = False, schema: str = "ModelReady") -> dict[str, Any]:
    return {"parameters": [NAME, VERSION] if version else [NAME],
            "responses": {"200": _json(_ref(schema)), "404": _ERROR}}


def repository_action() -> dict[str, Any]:
    return {"parameters": [NAME], "responses": {"200": _json({"type": "object"}), "400": _ERROR, "404": _ERROR,
                                                 "409": {**_ERROR, "description": "A version whose answers "
                                                         "depend on its batch-mates, on a batching server"}}}


READY = {"summary": "Readiness (503 while loading or draining)",
         "parameters": [{"name": "strict", "in": "query", "required": False, "schema": {"type": "string"},
                         "description": "1: a degraded server (its database cannot take writes) answers 503"}],
         "responses": {"200": _json(_ref("Health")), "503": _json(_ref("Health"), "Not ready")}}
V1_PREDICT = {
    "summary": "v1 (TF Serving / KServe v1) prediction: `instances` (row form) answered as `predictions`, or "
               "`inputs` (columnar form: a list, or {INPUT: list}) answered as `outputs`; not both",
    "parameters": [NAME, _ROUTE_KEY],
    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("V1Request")}}},
    "responses": {"200": {**_json(_ref("V1Response")), "headers": _ANSWER_HEADERS}, "400": _ERROR, "404": _ERROR,
                  "413": _ERROR, "503": _ERROR, "504": _ERROR}}
V1_EXPLAIN = {
    "summary": "KServe v1 explanation: the :predict body (with an optional `parameters` object) answered as "
               "`explanations`, one per instance",
    "parameters": [NAME, _ROUTE_KEY],
    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("V1Request")}}},
    "responses": {"200": {**_json({"type": "object", "required": ["explanations"], "properties": {
        "explanations": {"type": "array"}, "method": {"type": "string"}}}), "headers": _ANSWER_HEADERS},
        "400": _ERROR, "404": _ERROR, "413": _ERROR, "503": _ERROR, "504": _ERROR}}
FEEDBACK = {
    "summary": "True labels for earlier predictions, by request id",
    "parameters": [NAME],
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["feedback"], "properties": {"feedback": {
            "type": "array", "minItems": 1, "maxItems": 10000, "items": {
                "type": "object", "required": ["id", "label"],
                "properties": {"id": {"type": "string"}, "label": {}, "token": {"type": "string"}}}}}}}}},
    "responses": {"200": _json(_ref("FeedbackResult")),
                  "400": _ERROR, "403": {**_ERROR, "description": "One label without its answer's feedback token"},
                  "404": {**_ERROR, "description": "Unknown model, or one label for an unknown request id"},
                  "410": {**_ERROR, "description": "One label for a prediction past the feedback horizon"},
                  "413": _ERROR}}
INDEX = {"summary": "Models loaded here (management)", "responses": {"200": _json(
    {"type": "array", "items": _ref("ModelState")})}}
REFRESH = {"summary": "Re-read the registry now: alias moves and traffic changes (management)",
           "responses": {"200": _json({"type": "object", "required": ["changed", "ready"], "properties": {
               "changed": {}, "ready": {"type": "boolean"}}})}}
TRAFFIC_GET = {"summary": "The model's deployment config (management)", "parameters": [NAME],
               "responses": {"200": _json(_ref("Traffic")), "404": _ERROR}}
TRAFFIC_POST = {
    "summary": "Set the traffic split and shadow, recorded in the registry's history", "parameters": [NAME],
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["weights"], "properties": {
            "weights": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 100}},
            "shadow": {"type": ["string", "null"]}, "reason": {"type": "string"}}}}}},
    "responses": {"200": _json(_ref("Traffic")), "400": _ERROR, "404": _ERROR, "409": _ERROR}}
METRICS = {"summary": "Prometheus metrics of every worker of this server",
           "responses": {"200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}}}
DASHBOARD = {"summary": "Live charts of the served models (HTML; refreshes itself)", "responses": {"200": _HTML_OK}}
ASSET = {"summary": "The dashboard's chart library and style (vendored uPlot, our charts.js), served here: "
                    "no CDN", "parameters": [{"name": "file", "in": "path", "required": True,
                                              "schema": {"type": "string"}}],
         "responses": {"200": {"description": "OK", "content": {"text/javascript": {}, "text/css": {}}},
                       "404": _ERROR}}
FRAGMENT = {
    "summary": "The dashboard's charts and tables for one model (HTML fragment)",
    "parameters": [{"name": "model", "in": "query", "required": True, "schema": {"type": "string"}},
                   {"name": "minutes", "in": "query", "schema": {"type": "number", "minimum": 1, "maximum": 43200}}],
    "responses": {"200": _HTML_OK, "400": _ERROR, "404": _ERROR}}


def _guarded(op: dict[str, Any], access: str, writes: bool) -> dict[str, Any]:
    """`op` with the statuses the access rules answer on its route (`Route.access`, `.writes`)."""
    codes = ["421"]
    if access != "public":
        codes += ["401", "429", "503"]
    if access == "management" or writes:
        codes.append("403")
    if writes or "requestBody" in op:
        codes.append("415")
    if "requestBody" in op:
        codes.append("408")
    extra = {c: {**_ERROR, "description": _GUARD[c]} for c in codes if c not in op["responses"]}
    return {**op, "responses": dict(sorted({**op["responses"], **extra}.items()))}


def document(routes: Sequence[Route], models: list[str] | None = None) -> dict[str, Any]:
    """The document of `routes`; `models` (the names served here) become the `name` parameter's examples."""
    name = dict(NAME)
    if models:
        name["schema"] = {"type": "string", "examples": list(models)}
        name["examples"] = {m: {"value": m} for m in models}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        for method, op in route.docs.items():
            params = [name if p is NAME else p for p in op.get("parameters", [])]
            op = _guarded(op, route.access, method in route.writes)
            paths.setdefault(route.pattern, {})[method.lower()] = {**op, **({"parameters": params} if params else {})}
    return {
        "openapi": "3.1.0",
        "info": {"title": "shipyard inference server", "version": __version__,
                 "description": "V2 Open Inference Protocol (REST) and the v1 :predict route (TF Serving's REST "
                                "API, as KServe v1 serves it)."},
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }


_DATATYPE = {"type": "string", "enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                                        "INT64", "FP16", "FP32", "FP64", "BYTES"]}
_TENSOR = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": _DATATYPE,
    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    "parameters": {"type": "object"}, "data": {"type": "array"}}}
_TENSOR_META = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": _DATATYPE,
    "shape": {"type": "array", "items": {"type": "integer", "minimum": -1}, "description": "-1: any size"},
    "parameters": {"type": "object"}}}
_ROWS = {"type": "array", "minItems": 1, "description": "One value, or nested arrays of numbers, per instance"}
_VERSION = {"type": ["string", "null"]}
_PROBABILITIES = {"type": "array", "items": {"type": "number"}}
SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "minItems": 1, "items": _TENSOR},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "parameters": {"type": "object"}}}}}},
    "InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "parameters": {"type": "object"}, "outputs": {"type": "array", "items": _TENSOR}}},
    "V1Request": {"type": "object", "oneOf": [{"required": ["instances"]}, {"required": ["inputs"]}], "properties": {
        "instances": _ROWS,
        "inputs": {"oneOf": [_ROWS, {"type": "object", "minProperties": 1, "maxProperties": 1,
                                     "additionalProperties": _ROWS, "description": "{INPUT: instances}"}]},
        "signature_name": {"type": "string", "description": "Accepted and ignored (one signature)"}}},
    "V1Response": {"type": "object", "required": ["model_name", "model_version", "id"], "oneOf": [
        {"required": ["predictions"], "properties": {"predictions": {"type": "array", "items": {
            "type": "object", "required": ["label", "probabilities"],
            "properties": {"label": {"type": "string"}, "probabilities": _PROBABILITIES}}}}},
        {"required": ["outputs"], "properties": {"outputs": {
            "type": "object", "required": ["label", "probabilities"], "properties": {
                "label": {"type": "array", "items": {"type": "string"}},
                "probabilities": {"type": "array", "items": _PROBABILITIES}}}}}],
        "properties": {"model_name": {"type": "string"}, "model_version": _VERSION, "id": {"type": "string"}}},
    "ModelMetadata": {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
                      "properties": {"name": {"type": "string"}, "versions": {"type": "array", "items": {
                          "type": "string"}}, "platform": {"type": "string"},
                                     "inputs": {"type": "array", "items": _TENSOR_META},
                                     "outputs": {"type": "array", "items": _TENSOR_META},
                                     "parameters": {"type": "object"}}},
    "ModelReady": {"type": "object", "required": ["name", "ready"], "properties": {
        "name": {"type": "string"}, "ready": {"type": "boolean"}, "version": {"type": "string"}}},
    "ModelState": {"type": "object", "required": ["name", "version", "state"], "properties": {
        "name": {"type": "string"}, "version": {"type": "string"}, "state": {"type": "string"}}},
    "ModelList": {"type": "object", "required": ["models"], "properties": {
        "models": {"type": "array", "items": _ref("ModelState")}}},
    "ModelNames": {"type": "object", "required": ["models"], "properties": {
        "models": {"type": "array", "items": {"type": "string"}}}},
    "Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
    "Alive": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
    "Health": {"type": "object", "required": ["ready", "draining"], "properties": {
        "ready": {"type": "boolean"}, "draining": {"type": "boolean"}, "degraded": {"type": "boolean"},
        "database": {"type": "object", "description": "Whether the database takes this server's writes"},
        "workers": {"type": "object", "description": "Alive and expected HTTP workers"},
        "models": {"type": "object"}, "errors": {"type": "object"}, "retiring": {"type": "integer"},
        "shadow": {"type": "object"}, "pid": {"type": "integer"}},
        "description": "Models, errors and pid only to who may read (with --auth-inference: the token)"},
    "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
        "name": {"type": "string"}, "version": {"type": "string"},
        "extensions": {"type": "array", "items": {"type": "string"}}}},
    "Traffic": {"type": "object", "required": ["name", "weights", "shadow", "revision"], "properties": {
        "name": {"type": "string"},
        "weights": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 100},
                    "description": "Percent of the traffic per alias"},
        "shadow": {"type": ["string", "null"]}, "revision": {"type": "integer"},
        "updated_at": {"type": ["string", "null"]}}},
    "FeedbackResult": {"type": "object", "required": ["accepted", "items"], "properties": {
        **{k: {"type": "integer", "minimum": 0} for k in ("accepted", "unknown", "late", "invalid", "forbidden")},
        "items": {"type": "array", "description": "The labels not accepted, each with its status and error",
                  "items": {"type": "object", "required": ["id", "status"], "properties": {
                      "id": {"type": "string"}, "status": {"type": "string"}, "error": {"type": "string"}}}}}},
}
