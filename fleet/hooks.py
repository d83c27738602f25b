"""The hook catalog: the Ansible playbooks a job may run before and after itself.

A playbook is code, and a hook runs in the controller's own Ansible, so users never send
playbooks: admins install them in ``hooks_dir`` (DESIGN.md §7, as AWX does with job
templates) and a job names one and passes the variables it declares. Each entry is
``NAME.yml`` (or ``.yaml``) with an optional ``NAME.meta.yml`` beside it::

    description: Set the Jetson power mode before a benchmark
    vars:
      power_mode: {type: int, description: nvpmodel mode id, default: 0}
      note: {type: str, required: true}

A hook without a meta file takes no variables. Variable names cannot start with ``ansible_``
or ``fleet_`` (they would change how Ansible connects, or fleet's own variables). The catalog
is read from disk on each use, so an admin's change applies to the next job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fleet.errors import SpecError
from fleet.models.spec import HOOK_NAME_RE, HookCall

TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "list": (list,),
    "dict": (dict,), "any": (object,),
}
_RESERVED = ("ansible_", "fleet_")
MAX_VALUE_BYTES = 64 << 10  # of one variable's value, as YAML


@dataclass(frozen=True)
class HookVar:
    name: str
    type: str = "str"
    description: str = ""
    required: bool = False
    default: Any = None


@dataclass(frozen=True)
class CatalogHook:
    name: str
    playbook: Path
    description: str = ""
    vars: dict[str, HookVar] = field(default_factory=dict)
    error: str | None = None  # a meta file that cannot be read: listed, never run

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "error": self.error,
                "vars": {v.name: {"type": v.type, "description": v.description,
                                  "required": v.required, "default": v.default}
                         for v in self.vars.values()}}


class Catalog:
    """The hooks in one directory. Reading never raises: a missing directory is an empty
    catalog, a broken meta file makes that one hook unusable (``error``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def hooks(self) -> dict[str, CatalogHook]:
        found: dict[str, CatalogHook] = {}
        try:
            paths = sorted(p for p in self.root.iterdir() if p.suffix in (".yml", ".yaml"))
        except OSError:
            return found
        for path in paths:
            name = path.stem
            if name.endswith(".meta") or not HOOK_NAME_RE.match(name) or name in found:
                continue
            if not path.is_file():
                continue
            found[name] = _load(name, path)
        return found

    def get(self, name: str) -> CatalogHook | None:
        return self.hooks().get(name)

    def check(self, call: HookCall, where: str) -> CatalogHook:
        """The catalog hook a job names, with its variables checked. Raises SpecError naming
        ``where`` (``hooks.before``) and the variable."""
        hooks = self.hooks()
        hook = hooks.get(call.hook)
        if hook is None:
            known = ", ".join(sorted(hooks)) or f"none: an admin installs playbooks in {self.root}"
            raise SpecError([(f"{where}.hook", f"no hook named {call.hook!r} in the catalog (known: {known})")])
        if hook.error:
            raise SpecError([(f"{where}.hook", f"hook {call.hook!r} cannot be used: {hook.error}")])
        errors = []
        for key, value in call.vars.items():
            declared = hook.vars.get(key)
            if declared is None:
                takes = ", ".join(sorted(hook.vars)) or "none"
                errors.append((f"{where}.vars.{key}", f"hook {hook.name} declares no such variable "
                                                      f"(it takes: {takes})"))
                continue
            problem = _type_problem(declared, value)
            if problem:
                errors.append((f"{where}.vars.{key}", problem))
        for var in hook.vars.values():
            if var.required and var.name not in call.vars:
                errors.append((f"{where}.vars.{var.name}", f"required by hook {hook.name}"))
        if errors:
            raise SpecError(errors)
        return hook

    def variables(self, hook: CatalogHook, call: HookCall) -> dict[str, Any]:
        """The hook's variables for a run: declared defaults, then the job's values."""
        values = {v.name: v.default for v in hook.vars.values() if v.default is not None}
        values.update({k: v for k, v in call.vars.items() if k in hook.vars})
        return values


def _type_problem(var: HookVar, value: Any) -> str | None:
    kinds = TYPES[var.type]
    if var.type in ("int", "float") and isinstance(value, bool):
        return f"must be {var.type}, not a boolean"
    if not isinstance(value, kinds):
        return f"must be {var.type}, not {type(value).__name__}"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if len(yaml.safe_dump(value)) > MAX_VALUE_BYTES:
        return f"is longer than {MAX_VALUE_BYTES} bytes"
    return None


def _load(name: str, playbook: Path) -> CatalogHook:
    meta_path = next((playbook.with_name(f"{name}.meta{s}") for s in (".yml", ".yaml")
                      if playbook.with_name(f"{name}.meta{s}").is_file()), None)
    if meta_path is None:
        return CatalogHook(name, playbook)
    try:
        meta = yaml.safe_load(meta_path.read_text()) or {}
        if not isinstance(meta, dict):
            raise ValueError("expected a mapping with description and vars")
        unknown = sorted(set(meta) - {"description", "vars"})
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} (known: description, vars)")
        raw_vars = meta.get("vars") or {}
        if not isinstance(raw_vars, dict):
            raise ValueError("vars: expected a mapping of variable name -> {type, description, ...}")
        hook_vars = {}
        for key, spec in raw_vars.items():
            hook_vars[str(key)] = _var(str(key), spec)
        return CatalogHook(name, playbook, str(meta.get("description") or ""), hook_vars)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        return CatalogHook(name, playbook, error=f"{meta_path.name}: {exc}")


def _var(name: str, spec: Any) -> HookVar:
    if not name.isidentifier() or name.startswith(_RESERVED):
        raise ValueError(f"vars.{name}: a variable name is an identifier not starting with "
                         "ansible_ or fleet_")
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ValueError(f"vars.{name}: expected a mapping (type, description, required, default)")
    unknown = sorted(set(spec) - {"type", "description", "required", "default"})
    if unknown:
        raise ValueError(f"vars.{name}: unknown key {unknown[0]!r}")
    kind = str(spec.get("type") or "str")
    if kind not in TYPES:
        raise ValueError(f"vars.{name}.type: one of {', '.join(TYPES)}, not {kind!r}")
    return HookVar(name, kind, str(spec.get("description") or ""), bool(spec.get("required")),
                   spec.get("default"))
