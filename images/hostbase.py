"""Make a base image from this machine's own files, for building runner images where no
registry can be reached (CI here): busybox-static as the shell, this Python's interpreter and
standard library, and the Python packages named (with everything the ELF files among them link
against, found by ldd). Then ``podman import`` makes it an image.

    python images/hostbase.py localhost/fleet-hostbase:py3.11 --packages onnxruntime onnx numpy

It is what ``fleet images build cpu-ort --base localhost/fleet-hostbase:py3.11`` builds on; the
image it gives runs the ONNX Runtime runner the way the registry-based one does. Linux only.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

APPLETS = ["sh", "cat", "echo", "ls", "mkdir", "rm", "cp", "mv", "id", "env", "sleep", "sha256sum", "cut",
           "printf", "test", "[", "true", "false", "head", "tail", "grep", "sed", "tr", "wc", "uname", "date"]
SKIP_STDLIB = {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
               "__pycache__", "config-3.11-x86_64-linux-gnu", "pydoc_data"}


def _requires(dist: str, seen: set[str]) -> None:
    """``dist`` and what it requires (no extras), by distribution name."""
    key = dist.lower().replace("_", "-")
    if key in seen:
        return
    seen.add(key)
    for req in md.distribution(dist).requires or []:
        if ";" in req and "extra" in req.split(";", 1)[1]:
            continue
        name = re.split(r"[ <>=!~;\[(]", req, maxsplit=1)[0]
        try:
            _requires(name, seen)
        except md.PackageNotFoundError:
            continue


def _files_of(dist: str) -> list[Path]:
    d = md.distribution(dist)
    return [Path(d.locate_file(f)).resolve() for f in d.files or []]


def _ldd(path: Path) -> list[str]:
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False


def make_rootfs(root: Path, packages: list[str]) -> None:
    (root / "bin").mkdir(parents=True)
    (root / "tmp").mkdir(mode=0o1777)
    (root / "fleet").mkdir(mode=0o777)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nfleet:x:10001:10001:fleet:/fleet:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nfleet:x:10001:\n")
    busybox = shutil.which("busybox")
    if busybox is None:
        raise SystemExit("hostbase: busybox is needed (apt-get install busybox-static)")
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in APPLETS:
        os.symlink("busybox", root / "bin" / applet)
    prefix = Path(sys.base_prefix)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    dest = root / "usr" / "local"
    (dest / "bin").mkdir(parents=True)
    shutil.copy2(Path(sys.base_prefix) / "bin" / version, dest / "bin" / version)
    os.symlink(version, dest / "bin" / "python3")
    stdlib = Path(sysconfig.get_paths(vars={"installed_base": str(prefix), "base": str(prefix)})["stdlib"])
    shutil.copytree(stdlib, dest / "lib" / version, ignore=lambda d, names: [n for n in names if n in SKIP_STDLIB])
    for lib in (prefix / "lib").glob("libpython*.so*"):
        shutil.copy2(lib, dest / "lib" / lib.name)
    site = dest / "lib" / version / "site-packages"
    site.mkdir()
    wanted: set[str] = set()
    for package in packages:
        _requires(package, wanted)
    for dist in sorted(wanted):
        for path in _files_of(dist):
            if not path.exists() or "__pycache__" in path.parts:
                continue
            for base in sys.path:
                if base and path.is_relative_to(Path(base).resolve()) and "site-packages" in base:
                    rel = path.relative_to(Path(base).resolve())
                    (site / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, site / rel)
                    break
    # every shared library the ELF files link against, at the same path
    elfs = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and _is_elf(p)]
    elfs.append(Path(sys.base_prefix) / "bin" / version)
    libs = {lib for elf in elfs for lib in _ldd(elf)}
    for lib in sorted(libs):
        src = Path(lib)
        target = root / lib.lstrip("/")
        if target.exists() or not src.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src.resolve(), target)
    libdir = dest / "lib"
    (root / "etc" / "ld.so.conf").write_text(f"/{libdir.relative_to(root)}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tag", help="the image's name, e.g. localhost/fleet-hostbase:py3.11")
    parser.add_argument("--packages", nargs="*", default=["onnxruntime", "onnx", "numpy"])
    parser.add_argument("--tool", default="podman")
    parser.add_argument("--tar", default=None, help="also keep the rootfs tarball here")
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "rootfs"
        make_rootfs(root, a.packages)
        tarball = Path(a.tar) if a.tar else Path(tmp) / "rootfs.tar"
        with tarfile.open(tarball, "w") as tar:
            tar.add(root, arcname=".")
        size = tarball.stat().st_size
        subprocess.run([a.tool, "import", "--change", "ENV PATH=/usr/local/bin:/bin",
                        "--change", "ENV LD_LIBRARY_PATH=/usr/local/lib", str(tarball), a.tag],
                       check=True, stdout=subprocess.DEVNULL)
    print(f"{a.tag}: {size / 2**20:.0f} MiB rootfs from this machine's Python {sys.version.split()[0]} "
          f"with {', '.join(a.packages)}")


if __name__ == "__main__":
    main()
