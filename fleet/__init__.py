"""fleet: a job runner for edge-device ML labs.

The controller side: inventory loading, scheduling, SSH execution, the HTTP API and the CLI.
Device-side code lives in the separate ``fleet_runners`` package (the ``runners/`` folder).
"""

__version__ = "0.1.0"
