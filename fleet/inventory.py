"""Ansible inventory -> ``Host`` records (DESIGN.md §5.1).

Inventories are loaded by Ansible's own code (``InventoryManager`` + ``VariableManager``), so
INI, YAML, directories with group_vars/host_vars and inventory plugins all work. Every invalid
fleet variable is an ``InventoryError`` naming the host, the variable and the file (and line)
it came from. With no inventory configured, ``embedded_inventory()`` is this machine alone.
"""

from __future__ import annotations

import builtins
import getpass
import os
import platform
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.errors import InventoryError

ARCH_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
SSH_CONNECTIONS = {None, "ssh", "smart", "paramiko", "paramiko_ssh", "ansible.builtin.ssh"}
LOCAL_CONNECTIONS = {"local", "ansible.builtin.local"}
EMBEDDED_POOL = "local"
UNKNOWN_ARCH = "unknown"


@dataclass(frozen=True)
class Jump:
    """A ProxyJump hop: ``[user@]host[:port]``; ``host`` may name an inventory host."""

    host: str
    port: int | None = None
    user: str | None = None

    @classmethod
    def parse(cls, spec: str) -> Jump:
        user, _, rest = spec.rpartition("@")
        host, port = rest, None
        if rest.startswith("["):  # [ipv6]:port
            host, _, tail = rest[1:].partition("]")
            port = int(tail[1:]) if tail.startswith(":") else None
        elif rest.count(":") == 1:
            host, port_s = rest.split(":")
            port = int(port_s)
        if not host:
            raise ValueError(f"empty host in {spec!r}")
        return cls(host=host, port=port, user=user or None)


@dataclass(frozen=True)
class Host:
    """One schedulable machine. ``device_class`` is ``arch/accelerator``."""

    name: str
    pools: tuple[str, ...]
    arch: str
    accelerator: str
    slots: int
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    connection: str = "ssh"  # "ssh" or "local"
    address: str = ""
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    jumps: tuple[Jump, ...] = ()
    workdir: str = "~/.fleet"
    python: str = "python3"
    source: str = ""
    schedulable: bool = True  # fleet_jobs=false: a jump host or gateway that runs no jobs
    # fleet_isolation: none (one account) | user (one per fleet user) | container (one per fleet
    # user, and every job in a container of its own: the spec's image or fleet_container_image)
    isolation: str = "none"
    job_user: str | None = None  # fleet_job_user: the account other users' jobs run as
    env_keep: tuple[str, ...] = ()  # fleet_env_keep: host variables jobs keep (names, NAME_*)
    container_engine: str | None = None  # fleet_container_engine: docker | podman (jobs with image:)
    container_runtime: str | None = None  # fleet_container_runtime: the OCI runtime, e.g. runc
    container_args: tuple[str, ...] = ()  # fleet_container_args: more flags for every container
    container_root: str | None = None  # fleet_container_root: podman's storage root for fleet (--root)
    container_image: str | None = None  # fleet_container_image: jobs without image: run in it (a pool's default)
    # Which backend runs its attempts ("ssh" for the inventory's hosts). An elastic host is a
    # backend's pool (cloud burst): ``slots`` is its limit, it starts capacity on demand after
    # ``startup_latency`` seconds at ``cost`` per slot-hour, and takes only burst jobs.
    backend: str = "ssh"
    elastic: bool = False
    startup_latency: float = 0.0
    cost: float = 0.0
    # Hosts of one backend that share a limit (e.g. a cluster's max pods over its device
    # classes): ``group`` names it, ``group_slots`` is the limit (each member says it).
    group: str | None = None
    group_slots: int = 0

    @property
    def needs_root(self) -> bool:
        """Whether the agent must run as root here (to run jobs as other accounts)."""
        return self.isolation in ACCOUNT_ISOLATIONS or self.job_user is not None

    @property
    def device_class(self) -> str:
        return f"{self.arch}/{self.accelerator}"

    @property
    def target(self) -> str:
        """Human-readable connection target, e.g. ``root@10.0.0.5:22 via bastion``."""
        if self.elastic:
            return f"{self.backend} pool (elastic, up to {self.slots})"
        if self.connection == "local":
            return "local"
        user = f"{self.user}@" if self.user else ""
        via = f" via {','.join(j.host for j in self.jumps)}" if self.jumps else ""
        return f"{user}{self.address}:{self.port}{via}"


ISOLATIONS = ("none", "user", "container")
ACCOUNT_ISOLATIONS = ("user", "container")  # each fleet user's jobs run as an account of their own
CONTAINER_ENGINES = ("docker", "podman")
# A container image: a runner image's name or a registry reference ([host[:port]/]path[:tag]
# [@sha256:digest], the distribution grammar), never an engine transport such as
# docker-archive:, oci: or dir: (the engine, as root, would read the host's files by those).
_IMG_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMG_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]{1,5})?"
IMAGE_TRANSPORTS = ("docker", "docker-archive", "docker-daemon", "oci", "oci-archive", "dir",
                    "containers-storage", "ostree", "sif", "tarball", "atomic")
IMAGE_RE = re.compile(
    rf"^(?=.{{1,255}}$)(?!(?:{'|'.join(map(re.escape, IMAGE_TRANSPORTS))}):)"
    rf"(?:{_IMG_HOST}/)?{_IMG_PART}(?:/{_IMG_PART})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@sha256:[0-9a-f]{{64}})?$")
UNIX_NAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
ENV_KEEP_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\*?$")


def unix_account(user: str) -> str:
    """The Unix account a fleet user's jobs run as on a host with ``isolation: user``:
    ``fleet-<user>`` when the name is a plain lowercase account name, else a name with a hash
    of the user's, so two fleet users (``Bob``, ``bob``) never share an account."""
    if UNIX_NAME_RE.match(user) and len(user) <= 26:
        return f"fleet-{user}"
    import hashlib

    stem = re.sub(r"[^a-z0-9_-]", "", user.lower())[:16] or "u"
    return f"fleet-{stem}-{hashlib.sha256(user.encode()).hexdigest()[:8]}"


def local_arch() -> str:
    return ARCH_ALIASES.get(platform.machine().lower(), platform.machine().lower())


def embedded_inventory(workdir: Path) -> list[Host]:
    """The built-in inventory: this machine, ``ansible_connection=local``, accelerator cpu."""
    return [
        Host(
            name="localhost",
            pools=(EMBEDDED_POOL,),
            arch=local_arch(),
            accelerator="cpu",
            slots=1,
            connection="local",
            address="127.0.0.1",
            user=getpass.getuser(),
            workdir=str(workdir),
            python=_local_python(),
            source="<embedded default>",
        )
    ]


def _local_python() -> str:
    """The interpreter for runners on the controller's own machine: the one running fleet."""
    import sys

    return sys.executable or "python3"


def load_inventory(source: str, local_workdir: Path) -> list[Host]:
    """Load hosts from an Ansible inventory source (file, directory or plugin config).

    Blocks (Ansible parses synchronously; ~0.2 s per 1,000 hosts after import).

    Raises:
        InventoryError: the source is missing or unparsable, or a host has an invalid fleet var.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise InventoryError(f"inventory {source}: no such file or directory")
    if path.is_file() and path.suffix in (".yml", ".yaml"):
        # Ansible would fall back to the INI parser and report its complaint ("Invalid host
        # pattern"); the YAML error is the one that helps.
        import yaml

        try:
            with path.open() as fh:
                yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise InventoryError(f"inventory {source}: not valid YAML: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InventoryError(f"inventory {source}: cannot read it: {exc}") from None
    # Ansible only warns about sources it cannot parse; make that an error we can report. Its
    # settings are read when its modules load; the environment is put back afterwards, so
    # the ansible-playbook runs this process starts later do not inherit them.
    settings = {"ANSIBLE_INVENTORY_UNPARSED_FAILED": "True", "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "True",
                "ANSIBLE_LOCALHOST_WARNING": "False", "ANSIBLE_DEPRECATION_WARNINGS": "False"}
    added = [k for k in settings if k not in os.environ]
    os.environ.update({k: settings[k] for k in added})
    try:
        return _load(path, source, local_workdir)
    finally:
        for key in added:
            os.environ.pop(key, None)


def _load(path: Path, source: str, local_workdir: Path) -> list[Host]:
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar
    from ansible.vars.manager import VariableManager

    _init_ansible_plugins()
    loader = DataLoader()
    try:
        manager = InventoryManager(loader=loader, sources=[str(path)])
        variables = VariableManager(loader=loader, inventory=manager)
        hosts = []
        for ahost in manager.get_hosts():
            hvars = variables.get_vars(host=ahost, include_hostvars=False)
            templar = Templar(loader=loader, variables=hvars)
            groups = tuple(
                sorted(g.name for g in ahost.get_groups() if g.name not in {"all", "ungrouped"})
            )
            hosts.append(_host_from_vars(ahost.name, groups, hvars, templar, str(path), local_workdir))
    except AnsibleError as exc:
        raise InventoryError(f"inventory {source}: {exc.message}") from None
    if not hosts:
        raise InventoryError(f"inventory {source}: no hosts found")
    for host in hosts:
        for jump in host.jumps:
            if jump.host == host.name:
                raise InventoryError(f"host {host.name}: ansible_ssh_common_args: ProxyJump to itself")
    return hosts


_plugins_ready = False


def _init_ansible_plugins() -> None:
    """Install Ansible's collection loader once, as its CLIs do, so inventory plugins named by
    FQCN (``plugin: ansible.builtin.generator``, ``amazon.aws.aws_ec2``) load in-process."""
    global _plugins_ready
    if _plugins_ready:
        return
    from ansible.plugins.loader import init_plugin_loader

    init_plugin_loader()
    _plugins_ready = True


def _origin(value: Any, fallback: str) -> str:
    """File (and line) an inventory value came from, via Ansible's data tags when available."""
    try:
        from ansible._internal._datatag._tags import Origin

        tag = Origin.get_tag(value)
        if tag is not None:
            return str(tag)
    except Exception:  # noqa: BLE001 - private API; fall back to the source path
        pass
    return fallback


def _kind(value: Any) -> str:
    """A value's type as a user reads it (Ansible hands over its own tagged str subclasses)."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, str):
        return f"the text {str(value)[:40]!r}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "nothing" if value is None else "a value of another kind"


class _Vars:
    """Typed reads of one host's variables, with errors naming host, variable and file."""

    def __init__(self, name: str, hvars: dict[str, Any], templar: Any, source: str) -> None:
        self.name, self.hvars, self.templar, self.source = name, hvars, templar, source

    def error(self, var: str, problem: str) -> InventoryError:
        where = _origin(self.hvars.get(var), self.source)
        return InventoryError(f"host {self.name}: variable {var} {problem} (in {where})")

    def raw(self, var: str) -> Any:
        value = self.hvars.get(var)
        if isinstance(value, str) and "{{" in value:
            try:
                value = self.templar.template(value)
            except Exception as exc:  # noqa: BLE001 - any templating failure is the user's input
                raise self.error(var, f"cannot be templated: {exc}") from None
        return value

    def str(self, var: str, default: str | None = None) -> str | None:
        value = self.raw(var)
        if value is None:
            return default
        if isinstance(value, (dict, list)):
            raise self.error(var, f"must be a string, not {_kind(value)}")
        return str(value)

    def int(self, var: builtins.str, default: builtins.int, minimum: builtins.int = 1) -> builtins.int:
        value = self.raw(var)
        if value is None:
            return default
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            number = int(str(value).strip())
        except ValueError:
            raise self.error(var, f"must be an integer, not {str(value)!r}") from None
        if number < minimum:
            raise self.error(var, f"must be at least {minimum}, not {number}")
        return number


def _host_from_vars(
    name: str,
    groups: tuple[str, ...],
    hvars: dict[str, Any],
    templar: Any,
    source: str,
    local_workdir: Path,
) -> Host:
    v = _Vars(name, hvars, templar, source)
    connection = v.str("ansible_connection")
    if connection in LOCAL_CONNECTIONS:
        kind = "local"
    elif connection in SSH_CONNECTIONS:
        kind = "ssh"
    else:
        raise v.error("ansible_connection", f"is {connection!r}; fleet runs jobs over ssh or local")

    arch_raw = v.str("fleet_arch")
    if arch_raw is None:
        arch = local_arch() if kind == "local" else UNKNOWN_ARCH
    else:
        arch = ARCH_ALIASES.get(arch_raw.strip().lower(), "")
        if not arch:
            raise v.error("fleet_arch", f"is {arch_raw!r}; expected x86_64 or aarch64")
    accelerator = (v.str("fleet_accelerator") or "cpu").strip()
    if not accelerator or any(c.isspace() or c == "/" for c in accelerator):
        raise v.error("fleet_accelerator", f"is {accelerator!r}; expected a name like rtx5060")
    slots = v.int("fleet_slots", 1)

    labels_raw = v.raw("fleet_labels")
    if labels_raw is None:
        labels: dict[str, str] = {}
    elif isinstance(labels_raw, dict):
        labels = {str(k): str(val) for k, val in labels_raw.items()}
    else:
        raise v.error("fleet_labels", f"must be a mapping (e.g. {{jetpack: '6.2'}}), not {_kind(labels_raw)}")

    jumps: list[Jump] = []
    for var in ("ansible_ssh_common_args", "ansible_ssh_extra_args"):
        args = v.str(var)
        if not args:
            continue
        try:
            jumps.extend(_jumps_from_args(args))
        except ValueError as exc:
            raise v.error(var, f"has a bad ProxyJump: {exc}") from None

    default_workdir = str(local_workdir) if kind == "local" else "~/.fleet"
    workdir = v.str("fleet_workdir", default_workdir) or default_workdir
    if not (workdir.startswith("/") or workdir.startswith("~/") or workdir == "~"):
        raise v.error("fleet_workdir", f"is {workdir!r}; expected an absolute path or one under ~/")

    python = v.str("ansible_python_interpreter") or ("" if kind == "ssh" else _local_python())
    if not python or python.startswith("auto"):
        python = "python3" if kind == "ssh" else _local_python()

    jobs_raw = v.raw("fleet_jobs")
    if jobs_raw is None:
        schedulable = True
    elif isinstance(jobs_raw, bool):
        schedulable = jobs_raw
    elif str(jobs_raw).strip().lower() in {"true", "yes", "1", "false", "no", "0"}:
        schedulable = str(jobs_raw).strip().lower() in {"true", "yes", "1"}
    else:
        raise v.error("fleet_jobs", f"is {jobs_raw!r}; expected true or false")

    isolation = (v.str("fleet_isolation") or "none").strip().lower()
    if isolation not in ISOLATIONS:
        raise v.error("fleet_isolation", f"is {isolation!r}; expected one of {', '.join(ISOLATIONS)}")
    job_user = v.str("fleet_job_user")
    if job_user is not None and not UNIX_NAME_RE.match(job_user.strip()):
        raise v.error("fleet_job_user", f"is {job_user!r}; expected an account name like fleet-jobs")
    keep_raw = v.raw("fleet_env_keep")
    if keep_raw is None:
        env_keep: tuple[str, ...] = ()
    elif isinstance(keep_raw, (list, tuple)) and all(isinstance(k, str) and ENV_KEEP_RE.match(k) for k in keep_raw):
        env_keep = tuple(keep_raw)
    else:
        raise v.error("fleet_env_keep", f"is {keep_raw!r}; expected a list of variable names "
                                        "(a trailing * keeps every name with that prefix)")
    engine = (v.str("fleet_container_engine") or "").strip().lower() or None
    if engine is not None and engine not in CONTAINER_ENGINES:
        raise v.error("fleet_container_engine", f"is {engine!r}; expected docker or podman")
    runtime = (v.str("fleet_container_runtime") or "").strip() or None
    if runtime is not None and not re.match(r"^[A-Za-z0-9_./-]+$", runtime):
        raise v.error("fleet_container_runtime", f"is {runtime!r}; expected a runtime name like runc")
    args_raw = v.raw("fleet_container_args")
    if args_raw is None:
        container_args: tuple[str, ...] = ()
    elif isinstance(args_raw, str):
        container_args = tuple(shlex.split(args_raw))
    elif isinstance(args_raw, (list, tuple)) and all(isinstance(a, str) for a in args_raw):
        container_args = tuple(args_raw)
    else:
        raise v.error("fleet_container_args", f"is {args_raw!r}; expected a list of flags")
    root = (v.str("fleet_container_root") or "").strip() or None
    if root is not None and (engine != "podman" or not re.match(r"^/[A-Za-z0-9_./-]*$", root) or ".." in root.split("/")):
        raise v.error("fleet_container_root", f"is {root!r}; expected an absolute path, with "
                                              "fleet_container_engine podman (docker's is its daemon's data-root)")
    image = (v.str("fleet_container_image") or "").strip() or None
    if image is not None:
        if engine is None:
            raise v.error("fleet_container_image", "needs fleet_container_engine (docker or podman) on the host")
        if not IMAGE_RE.match(image):
            raise v.error("fleet_container_image", f"is {image!r}; expected an image name or reference "
                                                   "like cpu-ort or registry.example/img:tag")
    if isolation == "container" and engine is None:
        raise v.error("fleet_isolation", "is container, which needs fleet_container_engine (docker or podman)")

    return Host(
        name=name,
        pools=groups,
        arch=arch,
        accelerator=accelerator,
        slots=slots,
        labels=labels,
        connection=kind,
        address=v.str("ansible_host", name) or name,
        port=v.int("ansible_port", 22),
        user=v.str("ansible_user") or (getpass.getuser() if kind == "local" else None),
        key_file=v.str("ansible_ssh_private_key_file"),
        jumps=tuple(jumps),
        workdir=workdir,
        python=python,
        source=_origin(hvars.get("ansible_host") or name, source),
        schedulable=schedulable,
        isolation=isolation,
        job_user=job_user.strip() if job_user else None,
        env_keep=env_keep,
        container_engine=engine,
        container_runtime=runtime,
        container_args=container_args,
        container_image=image,
        container_root=root,
    )


def _jumps_from_args(args: str) -> list[Jump]:
    """ProxyJump hops from OpenSSH arguments: ``-o ProxyJump=a,b``, ``-oProxyJump a``, ``-J a``."""
    words = shlex.split(args)
    specs: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        value: str | None = None
        if word == "-J" and i + 1 < len(words):
            value, i = words[i + 1], i + 1
        elif word.startswith("-J") and len(word) > 2:
            value = word[2:]
        elif word in {"-o"} and i + 1 < len(words):
            opt, i = words[i + 1], i + 1
            value = _proxyjump_option(opt)
        elif word.startswith("-o"):
            value = _proxyjump_option(word[2:])
        if value and value.lower() != "none":
            specs.extend(s for s in value.split(",") if s)
        i += 1
    return [Jump.parse(s) for s in specs]


def _proxyjump_option(opt: str) -> str | None:
    key, sep, value = opt.partition("=")
    if not sep:
        key, _, value = opt.partition(" ")
    return value.strip() if key.strip().lower() == "proxyjump" else None


def pools_of(hosts: list[Host]) -> dict[str, list[Host]]:
    """Hosts by pool (inventory group), pools sorted by name."""
    out: dict[str, list[Host]] = {}
    for host in hosts:
        for pool in host.pools:
            out.setdefault(pool, []).append(host)
    return dict(sorted(out.items()))
