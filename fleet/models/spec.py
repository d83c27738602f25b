"""The job spec: what a user submits (DESIGN.md §5.2).

Close to SkyPilot's task YAML. Every model forbids unknown fields, so a typo is an error that
names the field instead of a setting silently ignored. ``load_spec`` turns YAML text into a
``JobSpec`` or raises ``SpecError`` with ``(field, problem)`` pairs.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fleet.errors import SpecError
from fleet.models.enums import JobKind

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
INPUT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
ARCHES = ("x86_64", "aarch64")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds from ``90``, ``"90s"``, ``"10m"``, ``"1.5h"``; raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 600, '90s', '10m' or '2h'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration like 600, '90s', '10m' or '2h'")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("must be greater than 0")
    return seconds


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Resources(_Strict):
    """What the job needs from a host. Jobs with equal resources share one queue."""

    pool: str | None = Field(None, description="inventory group to run in, e.g. jetson")
    arch: str | None = Field(None, description="x86_64 or aarch64")
    accelerator: str | None = Field(None, description="e.g. rtx5060, jetson-orin-nano, hailo8, cpu")
    labels: dict[str, str] = Field(default_factory=dict, description="host labels that must match")
    slots: int = Field(1, ge=1, le=64, description="slots the job occupies on its host")

    @field_validator("arch")
    @classmethod
    def _arch(cls, value: str | None) -> str | None:
        if value is not None and value not in ARCHES:
            raise ValueError(f"must be one of {', '.join(ARCHES)}, not {value!r}")
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        return value


class BlobRef(_Strict):
    """A file already uploaded to the controller's blob store."""

    sha256: str
    size: int = Field(ge=0)

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value: str) -> str:
        if not SHA256_RE.match(value):
            raise ValueError("must be 64 lowercase hex digits")
        return value


class InputRef(_Strict):
    """An input after upload: a file (one entry in ``files``) or a directory tree."""

    kind: str = Field("file", pattern="^(file|dir)$")
    filename: str = Field(description="the file's or directory's base name")
    files: dict[str, BlobRef] = Field(description="relative path -> blob")

    @field_validator("filename")
    @classmethod
    def _filename(cls, value: str) -> str:
        if not value or "/" in value or value in {".", ".."} or "\x00" in value:
            raise ValueError(f"{value!r} is not a plain file name")
        return value

    @field_validator("files")
    @classmethod
    def _paths(cls, value: dict[str, BlobRef]) -> dict[str, BlobRef]:
        for rel in value:
            parts = rel.split("/")
            if not rel or rel.startswith("/") or any(p in {"", ".", ".."} for p in parts) or "\x00" in rel:
                raise ValueError(f"path {rel!r} would leave the input directory")
        return value

    def host_path(self, name: str) -> str:
        """Where the input lands, relative to the attempt directory."""
        return f"inputs/{name}/{self.filename}" if self.kind == "file" else f"inputs/{name}"


class SecretValue(_Strict):
    value: str
    secret: bool = True


class Hooks(_Strict):
    before: str | None = None
    after: str | None = None


class Retries(_Strict):
    infra: int = Field(2, ge=0, le=10, description="retries after host/infrastructure failures")
    exit_nonzero: int = Field(0, ge=0, le=10, description="retries after the job's own failures")


class JobSpec(_Strict):
    """A validated job spec. ``inputs`` hold local paths before upload, ``InputRef`` after."""

    name: str
    kind: JobKind = JobKind.SHELL
    runner: str | None = None
    resources: Resources = Field(default_factory=Resources)
    inputs: dict[str, str | InputRef] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    setup: str | None = None
    run: str | None = None
    envs: dict[str, str | SecretValue] = Field(default_factory=dict)
    timeout: float | None = Field(None, description="seconds (or '10m', '2h'); enforced on the host")
    queue_timeout: float | None = Field(
        None, description="longest wait in the queue (seconds or '10m'); past it the job ends "
                          "FAILED with reason no_capacity and the why")
    retries: Retries = Field(default_factory=Retries)
    priority: int = Field(500, ge=1, le=1000)
    outputs: list[str] = Field(default_factory=list)
    hooks: Hooks | None = None
    burst: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(
                "must start with a letter or digit and hold only letters, digits, '.', '_', '-' "
                "(at most 128 characters)"
            )
        return value

    @field_validator("run", "setup", mode="before")
    @classmethod
    def _command(cls, value: Any) -> Any:
        if isinstance(value, (bool, int, float)):
            shown = str(value).lower() if isinstance(value, bool) else str(value)
            raise ValueError(f"must be a string; YAML read {shown} as a {type(value).__name__}: quote it")
        return value

    @field_validator("timeout", "queue_timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @field_validator("retries", mode="before")
    @classmethod
    def _retries(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return {"infra": value}
        return value

    @field_validator("envs", mode="before")
    @classmethod
    def _envs(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out: dict[str, Any] = {}
        for key, val in value.items():
            key = str(key)
            if not ENV_RE.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if key.startswith("FLEET_"):
                raise ValueError(f"{key!r}: names starting with FLEET_ are set by fleet")
            if isinstance(val, (int, float)) and not isinstance(val, bool):
                val = str(val)
            out[key] = val
        return out

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not INPUT_NAME_RE.match(key):
                raise ValueError(f"{key!r} is not a valid input name (letters, digits, '_.-')")
        return value

    @model_validator(mode="after")
    def _kind_rules(self) -> JobSpec:
        if self.runner is None:
            if self.kind is not JobKind.SHELL:
                raise ValueError(f"runner: required for kind {self.kind.value} (e.g. onnxruntime)")
            self.runner = "shell"
        if self.runner == "shell" and not self.run:
            raise ValueError("run: required for shell jobs (the command to run)")
        if self.runner != "shell" and self.run:
            raise ValueError(f"run: only shell jobs take a command; runner {self.runner} does not")
        return self

    def uploaded(self) -> dict[str, InputRef]:
        """The inputs as uploaded refs; raises SpecError if some are still local paths."""
        bad = [k for k, v in self.inputs.items() if not isinstance(v, InputRef)]
        if bad:
            raise SpecError([(f"inputs.{k}", "not uploaded (submit it through the CLI)") for k in bad])
        return {k: v for k, v in self.inputs.items() if isinstance(v, InputRef)}


_UNION_TAGS = {"str", "constrained-str", "SecretValue", "InputRef", "int", "float", "bool"}


def format_validation_error(exc: ValidationError) -> list[tuple[str, str]]:
    """``(field.path, problem)`` pairs from a pydantic error, in words a user understands."""
    errors: list[tuple[str, str]] = []
    for err in exc.errors():
        # pydantic puts union member tags in the path; keep the user's field names only.
        loc = [str(p) for p in err["loc"] if str(p) not in _UNION_TAGS and "[" not in str(p)]
        field = ".".join(loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if ": " in msg and not field and msg.split(": ", 1)[0].isidentifier():
            field, msg = msg.split(": ", 1)
        errors.append((field, msg))
    # A union failing on every member repeats the field; keep the first problem per field.
    seen: dict[str, str] = {}
    for fld, msg in errors:
        seen.setdefault(fld, msg)
    return list(seen.items())


def validate_spec(data: Any, source: str | None = None) -> JobSpec:
    """Validate a parsed spec; raises SpecError naming each bad field."""
    if not isinstance(data, dict):
        raise SpecError([("", f"expected a mapping of fields, got {type(data).__name__}")], source)
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc), source) from None


def load_spec(text: str, source: str | None = None) -> JobSpec:
    """Parse YAML text into a JobSpec; raises SpecError."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError([("", f"not valid YAML: {exc}")], source) from None
    return validate_spec(data, source)

