"""Where fleet keeps its state and how it is configured.

Every path is derived on access from ``FLEET_HOME`` so tests (and users) can redirect it by
setting one environment variable. The optional config file ``$FLEET_HOME/config.yaml`` holds
operator settings; environment variables override it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.errors import ConfigError

CONFIG_KEYS = {
    "inventory": "path of the Ansible inventory (file, directory or plugin config)",
    "server": "URL of a fleet API server to use instead of the local one",
    "database": "SQLAlchemy URL of the state database (default: SQLite under FLEET_HOME)",
    "trust_on_first_use": "accept and record unknown SSH host keys (default false)",
    "ship_images": "images (glob patterns of references) the controller may ship to a host that "
                   "lacks them, besides fleet's runner images (labelled dev.fleet.runner)",
    "keepalive_interval": "seconds between SSH keepalives (default 15)",
    "keepalive_count_max": "unanswered keepalives before a connection is dead (default 3)",
    "connect_timeout": "seconds to wait for an SSH connection (default 15)",
    "command_timeout": "seconds fleet's own commands on a host may take (default 120)",
    "attempt_lease": "seconds a job may run out of touch with the controller before it stops "
                     "itself; a job lost with its host is retried after this (default 60)",
    "log_cap": "bytes kept of one attempt's log: head and tail, with a marker (default 100 MiB)",
    "log_store_limit": "bytes the controller's log store may hold; oldest ended logs go (default 20 GiB)",
    "log_retention_days": "days an ended attempt's log is kept (default 30)",
    "gc_interval": "seconds between retention passes over the log store and hosts (default 300)",
    "webhook_allow_private": "matrix webhooks may call loopback, private and link-local addresses "
                             "(default false: a user's webhook could reach inside the network)",
    "matrix_interval": "seconds between the leader's looks at matrix schedules and time budgets "
                       "(default 30; a run is judged as soon as its last job ends)",
    "host_retention_days": "days an ended attempt's directory (log, raw files) stays on its host "
                           "(default 7)",
    "host_store_limit": "bytes of ended attempt directories a host may keep (default 10 GiB)",
    "artifact_retention_days": "days an artifact is kept unless a waiting job needs it (default 90)",
    "kill_grace": "seconds between TERM and KILL on cancel/timeout (default 10)",
    "leader_lease": "seconds a leader's lease lasts; a follower takes over after it (default 15)",
    "advertise_url": "URL other replicas use to reach this one's API (default: the bound address)",
    "shared_dir": "directory for logs and input blobs shared by all replicas (HA; default FLEET_HOME)",
    "health_check_timeout": "seconds a health check may take before it fails (default 15)",
    "health_bad_after": "failed health checks in a row before a host is quarantined (default 3)",
    "health_recheck_interval": "longest pause between health checks of a bad host (default 30)",
    "health_check_concurrency": "health checks run at once (default 32; the rest wait their turn, "
                                "their timeout not yet running)",
    "hooks_dir": "directory of the hook playbooks jobs may name (fleet hooks; default FLEET_HOME/hooks)",
    "max_request_bytes": "largest request body the API reads, uploads aside (default 16 MiB)",
    "max_spec_bytes": "largest job spec, as JSON (default 1 MiB)",
    "max_upload_bytes": "largest file one upload may be (default 8 GiB)",
    "upload_quota_bytes": "bytes of uploads one user may hold on the server (default 50 GiB)",
    "upload_retention_days": "days an upload is kept once no unfinished job uses it (default 7)",
    "event_retention_days": "days the event stream (GET /events) keeps events to resume from "
                            "(default 7)",
    "burst": "when burstable jobs go to elastic (cloud) pools: {wait, depth, rules: [{pool | "
             "device_class, wait, depth}]} (default: as soon as no fixed host is free)",
    "backends": "execution backends beside the built-in ssh one, with their settings: "
                "{NAME: {...}} (plugins of the fleet.backends entry-point group)",
    "disk_reserve_bytes": "space held back in FLEET_HOME for the database when the disk fills "
                          "(default 32 MiB)",
}


_ATTRS = {"hooks_dir": "hooks_dir_setting"}  # keys whose Settings field is a derived path


def fleet_home() -> Path:
    """The controller's state directory (``FLEET_HOME``, default ``~/.fleet``)."""
    return Path(os.environ.get("FLEET_HOME") or Path.home() / ".fleet").expanduser()


@dataclass
class Settings:
    """Operator settings, read once per process from the config file and the environment."""

    home: Path
    inventory: str | None = None
    server: str | None = None
    database: str | None = None
    trust_on_first_use: bool = False
    keepalive_interval: float = 15.0
    keepalive_count_max: int = 3
    connect_timeout: float = 15.0
    command_timeout: float = 120.0
    attempt_lease: float = 60.0
    kill_grace: float = 10.0
    log_cap: int = 100 << 20
    log_store_limit: int = 20 << 30
    log_retention_days: float = 30.0
    gc_interval: float = 300.0
    matrix_interval: float = 30.0
    webhook_allow_private: bool = False
    host_retention_days: float = 7.0
    host_store_limit: int = 10 << 30
    artifact_retention_days: float = 90.0
    leader_lease: float = 15.0
    advertise_url: str | None = None
    shared_dir: str | None = None
    health_check_timeout: float = 15.0
    health_bad_after: int = 3
    health_recheck_interval: float = 30.0
    health_check_concurrency: int = 32
    hooks_dir_setting: str | None = None
    max_request_bytes: int = 16 << 20
    max_spec_bytes: int = 1 << 20
    max_upload_bytes: int = 8 << 30
    upload_quota_bytes: int = 50 << 30
    upload_retention_days: float = 7.0
    disk_reserve_bytes: int = 32 << 20
    event_retention_days: float = 7.0
    ship_images: list[str] = field(default_factory=list)
    backends: dict[str, Any] = field(default_factory=dict)
    burst: dict[str, Any] = field(default_factory=dict)

    @property
    def config_file(self) -> Path:
        return self.home / "config.yaml"

    @property
    def db_url(self) -> str:
        return self.database or f"sqlite:///{self.home / 'fleet.db'}"

    @property
    def shared(self) -> Path:
        """Where logs and blobs live: shared by all replicas in HA, else FLEET_HOME."""
        return Path(self.shared_dir).expanduser() if self.shared_dir else self.home

    @property
    def logs_dir(self) -> Path:
        return self.shared / "logs"

    @property
    def blobs_dir(self) -> Path:
        return self.shared / "blobs"

    @property
    def secret_key_file(self) -> Path:
        """The key that seals job secrets in the database (made on first use, 0600). Under
        ``shared_dir`` when set, since every replica must open what another one sealed."""
        return self.shared / "secret.key"

    @property
    def hooks_dir(self) -> Path:
        """The hook catalog (admins install playbooks here; see fleet.hooks)."""
        return Path(self.hooks_dir_setting).expanduser() if self.hooks_dir_setting else self.home / "hooks"

    @property
    def known_hosts(self) -> Path:
        return self.home / "known_hosts"

    @property
    def server_file(self) -> Path:
        """JSON file describing the local server (url, pid) while it runs."""
        return self.home / "server.json"

    @property
    def token_file(self) -> Path:
        return self.home / "token"

    @property
    def server_log(self) -> Path:
        return self.home / "server.log"

    @property
    def local_workdir(self) -> Path:
        """Work directory for ``ansible_connection=local`` hosts that set no ``fleet_workdir``."""
        return self.home / "local-host"


def load_settings() -> Settings:
    """Read ``$FLEET_HOME/config.yaml`` and the ``FLEET_*`` environment variables.

    Raises:
        ConfigError: the config file is not a mapping or holds an unknown key or a bad value.
    """
    home = fleet_home()
    settings = Settings(home=home)
    path = settings.config_file
    if path.exists():
        import yaml  # only when there is a config file: the CLI's start stays light

        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
        for key, value in data.items():
            _apply(settings, key, value, source=str(path))
    for key in CONFIG_KEYS:
        env = os.environ.get(f"FLEET_{key.upper()}")
        if env is not None and env != "":
            _apply(settings, key, env, source=f"FLEET_{key.upper()}")
    if settings.inventory and not settings.inventory.startswith(("/", "~")) and path.exists():
        # A relative inventory in the config file is relative to FLEET_HOME.
        candidate = home / settings.inventory
        if candidate.exists():
            settings.inventory = str(candidate)
    return settings


def _apply(settings: Settings, key: str, value: object, source: str) -> None:
    if key not in CONFIG_KEYS:
        known = ", ".join(sorted(CONFIG_KEYS))
        raise ConfigError(f"{source}: unknown setting {key!r} (known: {known})")
    attr = _ATTRS.get(key, key)
    current = getattr(settings, attr)
    try:
        if isinstance(current, list):
            if isinstance(value, str):  # FLEET_SHIP_IMAGES: comma-separated
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ValueError(value)
        elif isinstance(current, dict):
            if isinstance(value, str):  # FLEET_BACKENDS: JSON
                import json

                value = json.loads(value) if value.strip() else {}
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise ValueError(value)
        elif isinstance(current, bool):
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                    raise ValueError(value)
                value = lowered in {"1", "true", "yes", "on"}
            elif not isinstance(value, bool):
                raise ValueError(value)
        elif isinstance(current, float):
            value = float(value)  # type: ignore[arg-type]
            if value <= 0:
                raise ValueError(value)
        elif isinstance(current, int):
            value = int(value)  # type: ignore[call-overload]
            if not isinstance(value, int) or value <= 0:
                raise ValueError(value)
        elif value is not None:
            value = str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: setting {key!r} has a bad value {value!r}") from None
    setattr(settings, attr, value)
