"""Runner manifests and the bundle of device-side code shipped to hosts.

The ``runners/`` folder (installed as the ``fleet_runners`` package) holds the attempt wrapper
and one folder per runner. The controller never imports it: it reads the manifests and ships
the folder, as a tarball, into ``<workdir>/lib/<hash>/`` on each host, once per content hash.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import importlib.util
import io
import json
import tarfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from fleet.errors import FleetError


@dataclass(frozen=True)
class RunnerManifest:
    name: str
    kinds: tuple[str, ...]
    arch: tuple[str, ...] | None  # None: any
    accelerators: tuple[str, ...] | None
    tools: tuple[str, ...]
    entry: str | None
    params: dict[str, object]
    # Per kind (compile, benchmark): {"arch": [...], "accelerators": [...]} narrowing the above.
    placement: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)

    def param_problems(self, params: dict[str, object]) -> list[tuple[str, str]]:
        """``(params.NAME, problem)`` for params this runner does not take or of the wrong type,
        so a typo fails at submit, not on the host. A runner that declares no params (shell)
        takes any."""
        if not self.params:
            return []
        problems = []
        for key, value in params.items():
            declared = self.params.get(key)
            if not isinstance(declared, dict):
                takes = ", ".join(sorted(self.params))
                problems.append((f"params.{key}", f"runner {self.name} takes no param {key!r} (it takes: {takes})"))
                continue
            kinds = _PARAM_TYPES.get(str(declared.get("type") or ""))
            if value is not None and kinds is not None and (
                    not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
                problems.append((f"params.{key}", f"must be {declared['type']}, not {type(value).__name__}"))
        return problems

    def unsupported(self, arch: str, accelerator: str, kind: str | None = None) -> str | None:
        """Why this runner cannot run on a host, or None if it can. Accelerators may be
        patterns (``rtx*``, ``jetson-*``)."""
        rules = self.placement.get(kind or "", {})
        archs = rules.get("arch", self.arch)
        accels = rules.get("accelerators", self.accelerators)
        what = f"runner {self.name}" + (f" ({kind})" if kind in self.placement else "")
        if archs is not None and arch not in archs:
            return f"{what} does not run on {arch}"
        if accels is not None and not any(fnmatch.fnmatchcase(accelerator, a) for a in accels):
            return f"{what} does not support {accelerator}"
        if self.kinds and kind is not None and kind != "shell" and kind not in self.kinds:
            return f"runner {self.name} does not do {kind} jobs (only {', '.join(self.kinds)})"
        return None


_PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list,),
    "dict": (dict,),
}


def runners_dir() -> Path:
    """The folder holding wrapper.py and the runners (installed package or source tree)."""
    spec = importlib.util.find_spec("fleet_runners")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "runners"


@cache
def manifests() -> dict[str, RunnerManifest]:
    """All runner manifests by name; raises FleetError if one is malformed."""
    out: dict[str, RunnerManifest] = {}
    for path in sorted(runners_dir().glob("*/manifest.json")):
        try:
            data = json.loads(path.read_text())
            out[data["name"]] = RunnerManifest(
                name=data["name"],
                kinds=tuple(data.get("kinds") or ()),
                arch=tuple(data["arch"]) if data.get("arch") else None,
                accelerators=tuple(data["accelerators"]) if data.get("accelerators") else None,
                tools=tuple(data.get("tools") or ()),
                entry=data.get("entry"),
                params=dict(data.get("params") or {}),
                placement={kind: {k: tuple(v) for k, v in rules.items() if v is not None}
                           for kind, rules in (data.get("placement") or {}).items()},
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise FleetError(f"runner manifest {path} is invalid: {exc}") from exc
    return out


@dataclass(frozen=True)
class Bundle:
    """The device-side code as a gzip tarball and its content hash."""

    digest: str
    tarball: bytes


def _bundle_files() -> list[Path]:
    """The files of the bundle, sorted by their relative path as a string (the order the
    host-side check, ``VERIFY_BUNDLE``, hashes them in)."""
    root = runners_dir()
    return sorted(
        (p for p in root.rglob("*")
         if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".pyo"}),
        key=lambda p: p.relative_to(root).as_posix(),
    )


# Run on a host as ``python -S -B -c VERIFY_BUNDLE LIBDIR DIGEST``: exit 0 when the directory
# holds exactly the bundle's files with the bundle's content (the same hash as ``bundle()``),
# 3 when it is missing, 4 when anything differs (a file changed, added, or a link). Stdlib,
# Python >= 3.8. It is sent by the controller, never read from the host it checks.
VERIFY_BUNDLE = """
import hashlib, os, stat, sys
root, want = sys.argv[1], sys.argv[2]
if not os.path.isdir(root):
    sys.exit(3)
rels = []
for base, dirs, names in os.walk(root):
    for name in names + [d for d in dirs if os.path.islink(os.path.join(base, d))]:
        rels.append(os.path.relpath(os.path.join(base, name), root).replace(os.sep, "/"))
digest = hashlib.sha256()
for rel in sorted(rels):
    path = os.path.join(root, rel)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        sys.exit(4)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            sys.exit(4)
        digest.update(rel.encode() + b"\\0" + fh.read() + b"\\0")
sys.exit(0 if digest.hexdigest()[:16] == want else 4)
"""


_building: dict[asyncio.AbstractEventLoop, asyncio.Task[Bundle]] = {}


async def bundle_built() -> Bundle:
    """``bundle()``, built in a thread the first time: 0.3-0.4 s of tar and gzip a process
    spends once, not in one callback of the controller's event loop. Callers that come while
    it is being built wait for that one build (a takeover's first launches on many hosts)."""
    if bundle.cache_info().currsize:
        return bundle()
    loop = asyncio.get_running_loop()
    task = _building.get(loop)
    if task is None:
        task = _building[loop] = loop.create_task(asyncio.to_thread(bundle))
        task.add_done_callback(lambda _t: _building.pop(loop, None))  # built, or failed: asked again
    return await asyncio.shield(task)


@cache
def bundle() -> Bundle:
    """Build (once per process) the tarball of runners/ with a deterministic hash."""
    root = runners_dir()
    files = _bundle_files()
    digest = hashlib.sha256()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for path in files:
            rel = path.relative_to(root).as_posix()
            data = path.read_bytes()
            digest.update(rel.encode() + b"\0" + data + b"\0")
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mode = 0o755 if path.suffix in {".py", ".sh"} else 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return Bundle(digest=digest.hexdigest()[:16], tarball=buf.getvalue())
