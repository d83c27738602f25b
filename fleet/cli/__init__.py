"""The ``fleet`` command: a client of the API only."""
