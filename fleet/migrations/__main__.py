"""``python -m fleet.migrations revision -m MESSAGE``: write the next revision (developers).

Builds a throwaway SQLite database at the current head and lets alembic autogenerate what the
models add to it, as ``versions/<next number>_<slug>.py``. ``check`` prints that difference
without writing anything. See the package docstring for the whole procedure.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from alembic import command

from fleet.db import make_engine
from fleet.migrations import config, head, schema_diff, upgrade


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fleet.migrations")
    sub = parser.add_subparsers(dest="cmd", required=True)
    rev = sub.add_parser("revision", help="write the next revision from the models")
    rev.add_argument("-m", "--message", required=True)
    rev.add_argument("--empty", action="store_true", help="no autogenerate (data migrations)")
    sub.add_parser("check", help="print what the models have that the head lacks")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'head.db'}")
        upgrade(engine)
        if args.cmd == "check":
            diff = schema_diff(engine)
            print("\n".join(map(str, diff)) or f"the models match head {head()}")
            raise SystemExit(1 if diff else 0)
        with engine.begin() as conn:
            command.revision(config(conn), message=args.message, autogenerate=not args.empty,
                             rev_id=f"{int(head()) + 1:04d}")
        engine.dispose()


if __name__ == "__main__":
    main()
