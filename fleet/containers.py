"""Jobs that run in a container image on a lab host (a spec's ``image:``). Pure.

On a host whose inventory names a container engine (``fleet_container_engine: docker|podman``)
the host agent runs the job's command through the engine instead of directly: the attempt's
supervisor starts a small shell that runs the container and waits for it, so everything the
agent does for any job (the log, the timeout, cancel, the attempt lease, reattach after a
controller crash) holds unchanged. In the container:

* the attempt directory is mounted at ``/fleet/attempt`` and is the working directory; inputs,
  ``result.json`` and outputs are where they always are, relative to it (each of the job's
  inputs in the host's cache, which its links point into, is mounted read-only at its own
  path; the rest of the cache, other jobs' files, is not there);
* the engine runs as the agent; the container as the job's account (``isolation: user`` or
  ``container``: the fleet user's own) or else the agent's uid:gid, with no capabilities and
  no new privileges; the job's variables never reach the engine's environment;
* no network unless the spec says ``network: true``;
* the device its class needs is passed the way the engine takes it (``devices``);
* the image's digest is written to ``image.digest`` and given to the job as
  ``FLEET_IMAGE_DIGEST`` (runners record it in the result's environment: a comparison key);
* TERM (timeout, cancel) stops the container within the grace period (the stop runs in its own
  session, so the KILL after the grace period cannot cut it short); ``--rm`` removes it.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

from fleet import images
from fleet.inventory import Host
from fleet.models.spec import SHA256_RE

MOUNT = "/fleet/attempt"
LIB = "/opt/fleet/lib"  # where runner images carry fleet's runners (images/)
LABEL = "dev.fleet.workdir"  # on every job container: the fleet (its workdir on the host) that made it


def resolve(image: str, host: Host, registry: str | None = None) -> str:
    """An image as a spec names it: a runner image of ``images/`` by name (``cpu-ort``: its
    tag for the host's arch, under ``registry`` when given) or a full reference."""
    if image in images.IMAGES:
        tag = images.tag(image, host.arch)
        return f"{registry.rstrip('/')}/{tag}" if registry else tag
    return image


def engine_words(host: Host) -> list[str]:
    """The engine's command on ``host`` with its global options: podman's OCI runtime
    (``fleet_container_runtime``) and storage root (``fleet_container_root``)."""
    engine = host.container_engine or "podman"
    words = [engine]
    if engine == "podman":
        if host.container_runtime:
            words += ["--runtime", host.container_runtime]
        if host.container_root:
            words += ["--root", host.container_root, "--runroot", runroot(host.container_root)]
    return words


def runroot(root: str) -> str:
    """podman's run-time state for a storage root of fleet's own: on /run (a tmpfs), a short
    path (podman refuses one over 50 characters), one per root."""
    import hashlib

    return f"/run/fleet-podman-{hashlib.sha256(root.encode()).hexdigest()[:12]}"


PIDS_LIMIT = 4096  # processes per container: a fork bomb stays in its container


def limits(host: Host, slots: int, facts: dict[str, Any] | None) -> tuple[str, ...]:
    """A container's share of its host: the job's slots' part of the cores and memory the
    host's probe found (``fleet hosts probe``), and a process limit. A host never probed gets
    the process limit only."""
    out = ["--pids-limit", str(PIDS_LIMIT)]
    share = min(1.0, slots / max(host.slots, 1))
    facts = facts or {}
    cores, memory = facts.get("cores"), facts.get("memory_mb")
    if isinstance(cores, int | float) and cores > 0:
        out += ["--cpus", f"{max(cores * share, 0.01):.2f}"]
    if isinstance(memory, int | float) and memory > 0:
        out += ["--memory", f"{max(int(memory * share), 64)}m"]
    return tuple(out)


def devices(engine: str, device_class: str) -> list[str]:
    """The flags that give a container its class's accelerator."""
    arch, _, accelerator = device_class.partition("/")
    a = accelerator.lower()
    if a.startswith("hailo"):
        return ["--device", "/dev/hailo0"]
    if a.startswith(("jetson", "orin", "xavier")):
        # JetPack: the NVIDIA container runtime (docker); podman through CDI (JetPack 6)
        return ["--runtime", "nvidia"] if engine == "docker" else ["--device", "nvidia.com/gpu=all"]
    if a != "cpu" and arch == "x86_64":
        return ["--gpus", "all"] if engine == "docker" else ["--device", "nvidia.com/gpu=all"]
    return []


# Runs first in the container: the job's variables arrive as FLEET_ENV_<i>=NAME=VALUE (the engine
# never sees their names: see runners/supervisor.py) and are exported here; then the job's command.
PROLOGUE = """i=0
while [ "$i" -lt "${FLEET_ENV_COUNT:-0}" ]; do
  eval "kv=\\${FLEET_ENV_$i}"; unset "FLEET_ENV_$i"; export "$kv"; i=$((i+1))
done
unset FLEET_ENV_COUNT kv i
exec "$@"
"""


def wrap(host: Host, image: str, attempt_id: str, inner: list[str], *, network: bool, grace: float,
         inputs: Sequence[str] = (), limits: Sequence[str] = ()) -> list[str]:
    """The command the agent runs for a job in ``image``: ``sh -c`` running the container.
    ``inputs``: the sha256s of the job's inputs (mounted from the host's cache). The agent's
    supervisor gives the shell ``FLEET_CONTAINER_USER`` (the job's uid:gid) and the job's
    variables as ``FLEET_ENV_<i>``, ``FLEET_ENV_COUNT``."""
    if any(not SHA256_RE.match(sha) for sha in inputs):
        raise ValueError("an input's sha256 is not 64 hex digits")
    q = shlex.quote
    engine = host.container_engine or "podman"
    e = " ".join(q(w) for w in engine_words(host))
    name = f"fleet-{attempt_id.lower()}"
    words = [e, "run", "--rm", "--name", q(name), "--label", q(f"{LABEL}={host.workdir}"),
              # --init: a small init is PID 1 and passes TERM on, so a job never ignores a stop
              # for being PID 1 (where signals without a handler are dropped), and zombies are reaped
              "--init", "--user", '"$FLEET_CONTAINER_USER"', "--cap-drop", "all", "--security-opt", "no-new-privileges",
              "--network", "bridge" if network else "none", "-v", f'"$PWD":{MOUNT}', "-w", MOUNT,
              # inputs are links into the host's cache (<workdir>/cache): each of this job's
              # inputs is mounted there read-only, and nothing else of the cache (other jobs' files)
              *(f'-v "$cache/{sha}:$cache/{sha}:ro"' for sha in sorted(set(inputs))),
              "-e", f"FLEET_ATTEMPT_DIR={MOUNT}", "-e", f"FLEET_RESULT={MOUNT}/result.json",
              "-e", "FLEET_IMAGE_DIGEST", "-e", "FLEET_ENV_COUNT", '"$@"']
    if host.container_runtime and engine == "docker":
        words += ["--runtime", q(host.container_runtime)]
    words += [q(w) for w in [*limits, *devices(engine, host.device_class), *host.container_args]]
    # the image's own ENTRYPOINT does not wrap the job: /bin/sh runs the prologue, then the command
    words += ["--entrypoint", "/bin/sh", q(image), "-c", q(PROLOGUE), "fleet-env", *(q(w) for w in inner)]
    script = f"""
FLEET_IMAGE_DIGEST=$({e} image inspect --format '{{{{.Digest}}}}' {q(image)} 2>/dev/null)
export FLEET_IMAGE_DIGEST
cache=$(cd "$PWD/../../cache" 2>/dev/null && pwd)
printf '%s\\n' "$FLEET_IMAGE_DIGEST" > image.digest
set --
i=0
while [ "$i" -lt "${{FLEET_ENV_COUNT:-0}}" ]; do set -- "$@" -e "FLEET_ENV_$i"; i=$((i+1)); done
# TERM (timeout, cancel): stop the container, from outside this process group so the KILL that
# follows the grace period cannot cut the stop short and leave it running.
trap 'setsid {e} stop -t {max(int(grace) - 1, 0)} {q(name)} >/dev/null 2>&1 &' TERM INT
{" ".join(words)} &
pid=$!
wait $pid; rc=$?
while kill -0 $pid 2>/dev/null; do wait $pid; rc=$?; done
exit $rc
"""
    return ["/bin/sh", "-c", script]


def prepare(host: Host, image: str, pull: str) -> str:
    """The setup phase of a job in ``image`` (on the host, before the container): the image is
    there, or pulled by the pull policy (``if-missing``, ``always``, ``never``) with the
    engine's progress in the job's log. Failing here is ``setup_failed``, saying why."""
    q = shlex.quote
    engine = " ".join(q(w) for w in engine_words(host))
    missing = q(f"fleet: image {image} is not on this host and the job's pull policy is never "
                f"(build it there: fleet images build, or load it)")
    return f"""
if [ {q(pull)} = always ] || ! {engine} image inspect {q(image)} >/dev/null 2>&1; then
  if [ {q(pull)} = never ]; then echo {missing} >&2; exit 125; fi
  echo {q(f"fleet: pulling {image}")}
  {engine} pull {q(image)} || {{ echo {q(f"fleet: cannot pull {image}")} >&2; exit 125; }}
fi
"""


def with_setup(setup: str | None, inner: list[str]) -> list[str]:
    """The spec's own ``setup`` runs in the container too, ahead of the command (its failure
    is then the command's exit status)."""
    if not setup:
        return inner
    return ["/bin/sh", "-c", f'{setup}\nexec "$@"', "fleet-setup", *inner]


def sweep(host: Host, keep: list[str]) -> str:
    """A command that removes fleet's containers on the host whose attempts are not in
    ``keep`` (a crash's leftovers; ``--rm`` removes those that end normally)."""
    q = shlex.quote
    e = " ".join(q(w) for w in engine_words(host))
    kept = " ".join(q(f"fleet-{a.lower()}") for a in keep) or "-"
    mine = q(f"label={LABEL}={host.workdir}")  # this fleet's containers on the host, no one else's
    return (f"for n in $({e} ps -a --filter {mine} --format '{{{{.Names}}}}' 2>/dev/null); do "
            f"case \" {kept} \" in *\" $n \"*) ;; *) {e} rm -f \"$n\" >/dev/null 2>&1 && echo \"$n\";; esac; done")


def inner_argv(argv: list[str] | None, runner: str, entry: str) -> list[str]:
    """The command inside the container: the job's own, or its runner from the image's copy."""
    if argv is not None:
        return argv
    return ["python3", "-B", f"{LIB}/{runner}/{entry}", "job.json"]
