"""``python -m fleet_tui``: the same as ``fleet tui``."""

from fleet.cli.base import cli

cli(["tui"], prog_name="fleet")
