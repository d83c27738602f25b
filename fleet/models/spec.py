"""The job spec: what a user submits (DESIGN.md §5.2).

Close to SkyPilot's task YAML. Every model forbids unknown fields, so a typo is an error that
names the field instead of a setting silently ignored. ``load_spec`` turns YAML text into a
``JobSpec`` or raises ``SpecError`` with ``(field, problem)`` pairs.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from fleet.errors import SpecError
from fleet.inventory import IMAGE_RE
from fleet.models.enums import JobKind

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
INPUT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# A hook of the server's catalog (``fleet hooks``): a bare name; a playbook file has a
# ``.yml``/``.yaml`` suffix or a ``/`` in it.
HOOK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
ARCHES = ("x86_64", "aarch64")
MAX_ARG = 131071  # Linux MAX_ARG_STRLEN (32 pages) less its terminating NUL
MAX_ARGS_TOTAL = 1 << 20  # of ARG_MAX (2 MiB by default), what a job may take: half
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
    if not math.isfinite(seconds):
        raise ValueError("must be a finite number of seconds")
    if seconds <= 0:
        raise ValueError("must be greater than 0")
    return seconds


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# What the job receives exactly as written (env values, secrets, file names, param names):
# surrounding whitespace is part of the value there, not a typo to tidy up.
Verbatim = Annotated[str, StringConstraints(strip_whitespace=False)]


class Resources(_Strict):
    """What the job needs from a host. Jobs with equal resources share one queue."""

    pool: str | None = Field(None, description="inventory group to run in, e.g. jetson")
    arch: str | None = Field(None, description="x86_64 or aarch64")
    accelerator: str | None = Field(None, description="e.g. rtx5060, jetson-orin-nano, hailo8, cpu")
    labels: dict[str, str] = Field(default_factory=dict, description="host labels that must match")
    slots: int = Field(1, ge=1, le=64, description="slots the job occupies on its host")
    requires: list[str] = Field(
        default_factory=list, description="probed host facts, e.g. tensorrt>=10, jetpack>=6 "
                                          "(fleet hosts probe)")

    @field_validator("requires")
    @classmethod
    def _requires(cls, value: list[str]) -> list[str]:
        from fleet.probe import parse_requirement

        for req in value:
            parse_requirement(req)
        return value

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
    filename: Verbatim = Field(description="the file's or directory's base name")
    files: dict[Verbatim, BlobRef] = Field(description="relative path -> blob")

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
        for rel in value:  # a file cannot also be a directory of other files
            for i in range(1, rel.count("/") + 1):
                if rel.rsplit("/", i)[0] in value:
                    raise ValueError(f"path {rel!r} lies under {rel.rsplit('/', i)[0]!r}, which is a file")
        return value

    @model_validator(mode="after")
    def _one_file(self) -> InputRef:
        if not self.files:
            raise ValueError("files: must list at least one file")
        if self.kind == "file" and len(self.files) != 1:
            raise ValueError(f"files: an input of kind file holds exactly one file, not {len(self.files)}")
        return self

    def host_path(self, name: str) -> str:
        """Where the input lands, relative to the attempt directory."""
        return f"inputs/{name}/{self.filename}" if self.kind == "file" else f"inputs/{name}"


class FromRef(_Strict):
    """An input made by another job: ``{job: ID}`` or, in a chain, ``{step: NAME}``, optionally
    naming which of its artifacts (default: the one its runner declared); or ``{artifact: ID}``."""

    job: str | None = Field(None, max_length=64, description="a job id (or unique prefix)")
    step: str | None = Field(None, max_length=128, description="an earlier step of this chain")
    artifact: str | None = Field(None, max_length=1000, description="artifact name (or id alone)")

    @model_validator(mode="after")
    def _one_source(self) -> FromRef:
        if self.job and self.step:
            raise ValueError("give job or step, not both")
        if not (self.job or self.step or self.artifact):
            raise ValueError("needs job, step or artifact")
        return self


class SecretValue(_Strict):
    value: Verbatim
    secret: bool = True


class HookCall(_Strict):
    """A hook from the server's catalog (admins install its playbooks in ``hooks_dir``), with
    the variables the catalog declares for it."""

    hook: str = Field(description="its name in the catalog (fleet hooks)")
    vars: dict[Verbatim, Any] = Field(default_factory=dict, description="values of its declared variables")

    @field_validator("hook")
    @classmethod
    def _hook_name(cls, value: str) -> str:
        if not HOOK_NAME_RE.match(value):
            raise ValueError(f"{value!r} is not a hook name (letters, digits, '_', '-'; "
                             "a playbook file ends in .yml)")
        return value


def _hook_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "file" if "files" in value or "filename" in value else "catalog"
    if isinstance(value, (HookCall, InputRef)):
        return "catalog" if isinstance(value, HookCall) else "file"
    return "path"


HookRef = Annotated[
    Annotated[HookCall, Tag("catalog")] | Annotated[InputRef, Tag("file")] | Annotated[str, Tag("path")],
    Discriminator(_hook_kind),
]


class Hooks(_Strict):
    """Ansible playbooks run on the leased host around the job: a catalog hook by name
    (``reset-power`` or ``{hook: reset-power, vars: {...}}``), or, for admins only, a playbook
    file (a path ending in .yml/.yaml, relative to the spec; the CLI uploads it)."""

    before: HookRef | None = Field(None, description="runs first; its failure ends the job setup_failed")
    after: HookRef | None = Field(None, description="runs after the job, whatever its end")

    @field_validator("before", "after", mode="before")
    @classmethod
    def _catalog_name(cls, value: Any) -> Any:
        if isinstance(value, str) and HOOK_NAME_RE.match(value.strip()):
            return {"hook": value.strip()}
        return value


class Retries(_Strict):
    infra: int = Field(2, ge=0, le=10, description="retries after host/infrastructure failures")
    exit_nonzero: int = Field(0, ge=0, le=10, description="retries after the job's own failures")


class JobSpec(_Strict):
    """A validated job spec. ``inputs`` hold local paths before upload, ``InputRef`` after."""

    name: str
    kind: JobKind = JobKind.SHELL
    runner: str | None = None
    resources: Resources = Field(default_factory=lambda: Resources.model_validate({}))
    inputs: dict[str, str | InputRef | FromRef] = Field(default_factory=dict)
    params: dict[Verbatim, Any] = Field(default_factory=dict)
    setup: str | None = None
    run: str | None = None
    envs: dict[str, Verbatim | SecretValue] = Field(default_factory=dict)
    timeout: float | None = Field(None, description="seconds (or '10m', '2h'); enforced on the host")
    queue_timeout: float | None = Field(
        None, description="longest wait in the queue (seconds or '10m'); past it the job ends "
                          "FAILED with reason no_capacity and the why")
    retries: Retries = Field(default_factory=lambda: Retries.model_validate({}))
    priority: int = Field(500, ge=1, le=1000)
    outputs: list[str] = Field(default_factory=list)
    hooks: Hooks | None = None
    image: str | None = Field(
        None, description="run in this container image: a runner image of images/ by name "
                          "(cpu-ort, cuda-trt10, ...) or a full reference; needs a host with "
                          "fleet_container_engine (or a cloud pool)")
    network: bool = Field(False, description="a container job's network (off unless true)")
    pull: Literal["if-missing", "always", "never"] = Field(
        "if-missing", description="a container job's image: pulled when missing, always, or never")
    burst: Literal["never", "allowed", "only"] = Field(
        "never", description="may the job run on an elastic (cloud) backend: never; allowed, when "
                             "the lab is full past the burst policy; only there (true/false mean "
                             "allowed/never)")
    steps: list[dict[str, Any]] | None = Field(
        None, description="a chain: each step is a job spec that inherits this one's resources, "
                          "params, envs, inputs, timeouts, retries and priority")

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is not None and not IMAGE_RE.match(value):
            raise ValueError("must be an image name or reference like cpu-ort or registry.example/img:tag")
        return value

    @field_validator("burst", mode="before")
    @classmethod
    def _burst(cls, value: Any) -> Any:
        if isinstance(value, bool):  # the first spelling (and specs stored with it)
            return "allowed" if value else "never"
        return value

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
            if key.startswith("FLEET_") and not key.startswith("FLEET_MATRIX_"):
                # (a matrix point's values come as FLEET_MATRIX_<AXIS>, set in its job's envs)
                raise ValueError(f"{key!r}: names starting with FLEET_ are set by fleet")
            if isinstance(val, (int, float)) and not isinstance(val, bool):
                val = str(val)
            secret = val.get("value") if isinstance(val, dict) else None
            if "\x00" in (val if isinstance(val, str) else secret if isinstance(secret, str) else ""):
                raise ValueError(f"{key!r}: environment values must not contain NUL characters")
            out[key] = val
        return out

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not INPUT_NAME_RE.match(key):
                raise ValueError(f"{key!r} is not a valid input name (letters, digits, '_.-')")
        return value

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, value: list[str]) -> list[str]:
        for glob in value:
            parts = glob.split("/")
            if not glob or glob.startswith(("/", "~")) or ".." in parts or "\x00" in glob:
                raise ValueError(f"{glob!r} must be a relative path or glob inside the attempt "
                                 "directory (no '/' or '~' at the start, no '..')")
        return value

    @field_validator("run", "setup", "name")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @model_validator(mode="after")
    def _fits_a_command_line(self) -> JobSpec:
        """``run`` and ``setup`` reach the host as one argument of ``sh -c`` and each env entry
        as one ``NAME=value`` string: Linux refuses any longer than MAX_ARG_STRLEN, and all of
        them together past ARG_MAX. Refused here rather than failing on the host."""
        for field in ("run", "setup"):
            value = getattr(self, field)
            if value is not None and len(value.encode("utf-8", "surrogatepass")) > MAX_ARG:
                raise ValueError(f"{field}: {len(value.encode('utf-8', 'surrogatepass'))} bytes is longer "
                                 f"than one command line argument may be ({MAX_ARG} bytes on Linux); put the "
                                 "commands in a script and pass it as an input")
        total = sum(len((v or "").encode("utf-8", "surrogatepass")) for v in (self.run, self.setup))
        for key, value in self.envs.items():
            text = value.value if isinstance(value, SecretValue) else value
            size = len(key) + 1 + len(text.encode("utf-8", "surrogatepass"))
            if size > MAX_ARG:
                raise ValueError(f"envs: {key} is {size} bytes, longer than one environment entry "
                                 f"may be ({MAX_ARG} bytes on Linux)")
            total += size
        if total > MAX_ARGS_TOTAL:
            raise ValueError(f"run: with setup and envs it is {total} bytes, more than a command line "
                             f"and environment may hold ({MAX_ARGS_TOTAL} bytes)")
        return self

    @model_validator(mode="after")
    def _kind_rules(self) -> JobSpec:
        if self.steps is not None:
            if not self.steps:
                raise ValueError("steps: a chain needs at least one step")
            if self.run or self.runner:
                raise ValueError("steps: a chain's run and runner go in its steps")
            return self
        if self.runner is None:
            if self.kind is not JobKind.SHELL:
                raise ValueError(f"runner: required for kind {self.kind.value} (e.g. onnxruntime)")
            self.runner = "shell"
        if self.runner == "shell" and not self.run:
            raise ValueError("run: required for shell jobs (the command to run)")
        if self.runner != "shell" and self.run:
            raise ValueError(f"run: only shell jobs take a command; runner {self.runner} does not")
        return self

    def refs(self) -> dict[str, FromRef]:
        """Inputs that another job makes (resolved when that job has succeeded)."""
        return {k: v for k, v in self.inputs.items() if isinstance(v, FromRef)}

    def uploaded(self) -> dict[str, InputRef]:
        """The inputs as uploaded refs; raises SpecError if some are still local paths."""
        bad = [k for k, v in self.inputs.items() if isinstance(v, str)]
        bad += [k for k, v in self.inputs.items() if isinstance(v, FromRef)]
        if bad:
            raise SpecError([(f"inputs.{k}", "not uploaded (submit it through the CLI)") for k in bad])
        return {k: v for k, v in self.inputs.items() if isinstance(v, InputRef)}


_UNION_TAGS = {"str", "constrained-str", "SecretValue", "InputRef", "HookCall", "int", "float", "bool",
               "catalog", "file", "path"}


def _part(key: object) -> str:
    """One step of a field path as the user reads it: quoted when it is empty or holds a dot
    (so ``a.b`` is always a path and ``"a.b"`` one key)."""
    text = str(key)
    return json.dumps(text, ensure_ascii=False) if text == "" or "." in text else text


def format_validation_error(exc: ValidationError) -> list[tuple[str, str]]:
    """``(field.path, problem)`` pairs from a pydantic error, in words a user understands."""
    errors: list[tuple[str, str, bool]] = []
    for err in exc.errors():
        # pydantic puts union member tags in the path; keep the user's field names only.
        # An unknown field's own name is the last step and is kept, even if it reads "bool".
        path, own = (err["loc"][:-1], err["loc"][-1:]) if err["type"] == "extra_forbidden" \
            else (err["loc"], ())
        in_union = any(str(p) in _UNION_TAGS or "[" in str(p) for p in path)
        loc = [_part(p) for p in path if str(p) not in _UNION_TAGS and "[" not in str(p)]
        loc += [_part(p) for p in own]
        field = ".".join(loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if ": " in msg and msg.split(": ", 1)[0].isidentifier():
            # A model validator names the field it checks: "run: required for shell jobs".
            sub, msg = msg.split(": ", 1)
            field = f"{field}.{sub}" if field else sub
        mismatch = in_union and err["type"].endswith(("_type", "_parsing"))
        errors.append((field, msg, mismatch))
    # A union whose member fits the shape but has a bad part (inputs.m.filename) also fails
    # on its other members (inputs.m: not a string); the bad part is what the user needs.
    deeper = {f for f, _, _ in errors}
    errors = [e for e in errors
              if not (e[2] and any(d.startswith(e[0] + ".") for d in deeper if e[0]))]
    # A union failing on every member repeats the field; keep the first problem per field.
    seen: dict[str, str] = {}
    for fld, msg, _ in errors:
        seen.setdefault(fld, msg)
    return list(seen.items())


_MAX_DEPTH = 32


def _plain_data_errors(data: Any, path: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """Problems with values JSON cannot carry: YAML dates and binary, NaN, lone surrogates,
    nesting too deep (or a YAML alias pointing at itself). Pydantic checks the rest."""
    if isinstance(data, str):
        try:
            data.encode("utf-8")
        except UnicodeEncodeError:
            return [(path, "holds a character that is not valid unicode (a lone surrogate)")]
        return []
    if data is None or isinstance(data, (bool, int)):
        return []
    if isinstance(data, float):
        return [] if math.isfinite(data) else [(path, f"must be a finite number, not {data}")]
    if isinstance(data, (datetime.date, datetime.datetime)):
        return [(path, f"YAML read {data.isoformat()} as a {type(data).__name__}: quote it")]
    if isinstance(data, (dict, list)):
        if depth >= _MAX_DEPTH:
            return [(path, f"nested more than {_MAX_DEPTH} levels deep")]
        items = data.items() if isinstance(data, dict) else enumerate(data)
        errors: list[tuple[str, str]] = []
        for key, value in items:
            sub = f"{path}.{_part(key)}" if path else _part(key)
            errors += _plain_data_errors(key, sub, depth + 1) if isinstance(key, str) else []
            errors += _plain_data_errors(value, sub, depth + 1)
            if len(errors) >= 20:
                break
        return errors
    kind = "binary data" if isinstance(data, (bytes, bytearray)) else f"a {type(data).__name__}"
    return [(path, f"{kind} cannot be used here (expected text, a number, a list or a mapping)")]


def validate_spec(data: Any, source: str | None = None) -> JobSpec:
    """Validate a parsed spec; raises SpecError naming each bad field."""
    if not isinstance(data, dict):
        raise SpecError([("", f"expected a mapping of fields, got {type(data).__name__}")], source)
    problems = _plain_data_errors(data)
    if problems:
        raise SpecError(problems, source)
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc), source) from None


_INHERITED = ("resources", "params", "envs", "inputs", "timeout", "queue_timeout", "retries",
              "priority", "hooks", "outputs")
_MERGED = ("resources", "params", "envs", "inputs")


def expand_steps(spec: JobSpec, data: dict[str, Any]) -> list[tuple[str, JobSpec, str | None]]:
    """A chain's steps as ``(step name, job spec, step it waits for)``: each step inherits the
    chain's fields (``resources``, ``params``, ``envs`` and ``inputs`` merged key by key) and
    waits for the step its ``{step: ...}`` inputs name, else the one before it. Raises
    SpecError naming ``steps[i].field``."""
    errors: list[tuple[str, str]] = []
    out: list[tuple[str, JobSpec, str | None]] = []
    for i, step in enumerate(spec.steps or []):
        where = f"steps[{i}]"
        if not isinstance(step, dict):
            errors.append((where, "must be a mapping (a job spec)"))
            continue
        if "steps" in step:
            errors.append((f"{where}.steps", "a step cannot have steps of its own"))
            continue
        merged: dict[str, Any] = {k: data[k] for k in _INHERITED if k in data}
        for key, value in step.items():
            if key in _MERGED and isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        step_name = str(step.get("name") or "")
        if not step_name:
            errors.append((f"{where}.name", "required: every step has a name"))
            continue
        merged["name"] = f"{spec.name}.{step_name}"
        try:
            job = validate_spec(merged)
        except SpecError as exc:
            errors.extend((f"{where}.{f}" if f else where, m.replace(f"{spec.name}.", "", 1)
                           if f == "name" else m) for f, m in exc.errors)
            continue
        names = [name for name, _, _ in out]
        if step_name in names:
            errors.append((f"{where}.name", f"step {step_name!r} is named twice"))
            continue
        waits = {ref.step for ref in job.refs().values() if ref.step}
        unknown = sorted(w for w in waits if w not in names)
        if unknown:
            errors.append((f"{where}.inputs", f"no earlier step named {unknown[0]!r} "
                                              f"(steps so far: {', '.join(names) or 'none'})"))
            continue
        if len(waits) > 1 or any(ref.job for ref in job.refs().values()):
            errors.append((f"{where}.inputs", "a step takes artifacts from one earlier step"))
            continue
        after = next(iter(waits)) if waits else (names[-1] if names else None)
        out.append((step_name, job, after))
    if errors:
        raise SpecError(errors)
    return out


def parse_yaml(text: str, source: str | None = None) -> Any:
    """The YAML document in ``text``; raises SpecError if it cannot be read."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError([("", f"not valid YAML: {exc}")], source) from None
    except RecursionError:
        raise SpecError([("", "not valid YAML: nested too deeply")], source) from None
    except Exception as exc:  # noqa: BLE001 - e.g. ValueError for a date like 2024-13-01
        raise SpecError([("", f"not valid YAML: {type(exc).__name__}: {exc}")], source) from None


def load_spec(text: str, source: str | None = None) -> JobSpec:
    """Parse YAML text into a JobSpec; raises SpecError."""
    return validate_spec(parse_yaml(text, source), source)

