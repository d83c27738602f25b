"""Runner images (DESIGN.md §5.12): what each image under ``images/`` is, how it is built, and
the rules that say whether a host can run it. Pure, but for ``build``, which runs podman or
buildah.

The rules that are not a matter of taste:

* **L4T**: a Jetson image is built on one L4T release. An r36.x host (JetPack 6) runs r36
  images of its own minor release (r36.4 host: r36.4.y images); an r35 host (JetPack 5) runs
  any r35 image; across majors nothing runs.
* **HailoRT**: the HailoRT in an image must equal the host's ``hailo_pci`` driver version
  exactly (Hailo refuses a mismatch at run time, after the job has started).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fleet.errors import FleetError

ARCHES = {"x86_64": "linux/amd64", "aarch64": "linux/arm64"}


@dataclass(frozen=True)
class ImageDef:
    name: str
    purpose: str
    arches: tuple[str, ...]
    args: dict[str, str] = field(default_factory=dict)  # build args that name versions (tags)
    tag_arg: str | None = None  # the build arg whose value tags the image (e.g. HAILORT_VERSION)


IMAGES: dict[str, ImageDef] = {i.name: i for i in [
    ImageDef("cpu-ort", "ONNX Runtime on the CPU", ("x86_64", "aarch64"), {"ORT_VERSION": "1.20.1"},
             "ORT_VERSION"),
    ImageDef("cuda-trt8", "x86_64 CUDA 12.2 + TensorRT 8.6", ("x86_64",), {"TRT_VERSION": "8.6"}, "TRT_VERSION"),
    ImageDef("cuda-trt10", "x86_64 CUDA 12.6 + TensorRT 10.7", ("x86_64",), {"TRT_VERSION": "10.7"},
             "TRT_VERSION"),
    ImageDef("jetson-r35", "Jetson, L4T r35 (JetPack 5): TensorRT 8.5", ("aarch64",),
             {"L4T_VERSION": "35.4.1"}, "L4T_VERSION"),
    ImageDef("jetson-r36", "Jetson, L4T r36 (JetPack 6): TensorRT 10.3", ("aarch64",),
             {"L4T_VERSION": "36.4.0"}, "L4T_VERSION"),
    ImageDef("hailo", "Hailo-8: hailortcli, tagged by HailoRT (= the host's hailo_pci driver)",
             ("x86_64", "aarch64"), {"HAILORT_VERSION": "4.20.0"}, "HAILORT_VERSION"),
]}


def _l4t(version: str) -> tuple[int, int] | None:
    m = re.match(r"^r?(\d+)\.(\d+)", str(version).strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def l4t_compatible(host: str, image: str) -> str | None:
    """Why a Jetson host on L4T ``host`` cannot run an image built on L4T ``image`` (None: it
    can). r35: any r35 image; r36 and later: the same minor release."""
    h, i = _l4t(host), _l4t(image)
    if h is None or i is None:
        return f"L4T release unknown (host {host or '?'}, image {image or '?'})"
    if h[0] != i[0]:
        return f"the image is for L4T r{i[0]}, the host runs r{h[0]}.{h[1]}"
    if h[0] >= 36 and h[1] != i[1]:
        return (f"the image is for L4T r{i[0]}.{i[1]}, the host runs r{h[0]}.{h[1]} "
                f"(from r36 on, images match the host's minor release)")
    return None


def hailort_compatible(driver: str, image: str) -> str | None:
    """Why a host whose ``hailo_pci`` driver is ``driver`` cannot run an image with HailoRT
    ``image`` (None: exactly equal, as HailoRT requires)."""
    if not driver:
        return "the host's hailo_pci driver version is unknown (probe the host)"
    if driver.strip() != image.strip():
        return f"the image has HailoRT {image}, the host's hailo_pci driver is {driver} (they must be equal)"
    return None


def refuses(image: str, arch: str, facts: dict[str, object] | None) -> str | None:
    """Why a host (its arch, what its probe found) cannot run ``image`` — a runner image of
    ``images/`` by name; other references are not checked (None)."""
    d = IMAGES.get(image)
    if d is None:
        return None
    if arch not in d.arches:
        return f"image {image} is built for {', '.join(d.arches)}"
    facts = facts or {}
    if image.startswith("jetson-"):
        why = l4t_compatible(str(facts.get("l4t") or ""), d.args["L4T_VERSION"])
        return f"image {image}: {why}" if why else None
    if image == "hailo":
        why = hailort_compatible(str(facts.get("hailo_driver") or facts.get("hailort") or ""),
                                 d.args["HAILORT_VERSION"])
        return f"image {image}: {why}" if why else None
    return None


def for_class(arch: str, accelerator: str) -> str | None:
    """The runner image a device class runs by default (None: no image fits it)."""
    a = accelerator.lower()
    if a == "cpu":
        return "cpu-ort"
    if a.startswith("hailo"):
        return "hailo"
    if a.startswith(("jetson", "orin", "xavier")):
        return "jetson-r36" if arch == "aarch64" else None
    if a.startswith("nvidia") or a.startswith(("rtx", "t4", "l4", "a100", "h100")):
        return "cuda-trt10" if arch == "x86_64" else None
    return None


def tag(name: str, arch: str, args: dict[str, str] | None = None, repo: str = "fleet-runner") -> str:
    d = IMAGES[name]
    values = dict(d.args, **(args or {}))
    version = values.get(d.tag_arg or "", "latest")
    return f"{repo}-{name}:{version}-{arch}"


def build_command(name: str, arch: str, root: Path, *, tool: str, base: str | None = None,
                  args: dict[str, str] | None = None, repo: str = "fleet-runner",
                  runtime: str | None = None) -> list[str]:
    """The podman/buildah command that builds image ``name`` for ``arch`` from the source tree
    ``root`` (the build context: images need ``runners/``)."""
    d = IMAGES.get(name)
    if d is None:
        raise FleetError(f"no image named {name!r} (known: {', '.join(sorted(IMAGES))})")
    if arch not in d.arches:
        raise FleetError(f"image {name} is built for {', '.join(d.arches)}, not {arch}")
    containerfile = root / "images" / name / "Containerfile"
    if not containerfile.exists():
        raise FleetError(f"{containerfile}: missing (build from a fleet source checkout: --source)")
    verb = ["bud"] if Path(tool).name == "buildah" else ["build"]
    cmd = [tool, *verb, "--platform", ARCHES[arch], "-f", str(containerfile), "-t", tag(name, arch, args, repo)]
    if runtime:  # e.g. runc where podman's default crun is missing
        cmd += ["--runtime", runtime]
    values = dict(d.args, **(args or {}))
    if base:
        values["BASE"] = base
        cmd.append("--pull=never" if base.startswith("localhost/") else "--pull=missing")
    for key, value in sorted(values.items()):
        cmd += ["--build-arg", f"{key}={value}"]
    # the image's labels again as OCI manifest annotations (what registries and tools that never
    # pull the config read): runner, tool versions, L4T / HailoRT release
    for key, value in sorted(oci_annotations(containerfile, values).items()):
        cmd += ["--annotation", f"{key}={value}"]
    cmd.append(str(root))
    return cmd


def oci_annotations(containerfile: Path, values: dict[str, str]) -> dict[str, str]:
    """The ``LABEL`` keys of a Containerfile with their values, ``${ARG}`` filled in from the
    build's ``values`` (else the ``ARG`` default); keys whose value ends up empty are left out."""
    text = containerfile.read_text().replace("\\\n", " ")
    env = dict(re.findall(r"^ARG\s+(\w+)=(\S*)", text, re.M))
    env.update(values)
    out: dict[str, str] = {}
    for line in re.findall(r"^LABEL\s+(.*)$", text, re.M):
        for key, raw in re.findall(r'([\w.-]+)="([^"]*)"', line):
            value = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), raw).strip()
            if value:
                out[key] = value
    return out


def source_root(given: str | None = None) -> Path:
    """The fleet source tree images are built from (its ``images/`` and ``runners/``)."""
    if given:
        return Path(given).expanduser().resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "images").is_dir() and (here / "runners").is_dir():
        return here
    raise FleetError("images are built from a fleet source checkout: pass --source DIR")


def builder(prefer: Sequence[str] = ("podman", "buildah")) -> str:
    for tool in prefer:
        path = shutil.which(tool)
        if path:
            return path
    raise FleetError("building images needs podman or buildah (apt-get install podman)")


def build(name: str, arch: str, root: Path, *, base: str | None = None, args: dict[str, str] | None = None,
          repo: str = "fleet-runner", tool: str | None = None, runtime: str | None = None) -> str:
    """Build one image; returns its tag. Its output goes to the terminal as it comes."""
    cmd = build_command(name, arch, root, tool=tool or builder(), base=base, args=args, repo=repo,
                        runtime=runtime)
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0:
        raise FleetError(f"building {name} for {arch} failed (exit {proc.returncode}): {' '.join(cmd)}")
    return tag(name, arch, args, repo)
