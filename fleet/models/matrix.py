"""A benchmark matrix file (DESIGN.md §5.11): axes × include/exclude × repeat, expanded into
ordinary jobs (one job, or a chain, per point) under one matrix run.

Keys: ``name``, ``axes`` (axis name -> list of values), ``include``/``exclude`` (as GitHub
Actions' matrix: an exclude entry drops every point it matches; an include entry adds its extra
keys to every point it matches without overwriting an axis value, else becomes a point of its
own), ``repeat`` (samples per point, default 5), ``job`` (a job spec) or ``steps`` (a chain),
``schedule`` (cron), ``priority``, ``thresholds``, ``notify``, ``budget`` (a time budget) and
``metrics`` (which to judge).

An axis value reaches the job as ``${{ matrix.NAME }}`` in any string of the template (a string
that is only the expression takes the value's own type: ``batch: ${{ matrix.batch }}`` stays a
number) and as ``FLEET_MATRIX_<NAME>`` in its environment (a key only an include gives is empty
at the other points). ``repeat`` runs the measuring part N times: a job N times, or a chain's
last step N times. A copy waits for the step its ``{step: ...}`` input names, so a compile ->
benchmark chain whose benchmark takes ``{step: compile}`` compiles once and benchmarks N times
side by side; a last step without such an input waits for the step before it, and its copies
run one after another.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from fleet.errors import SpecError
from fleet.models.spec import NAME_RE, _Strict, format_validation_error, parse_duration, parse_yaml

AXIS_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
EXPR_RE = re.compile(r"\$\{\{\s*matrix\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_ANY_EXPR = re.compile(r"\$\{\{(.*?)\}\}")
MAX_POINTS = 2000
MAX_JOBS = 20000
MAX_AXES = 16
MAX_RULES = 256  # include + exclude entries
MIN_SCHEDULE_GAP = 15 * 60.0  # seconds between two runs of a schedule, at least
Scalar = str | int | float | bool


class Notify(_Strict):
    webhook: str = Field(description="a URL that gets a Slack-compatible JSON body when a run ends "
                                     "with regressions")

    @field_validator("webhook")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value


class MatrixSpec(_Strict):
    name: str
    axes: dict[str, list[Scalar]]
    include: list[dict[str, Scalar]] = Field(default_factory=list)
    exclude: list[dict[str, Scalar]] = Field(default_factory=list)
    repeat: int = Field(5, ge=1, le=100, description="samples per point")
    job: dict[str, Any] | None = None
    steps: list[dict[str, Any]] | None = None
    schedule: str | None = Field(None, description="cron (5 fields, UTC), run by the leader")
    priority: int = Field(300, ge=1, le=1000, description="of every job of the run (default "
                                                          "below a plain job's 500)")
    thresholds: dict[str, Any] = Field(default_factory=dict)
    metrics: list[str] | None = Field(None, description="the metrics to judge (default: every one "
                                                       "with a known or declared direction); the "
                                                       "others are reported, not judged")
    notify: Notify | None = None
    budget: float | None = Field(None, description="time budget of a run ('2h'): jobs not started "
                                                   "by then are cancelled, their points missing")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError("must start with a letter or digit and hold only letters, digits, "
                             "'.', '_', '-' (at most 128)")
        return value

    @field_validator("axes")
    @classmethod
    def _axes(cls, axes: dict[str, list[Scalar]]) -> dict[str, list[Scalar]]:
        if not axes:
            raise ValueError("at least one axis (name: [values])")
        if len(axes) > MAX_AXES:
            raise ValueError(f"{len(axes)} axes, at most {MAX_AXES}")
        upper = [n.upper() for n in axes]
        if len(set(upper)) != len(upper):
            raise ValueError("two axes differ only in case: both would be FLEET_MATRIX_" +
                             next(u for u in upper if upper.count(u) > 1))
        total = 1
        for values in axes.values():  # before the product is made: 4^30 points is 676 bytes
            total *= max(len(values), 1)
        if total > MAX_POINTS * 4:
            raise ValueError(f"{total} combinations, at most {MAX_POINTS} points (after exclude)")
        for name, values in axes.items():
            for v in values:
                if isinstance(v, float) and not math.isfinite(v):
                    raise ValueError(f"{name}: {v!r} is not a finite number")
                if isinstance(v, str) and len(v) > 1024:
                    raise ValueError(f"{name}: a value of {len(v)} characters, at most 1024")
            if not AXIS_RE.match(name):
                raise ValueError(f"{name!r}: an axis name is letters, digits and '_', not starting "
                                 "with a digit")
            if not values:
                raise ValueError(f"{name}: an axis needs at least one value")
            if len({_same(v) for v in values}) != len(values):
                raise ValueError(f"{name}: a value is listed twice")
        return axes

    @field_validator("budget", mode="before")
    @classmethod
    def _budget(cls, value: object) -> float | None:
        return None if value is None else parse_duration(value)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from croniter import croniter

        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression of 5 fields "
                             "(minute hour day month weekday), e.g. '0 2 * * *'")
        try:  # valid syntax that never comes ('0 0 31 2 *'), or comes too often
            it = croniter(value, time.time())
            first, second = it.get_next(float), it.get_next(float)
        except Exception:  # noqa: BLE001 - croniter raises its own kinds
            raise ValueError(f"{value!r}: that time never comes") from None
        if second - first < MIN_SCHEDULE_GAP:
            raise ValueError(f"{value!r} runs every {second - first:g} s; at least "
                             f"{MIN_SCHEDULE_GAP / 60:g} minutes between runs")
        return value

    @model_validator(mode="after")
    def _shape(self) -> MatrixSpec:
        if (self.job is None) == (self.steps is None):
            raise ValueError("give the job template as job: (a job spec) or steps: (a chain), one of them")
        if self.steps is not None and not self.steps:
            raise ValueError("steps: a chain needs at least one step")
        if len(self.include) + len(self.exclude) > MAX_RULES:
            raise ValueError(f"{len(self.include) + len(self.exclude)} include/exclude entries, "
                             f"at most {MAX_RULES}")
        for where, entries in (("include", self.include), ("exclude", self.exclude)):
            for i, entry in enumerate(entries):
                for k, v in entry.items():
                    if isinstance(v, float) and not math.isfinite(v):
                        raise ValueError(f"{where}[{i}].{k}: {v!r} is not a finite number")
        for i, entry in enumerate(self.exclude):
            unknown = sorted(k for k in entry if k not in self.axes)
            if unknown:
                raise ValueError(f"exclude[{i}]: {unknown[0]!r} is not an axis "
                                 f"(axes: {', '.join(self.axes)})")
        for i, entry in enumerate(self.include):
            bad = sorted(k for k in entry if not AXIS_RE.match(k))
            if bad:
                raise ValueError(f"include[{i}]: {bad[0]!r} is not a valid name")
        from fleet.regress import Thresholds

        t = {k: v for k, v in self.thresholds.items() if k in Thresholds.__dataclass_fields__}
        Thresholds.from_mapping(t)
        for metric, over in self.thresholds.items():
            if metric in t:
                continue
            if not isinstance(over, dict):
                raise ValueError(f"thresholds.{metric}: a metric's thresholds are a mapping "
                                 f"(e.g. {{min_effect_pct: 5}}); matrix-wide keys: "
                                 f"{', '.join(Thresholds.__dataclass_fields__)}")
            try:
                Thresholds.from_mapping(over)
            except (TypeError, ValueError) as exc:
                raise ValueError(str(exc).replace("thresholds.", f"thresholds.{metric}.")) from None
        return self

    def template(self) -> dict[str, Any]:
        """The job template: ``job``, or a chain named after the matrix."""
        if self.job is not None:
            return dict(self.job)
        return {"name": self.name, "steps": list(self.steps or [])}


def validate_matrix(data: Any, source: str | None = None) -> MatrixSpec:
    """A checked matrix; raises SpecError naming the field (and the file)."""
    if not isinstance(data, dict):
        raise SpecError([("", "a matrix file is a mapping (name, axes, job or steps, ...)")], source)
    try:
        spec = MatrixSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc), source) from None
    points = expand(spec)
    if not points:
        raise SpecError([("exclude", "every point is excluded: nothing to run")], source)
    if len(points) > MAX_POINTS:
        raise SpecError([("axes", f"{len(points)} points, at most {MAX_POINTS}")], source)
    jobs = len(points) * (spec.repeat + max(len(spec.steps or ()), 1) - 1)
    if jobs > MAX_JOBS:
        raise SpecError([("repeat", f"{jobs} jobs in one run, at most {MAX_JOBS}")], source)
    # Every expression names a key some point has (an axis, or an include's extra key).
    keys = set(spec.axes) | {k for entry in spec.include for k in entry}
    for where, text in _strings(spec.template(), "job" if spec.job is not None else "steps"):
        for expr in _ANY_EXPR.findall(text):
            m = EXPR_RE.fullmatch("${{" + expr + "}}")
            if m is None:
                raise SpecError([(where, f"${{{{{expr}}}}}: only ${{{{ matrix.NAME }}}} is known here")], source)
            if m.group(1) not in keys:
                raise SpecError([(where, f"${{{{ matrix.{m.group(1)} }}}}: no axis or include key named "
                                         f"{m.group(1)!r} (known: {', '.join(sorted(keys))})")], source)
    return spec


def load_matrix(text: str, source: str | None = None) -> MatrixSpec:
    return validate_matrix(parse_yaml(text, source), source)


def _strings(value: Any, where: str) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(where, value)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [s for i, v in enumerate(value) for s in _strings(v, f"{where}[{i}]")]
    return []


def _same(value: Scalar) -> str:
    """A value as matching sees it: by type and value (1, 1.0, true and "1" are four values)."""
    return f"{type(value).__name__}:{value!r}"


def _matches(point: dict[str, Scalar], entry: dict[str, Scalar]) -> bool:
    return all(k in point and _same(point[k]) == _same(v) for k, v in entry.items())


def expand(spec: MatrixSpec) -> list[dict[str, Scalar]]:
    """The points, in a stable order: the product of the axes less ``exclude``, with
    ``include`` applied as GitHub Actions does."""
    names = list(spec.axes)
    points = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*spec.axes.values())]
    points = [p for p in points if not any(_matches(p, e) for e in spec.exclude)]
    originals = [dict(p) for p in points]  # an include merges into these only, never into
    extra: list[dict[str, Scalar]] = []    # a point another include added
    for entry in spec.include:
        added = False
        for point, original in zip(points, originals, strict=True):
            # merges if it overwrites no original axis value (added keys may be overwritten)
            if all(_same(original[k]) == _same(v) for k, v in entry.items() if k in original):
                point.update(entry)
                added = True
        if not added:
            extra.append(dict(entry))
    return points + extra


def render(value: Any, point: dict[str, Scalar]) -> Any:
    """``value`` with ``${{ matrix.NAME }}`` replaced by the point's values."""
    if isinstance(value, str):
        whole = EXPR_RE.fullmatch(value.strip())
        if whole is not None:
            return point.get(whole.group(1), "")
        # a key some other point has (an include's) is empty here, as GitHub Actions does
        return EXPR_RE.sub(lambda m: _text(point.get(m.group(1), "")), value)
    if isinstance(value, dict):
        return {k: render(v, point) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, point) for v in value]
    return value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def point_label(point: dict[str, Scalar]) -> str:
    return ", ".join(f"{k}={_text(v)}" for k, v in point.items())


def _slug(point: dict[str, Scalar]) -> str:
    text = "-".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", _text(v)).strip("._-") or "x" for v in point.values())
    return text[:80]


def point_specs(spec: MatrixSpec, point: dict[str, Scalar], index: int,
                uploads: dict[str, Any] | None = None, used: set[str] | None = None,
                ) -> list[tuple[dict[str, Any], list[int | None]]]:
    """The job specs of one point, each with, for every job it becomes (one per step of a
    chain), which sample it is: 1..repeat for the measuring ones, None for the others (a
    compile). A job is repeated as N jobs; a chain as one chain whose last step is repeated."""
    template = spec.template()
    body = render(template, point)
    if not isinstance(body, dict):
        raise SpecError([("job", "must be a mapping (a job spec)")])
    envs = body.get("envs")
    if envs is None or isinstance(envs, dict):
        envs = dict(envs or {})
        for key, value in point.items():
            envs.setdefault(f"FLEET_MATRIX_{key.upper()}", _text(value))
        body["envs"] = envs
    named = template.get("name")
    if isinstance(named, str) and "${{" in named:
        base = str(body.get("name"))
    else:  # the index keeps points apart whose values print alike (1 and "1", "a b" and "a_b")
        base = f"{named or spec.name}.{index}-{_slug(point)}"
    body["name"] = base[:110]
    body.setdefault("priority", spec.priority)
    if uploads:
        _resolve(body, uploads, used)
        for step in body.get("steps") or []:
            if isinstance(step, dict):
                _resolve(step, uploads, used)
    steps = body.get("steps")
    n = spec.repeat
    if isinstance(steps, list) and steps:
        last = steps[-1]
        if n > 1 and isinstance(last, dict):
            name = str(last.get("name") or "run")
            body["steps"] = steps[:-1] + [dict(last, name=f"{name}-{k}") for k in range(1, n + 1)]
            return [(body, [None] * (len(steps) - 1) + list(range(1, n + 1)))]
        return [(body, [None] * (len(steps) - 1) + [1])]
    if n == 1:
        return [(body, [1])]
    return [(dict(body, name=f"{body['name']}.r{k}"), [k]) for k in range(1, n + 1)]


def _resolve(part: dict[str, Any], uploads: dict[str, Any], used: set[str] | None) -> None:
    """Input paths the client uploaded become their blob refs (``used``: the paths that did)."""
    inputs = part.get("inputs")
    if isinstance(inputs, dict):
        for name, value in list(inputs.items()):
            if isinstance(value, str) and value in uploads:
                inputs[name] = uploads[value]
                if used is not None:
                    used.add(value)
