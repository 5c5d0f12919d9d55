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
_JSON_OK = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
_HTML_OK = {"description": "OK", "content": {"text/html": {"schema": {"type": "string"}}}}


def ok(summary: str | None = None) -> dict[str, Any]:
    return {**({"summary": summary} if summary else {}), "responses": {"200": _JSON_OK}}


def infer(params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "summary": "V2 inference (JSON tensors, or the binary tensor data extension)",
        "parameters": [*params, {"name": "Inference-Header-Content-Length", "in": "header", "required": False,
                                 "schema": {"type": "integer", "minimum": 1}}, _ROUTE_KEY],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        "responses": {"200": {
            "description": "Outputs `probabilities` (FP32) and `label` (BYTES); with binary outputs requested, a "
                           "JSON header of Inference-Header-Content-Length bytes followed by the tensors' bytes",
            "headers": {"Inference-Header-Content-Length": {"schema": {"type": "integer"}},
                        "X-Request-Id": {"schema": {"type": "string"}},
                        "X-Feedback-Token": {"schema": {"type": "string"}}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferResponse"}},
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            "400": _ERROR, "401": _ERROR, "404": _ERROR, "413": _ERROR,
            "503": {**_ERROR, "description": "Queue full: retry after the Retry-After header's seconds"},
            "504": {**_ERROR, "description": "Waited past the request deadline; the work was dropped"}}}


def model_get(*, version: bool = False) -> dict[str, Any]:
    return {"parameters": [NAME, VERSION] if version else [NAME], "responses": {"200": _JSON_OK, "404": _ERROR}}


def repository_action() -> dict[str, Any]:
    return {"parameters": [NAME], "responses": {"200": _JSON_OK, "401": _ERROR, "403": _ERROR, "404": _ERROR}}


READY = {"responses": {"200": _JSON_OK, "503": _JSON_OK}}
V1_PREDICT = {
    "parameters": [NAME, _ROUTE_KEY],
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["instances"],
        "properties": {"instances": {"type": "array", "minItems": 1}}}}}},
    "responses": {"200": _JSON_OK, "400": _ERROR, "404": _ERROR, "413": _ERROR, "503": _ERROR, "504": _ERROR}}
FEEDBACK = {
    "summary": "True labels for earlier predictions, by request id",
    "parameters": [NAME],
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["feedback"], "properties": {"feedback": {
            "type": "array", "minItems": 1, "maxItems": 10000, "items": {
                "type": "object", "required": ["id", "label"],
                "properties": {"id": {"type": "string"}, "label": {}}}}}}}}},
    "responses": {"200": _JSON_OK, "400": _ERROR, "401": _ERROR, "404": _ERROR, "410": _ERROR, "413": _ERROR}}
INDEX = {"summary": "Models loaded here (management)", "responses": {"200": _JSON_OK, "401": _ERROR, "403": _ERROR}}
REFRESH = {"summary": "Re-read the registry now: alias moves and traffic changes (management)",
           "responses": {"200": _JSON_OK, "401": _ERROR, "403": _ERROR}}
TRAFFIC_GET = {"summary": "The model's deployment config (management)", "parameters": [NAME],
               "responses": {"200": _JSON_OK, "401": _ERROR, "403": _ERROR, "404": _ERROR}}
TRAFFIC_POST = {
    "summary": "Set the traffic split and shadow, recorded in the registry's history", "parameters": [NAME],
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["weights"], "properties": {
            "weights": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 100}},
            "shadow": {"type": ["string", "null"]}, "reason": {"type": "string"}}}}}},
    "responses": {"200": _JSON_OK, "400": _ERROR, "401": _ERROR, "403": _ERROR, "404": _ERROR, "409": _ERROR}}
METRICS = {"summary": "Prometheus metrics of every worker of this server",
           "responses": {"200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}}}
DASHBOARD = {"summary": "Live charts of the served models (HTML; refreshes itself)", "responses": {"200": _HTML_OK}}
FRAGMENT = {
    "summary": "The dashboard's charts and tables for one model (HTML fragment)",
    "parameters": [{"name": "model", "in": "query", "required": True, "schema": {"type": "string"}},
                   {"name": "minutes", "in": "query", "schema": {"type": "number", "minimum": 1, "maximum": 43200}}],
    "responses": {"200": _HTML_OK, "400": _ERROR, "404": _ERROR}}


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
            paths.setdefault(route.pattern, {})[method.lower()] = {**op, **({"parameters": params} if params else {})}
    tensor = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string", "enum": [
            "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64",
            "BYTES"]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "parameters": {"type": "object"}, "data": {"type": "array"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "shipyard inference server", "version": __version__,
                 "description": "V2 Open Inference Protocol (REST) and the v1 :predict route."},
        "paths": paths,
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
                "id": {"type": "string"}, "parameters": {"type": "object"},
                "inputs": {"type": "array", "minItems": 1, "items": tensor},
                "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                    "name": {"type": "string"}, "parameters": {"type": "object"}}}}}},
            "InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
                "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
                "outputs": {"type": "array", "items": tensor}}},
        }},
    }
