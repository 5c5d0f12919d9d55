"""The OpenAPI 3.1 document of every route the server answers (GET /openapi.json)."""

from __future__ import annotations

from typing import Any

from shipyard import __version__

_ERROR = {"description": "What was wrong",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
_ROUTE_KEY = {"name": "X-Shipyard-Route-Key", "in": "header", "required": False, "schema": {"type": "string"},
              "description": "Sticky routing: requests with the same key reach the same version of a traffic split"}
_JSON_OK = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
_HTML_OK = {"description": "OK", "content": {"text/html": {"schema": {"type": "string"}}}}


def _infer(params: list[dict[str, Any]]) -> dict[str, Any]:
    return {"post": {
        "summary": "V2 inference (JSON tensors, or the binary tensor data extension)",
        "parameters": [*params, {"name": "Inference-Header-Content-Length", "in": "header", "required": False,
                                 "schema": {"type": "integer", "minimum": 1}}, _ROUTE_KEY],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        "responses": {"200": {"description": "Outputs `probabilities` and `label`", "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferResponse"}}}},
            "400": _ERROR, "401": _ERROR, "404": _ERROR, "413": _ERROR,
            "503": {**_ERROR, "description": "Queue full: retry after the Retry-After header's seconds"},
            "504": {**_ERROR, "description": "Waited past the request deadline; the work was dropped"}}}}


def document(models: list[str] | None = None) -> dict[str, Any]:
    """The document; `models` (the names served here) become the `name` parameter's examples."""
    name = dict(_NAME)
    if models:
        name["schema"] = {"type": "string", "examples": list(models)}
        name["examples"] = {m: {"value": m} for m in models}
    get = {"get": {"responses": {"200": _JSON_OK, "404": _ERROR}}}
    tensor = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string", "enum": [
            "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "parameters": {"type": "object"}, "data": {"type": "array"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "shipyard inference server", "version": __version__,
                 "description": "V2 Open Inference Protocol (REST) and the v1 :predict route."},
        "paths": {
            "/v2/health/live": {"get": {"responses": {"200": _JSON_OK}}},
            "/v2/health/ready": {"get": {"responses": {"200": _JSON_OK, "503": _JSON_OK}}},
            "/v2": {"get": {"summary": "Server metadata", "responses": {"200": _JSON_OK}}},
            "/v2/models/{name}": {"get": {"parameters": [name], "responses": {"200": _JSON_OK, "404": _ERROR}}},
            "/v2/models/{name}/ready": {"get": {"parameters": [name], "responses": {"200": _JSON_OK, "404": _ERROR}}},
            "/v2/models/{name}/versions/{version}": {"get": {"parameters": [name, _VERSION],
                                                             "responses": get["get"]["responses"]}},
            "/v2/models/{name}/versions/{version}/ready": {"get": {"parameters": [name, _VERSION],
                                                                   "responses": get["get"]["responses"]}},
            "/v2/models/{name}/infer": _infer([name]),
            "/v2/models/{name}/versions/{version}/infer": _infer([name, _VERSION]),
            "/v1/models/{name}:predict": {"post": {
                "parameters": [name, _ROUTE_KEY],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["instances"],
                    "properties": {"instances": {"type": "array", "minItems": 1}}}}}},
                "responses": {"200": _JSON_OK, "400": _ERROR, "404": _ERROR, "413": _ERROR, "503": _ERROR,
                              "504": _ERROR}}},
            "/v2/repository/index": {"post": {"summary": "Models loaded here (management)",
                                              "responses": {"200": _JSON_OK, "401": _ERROR, "403": _ERROR}}},
            "/v2/repository/models/{name}/load": {"post": {"parameters": [name], "responses": {
                "200": _JSON_OK, "401": _ERROR, "403": _ERROR, "404": _ERROR}}},
            "/v2/repository/models/{name}/unload": {"post": {"parameters": [name], "responses": {
                "200": _JSON_OK, "401": _ERROR, "403": _ERROR, "404": _ERROR}}},
            "/v2/repository/refresh": {"post": {
                "summary": "Re-read the registry now: alias moves and traffic changes (management)",
                "responses": {"200": _JSON_OK, "401": _ERROR, "403": _ERROR}}},
            "/v2/repository/models/{name}/traffic": {
                "get": {"summary": "The model's deployment config (management)", "parameters": [name],
                        "responses": {"200": _JSON_OK, "401": _ERROR, "403": _ERROR, "404": _ERROR}},
                "post": {"summary": "Set the traffic split and shadow, recorded in the registry's history",
                         "parameters": [name],
                         "requestBody": {"required": True, "content": {"application/json": {"schema": {
                             "type": "object", "required": ["weights"], "properties": {
                                 "weights": {"type": "object", "additionalProperties": {
                                     "type": "integer", "minimum": 0, "maximum": 100}},
                                 "shadow": {"type": ["string", "null"]}, "reason": {"type": "string"}}}}}},
                         "responses": {"200": _JSON_OK, "400": _ERROR, "401": _ERROR, "403": _ERROR,
                                       "404": _ERROR, "409": _ERROR}}},
            "/openapi.json": {"get": {"responses": {"200": _JSON_OK}}},
            "/dashboard": {"get": {"summary": "Live charts of the served models (HTML; refreshes itself)",
                                   "responses": {"200": _HTML_OK}}},
            "/dashboard/fragment": {"get": {
                "summary": "The dashboard's charts and tables for one model (HTML fragment)",
                "parameters": [
                    {"name": "model", "in": "query", "required": True, "schema": {"type": "string"}},
                    {"name": "minutes", "in": "query", "schema": {"type": "number", "minimum": 1,
                                                                  "maximum": 43200}}],
                "responses": {"200": _HTML_OK, "400": _ERROR, "404": _ERROR}}},
        },
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
