"""The burst policy: when a queue's jobs may go to elastic pools (cloud backends). Pure.

A job with ``burst: allowed`` runs on the lab's fixed hosts when one is free. When none is, it
may go to an elastic pool once its queue has waited long enough or grown deep enough::

    burst:                      # config.yaml
      wait: 600                 # the oldest waiting job has waited this long (seconds, '10m')
      depth: 20                 # or more than this many jobs wait (0: depth never bursts)
      rules:                    # first match wins, for a pool or a device class
        - {pool: rtx, wait: 60}
        - {device_class: x86_64/nvidia-t4, depth: 5}

With no policy configured a burstable job bursts as soon as no fixed host can take it (wait 0).
``burst: only`` jobs ignore the policy (the elastic pool is all they may use); ``never`` jobs
never see an elastic pool.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fleet.errors import ConfigError
from fleet.models.spec import parse_duration
from fleet.scheduler.placement import Demand


def _seconds(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, str) else value


class BurstRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pool: str | None = Field(None, description="the pool a job asks for (resources.pool)")
    device_class: str | None = Field(None, description="ARCH/ACCELERATOR a job asks for ('*' for any)")
    wait: float | None = Field(None, ge=0)
    depth: int | None = Field(None, ge=0)

    @field_validator("wait", mode="before")
    @classmethod
    def _wait(cls, value: Any) -> Any:
        return _seconds(value)

    @field_validator("device_class")
    @classmethod
    def _class(cls, value: str | None) -> str | None:
        if value is not None and value.count("/") != 1:
            raise ValueError("must be ARCH/ACCELERATOR, e.g. x86_64/nvidia-t4")
        return value

    def matches(self, demand: Demand) -> bool:
        if self.pool is None and self.device_class is None:
            return True
        if self.pool is not None and demand.pool != self.pool:
            return False
        if self.device_class is not None:
            arch, accelerator = self.device_class.split("/")
            if arch != "*" and demand.arch != arch:
                return False
            if accelerator != "*" and demand.accelerator != accelerator:
                return False
        return True


class BurstPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wait: float = Field(0.0, ge=0, description="seconds the oldest waiting job waits before its queue bursts")
    depth: int = Field(0, ge=0, description="waiting jobs past which a queue bursts (0: off)")
    rules: list[BurstRule] = Field(default_factory=list)

    @field_validator("wait", mode="before")
    @classmethod
    def _wait(cls, value: Any) -> Any:
        return _seconds(value)

    @classmethod
    def load(cls, raw: dict[str, Any], source: str) -> BurstPolicy:
        """The policy from config.yaml's ``burst:``; errors name ``burst.KEY``."""
        try:
            return cls.model_validate(raw or {})
        except ValidationError as exc:
            problems = [f"burst.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
            raise ConfigError(f"{source}: " + "; ".join(problems)) from None

    def limits(self, demand: Demand) -> tuple[float, int]:
        """(wait, depth) for the queue of ``demand``."""
        for rule in self.rules:
            if rule.matches(demand):
                return (self.wait if rule.wait is None else rule.wait,
                        self.depth if rule.depth is None else rule.depth)
        return self.wait, self.depth

    def block(self, demand: Demand, oldest_wait: float, depth: int) -> tuple[str | None, float | None]:
        """Why the queue may not burst yet (None: it may), and in how many seconds it may
        (None: not by waiting alone)."""
        if demand.burst != "allowed":
            return None, None
        wait, depth_limit = self.limits(demand)
        if oldest_wait >= wait or (depth_limit and depth > depth_limit):
            return None, None
        parts = [f"the oldest job has waited {_fmt(oldest_wait)} of {_fmt(wait)}"]
        if depth_limit:
            parts.append(f"{depth} waiting, bursts past {depth_limit}")
        return "may burst, not yet: " + "; ".join(parts), wait - oldest_wait


def _fmt(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
