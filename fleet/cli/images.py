"""``fleet images``: the runner images of ``images/`` (fleet.images): list them, build them
with podman or buildah."""

from __future__ import annotations

import json

import click

from fleet import images as img
from fleet.cli import render
from fleet.cli.base import cli, handle_errors
from fleet.errors import FleetError
from fleet.inventory import local_arch


@cli.group("images", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def images(ctx: click.Context, as_json: bool) -> None:
    """Runner images: one Containerfile per image under images/ (fleet images build NAME)."""
    if ctx.invoked_subcommand is not None:
        return
    defs = list(img.IMAGES.values())
    if as_json:
        click.echo(json.dumps([{"name": d.name, "purpose": d.purpose, "arches": list(d.arches),
                                "versions": d.args} for d in defs], indent=2))
        return
    click.echo(render.table([[d.name, ",".join(d.arches), " ".join(f"{k}={v}" for k, v in d.args.items()),
                              d.purpose] for d in defs], ["NAME", "ARCH", "VERSIONS", "FOR"]))


def _args(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FleetError(f"--build-arg {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


@images.command("build")
@click.argument("names", nargs=-1)
@click.option("--arch", "arches", multiple=True, type=click.Choice(sorted(img.ARCHES)),
              help="target architecture (repeat for several; default: this machine's)")
@click.option("--base", default=None, help="base image instead of the Containerfile's (e.g. localhost/...)")
@click.option("--build-arg", "build_args", multiple=True, help="KEY=VALUE, e.g. HAILORT_VERSION=4.20.0")
@click.option("--source", default=None, help="fleet source tree to build from (default: this one)")
@click.option("--tool", type=click.Choice(["podman", "buildah"]), default=None, help="default: podman, else buildah")
@click.option("--runtime", default=None, help="OCI runtime for RUN steps (podman --runtime), e.g. runc")
@click.option("--dry-run", is_flag=True, help="print the commands, build nothing")
@handle_errors
def build(names: tuple[str, ...], arches: tuple[str, ...], base: str | None, build_args: tuple[str, ...],
          source: str | None, tool: str | None, runtime: str | None, dry_run: bool) -> None:
    """Build runner images (all of them without NAME), for this machine's architecture unless
    --arch says; other architectures build through qemu-user-static."""
    root = img.source_root(source)
    machine = local_arch()
    wanted = list(names) or list(img.IMAGES)
    args = _args(build_args)
    for name in wanted:
        if name not in img.IMAGES:
            raise FleetError(f"no image named {name!r} (known: {', '.join(sorted(img.IMAGES))})")
        for arch in arches or ([machine] if machine in img.IMAGES[name].arches else [img.IMAGES[name].arches[0]]):
            if dry_run:
                cmd = img.build_command(name, arch, root, tool=tool or "podman", base=base, args=args,
                                        runtime=runtime)
                click.echo(" ".join(cmd))
                continue
            click.echo(f"building {name} for {arch} ...", err=True)
            built = img.build(name, arch, root, base=base, args=args, tool=tool, runtime=runtime)
            click.echo(built)
