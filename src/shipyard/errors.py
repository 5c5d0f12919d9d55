"""One exception family: each carries the exit code (and, for the server, the HTTP status)
it maps to, so every front end reports errors the same way."""

from __future__ import annotations


class ShipyardError(Exception):
    """An operation failed for a reason the user can act on (exit code 1)."""

    exit_code = 1
    http_status = 500


class UsageError(ShipyardError):
    """The command was called wrongly: a bad flag value, an unknown source (exit code 2)."""

    exit_code = 2
    http_status = 400


class ConfigError(UsageError):
    """A setting has a value we cannot use; the message names the key and the value."""

    def __init__(self, key: str, value: object, why: str) -> None:
        super().__init__(f"setting {key!r} has value {value!r}: {why}")
        self.key, self.value = key, value


class DataError(ShipyardError):
    """A data file is missing or malformed; the message names the file and the problem."""

    http_status = 400

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


class NotFound(ShipyardError):
    """A run, model or artifact that was asked for does not exist."""

    http_status = 404


class RunInterrupted(ShipyardError):
    """Training stopped on Ctrl-C; the run is kept as `interrupted` and can be resumed."""

    def __init__(self, run_id: str, message: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class BadRequest(ShipyardError):
    """What a client sent cannot be served as it is (HTTP 400); the message says what and where."""

    http_status = 400


class PayloadTooLarge(BadRequest):
    """A request body over the configured limit (HTTP 413)."""

    http_status = 413


class Overloaded(ShipyardError):
    """The server's queue is full (HTTP 503 with Retry-After): refused at once, so memory stays
    bounded and the client can back off."""

    http_status = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(ShipyardError):
    """A request waited past its deadline and its work was dropped (HTTP 504)."""

    http_status = 504
