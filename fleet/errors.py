"""The error tree of fleet: each leaf says what went wrong, in words a user can act on."""

from __future__ import annotations


class FleetError(Exception):
    """Base of every error fleet raises on purpose; its message is meant for the user."""


class ConfigError(FleetError):
    """A setting or config file is wrong."""


class InventoryError(FleetError):
    """The inventory cannot be loaded or a host's variables are invalid (names host, var, file)."""


class SpecError(FleetError):
    """A job spec is invalid; ``errors`` lists ``(field, problem)`` pairs."""

    def __init__(self, errors: list[tuple[str, str]], source: str | None = None) -> None:
        self.errors = errors
        self.source = source
        where = f"{source}: " if source else ""
        lines = "; ".join(f"{fld}: {msg}" if fld else msg for fld, msg in errors)
        super().__init__(f"{where}invalid job spec: {lines}")


class NotFound(FleetError):
    """A job, host or user does not exist (or is not visible to the caller)."""


class ApiError(FleetError):
    """The API answered with an error; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)
