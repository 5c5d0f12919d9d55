"""The `serve` stage. Today: the protocol-agnostic core (codec, runtime, handlers); the HTTP
server on top of it comes next. Nothing here imports torch."""
