"""The CLI starts in a blink: its path never imports the server's side (SQLAlchemy, sqlmodel,
the scheduler), and `fleet --help` not even the API schemas (bench/cli_start.py times it)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("sqlalchemy", "sqlmodel", "alembic", "fastapi", "uvicorn", "asyncssh", "ansible", "fleet.scheduler",
         "fleet.store", "fleet.models.tables")


def loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_the_cli_and_its_client_never_import_the_server_side():
    mods = loaded_after("import fleet.cli.main, fleet.client, fleet.client.sync, fleet.client.aio, "
                        "fleet.client.specs, fleet.client.discovery, fleet.cli.render")
    assert not {m for m in mods for h in HEAVY if m == h or m.startswith(h + ".")}, sorted(mods)


def test_fleet_help_loads_no_schemas():
    mods = loaded_after("import sys\nsys.argv = ['fleet', '--help']\nfrom fleet.cli.main import cli\n"
                        "try:\n    cli(prog_name='fleet')\nexcept SystemExit:\n    pass")
    assert "fleet.api.schemas" not in mods and "pydantic" not in mods and "yaml" not in mods
