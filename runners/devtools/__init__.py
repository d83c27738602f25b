"""Parsers for what device tools print (stdlib only, Python >= 3.8).

Each module reads one tool's documented output format and returns plain JSON-able dicts in
which anything the text does not show is simply absent:

* ``trtexec``     TensorRT's trtexec (banner, device block, performance summary, warnings)
* ``tegrastats``  Jetson tegrastats lines (RAM, CPU, GPU load, temperatures, power rails)
* ``hailo``       hailortcli benchmark / run / fw-control identify / parse-hef / --version
* ``nvidia``      nvidia-smi queries, /etc/nv_tegra_release, nvpmodel -q, jetson_clocks --show
* ``ortperf``     onnxruntime_perf_test
* ``importers``   one entry point, ``parse_file(fmt, text)``, giving a partial result record

Runner scripts import these on device hosts as ``devtools.<module>`` (the bundle root
``runners/`` on sys.path); the controller imports them as ``fleet_runners.devtools.<module>``.
Modules therefore use relative imports only and never import fleet.
"""
