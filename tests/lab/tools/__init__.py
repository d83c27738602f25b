"""Stand-ins for the device tools that cannot run in the lab (DESIGN.md §6).

Each ``<tool>.py`` here is a small stdlib-only script (Python >= 3.8) that replays recorded
real output from ``tests/fixtures/tools`` and honours the flags fleet's runners pass;
``_labtool.py`` is what they share. ``tests/lab/homes.py`` installs them on lab hosts.
"""
