"""The `serve` stage: `config` (ServeConfig, every knob), `http` (the ASGI transport and its route
table), `dataplane` (inference, feedback, traffic, shadow), `follow` (the registry), `fleet`
(what is served), `runtime` (ONNX Runtime), `batching`, `codec` (V2/v1 bytes), `supervisor` (the
worker processes) and `k8s`. `app.create_app` puts them together. Nothing here imports torch."""
