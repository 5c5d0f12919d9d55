"""The `serve` stage: `config` (ServeConfig, every knob), `http` (the transport and its route
table) over `wire` (RSGI and ASGI), `dataplane` (inference, feedback, traffic, shadow), `follow`
(the registry), `fleet` (what is served), `runtime` (ONNX Runtime), `batching`, `jsonrule`,
`codec` and `codec_v1` (V2/v1 bytes), `supervisor` (the worker processes) and `k8s`.
`app.create_app` puts them together. Nothing here imports torch."""
