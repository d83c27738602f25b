"""Device-side code shipped to hosts (installed as ``fleet_runners``). Stdlib only, Python >= 3.8.

Nothing here imports fleet; the controller reads these files and copies them to each host.
"""
