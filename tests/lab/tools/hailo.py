#!/usr/bin/env python3
# fleet device lab STAND-IN for the Hailo Dataflow Compiler CLI, `hailo` (x86_64 only, not on
# any public index): it compiles nothing. tests/fixtures/tools holds no DFC recording, so it
# replays "[info] ..." lines worded as in public DFC logs and writes fake HAR/HEF files whose
# first line is a JSON header the hailortcli stand-in reads ({"fleet_lab_hef": 1, "arch": ...}).
"""hailo (Dataflow Compiler) stand-in.

  hailo --version
  hailo parser onnx MODEL.onnx [--net-name NAME] [--hw-arch ARCH] [--har-path P]
                   [--start-node-names N...] [--end-node-names N...] [-y]
        -> NAME.har in the current directory (NAME defaults to the model's file stem)
  hailo optimize HAR (--calib-set-path CALIB | --use-random-calib-set) [--hw-arch ARCH]
                 [--output-har-path P] [--model-script F.alls]
        -> NAME_optimized.har; without a calibration option argparse refuses (the real CLI
           requires a calibration set)
  hailo compiler HAR [--hw-arch ARCH] [--output-dir D] [--model-script F.alls]
        -> D/NAME.hef (arch header) and D/NAME_compiled.har; refuses a HAR that is not optimized

Outputs are named after the network (NAME), as the DFC names them, so for the usual chain
``m.onnx -> m.har -> m_optimized.har -> m.hef``. ARCH is one of hailo8, hailo8r, hailo8l,
hailo15h, hailo15m, hailo15l, hailo10h; the HEF header carries it upper-cased.

Flags found in public DFC usage: parser onnx --hw-arch/--har-path/--start-node-names/
--end-node-names, optimize --hw-arch/--calib-set-path/--use-random-calib-set/
--output-har-path. Assumed, not verified: --net-name, -y, --model-script, compiler
--output-dir, the `hailo --version` layout, the exact error texts (an unoptimized HAR given to
the compiler, a missing calibration set) and the "[info]" lines other than "Translation
started/completed on ONNX model", "Saved HAR to:", "Starting Model Optimization", "Model
Optimization is done" and "Using dataset with N entries for calibration".
"""

import argparse
import os
import sys
import time

LAB_HOME = None  # the lab host's HOME: written in when tests/lab/homes.py installs this script
LAB_LIB = None  # the directory of _labtool.py: written in on install
sys.path.insert(0, LAB_LIB or os.path.dirname(os.path.realpath(__file__)))

import _labtool as lab

HOST = lab.host(LAB_HOME)
ARCHS = ("hailo8", "hailo8r", "hailo8l", "hailo15h", "hailo15m", "hailo15l", "hailo10h")


def info(message):
    lab.out("[info] " + message)


def warning(message):
    lab.out("[warning] " + message)


def fail(message):
    lab.out("[error] " + message)
    sys.exit(1)


def elapsed(seconds):
    return f"00:00:{seconds:05.2f}"


def read_har(path, stages):
    if not os.path.isfile(path):
        fail(f"Failed to load HAR: [Errno 2] No such file or directory: '{path}'")
    header = lab.read_header(path, "fleet_lab_har")
    if header is None:
        fail(f"Failed to load HAR: {path} is not a valid Hailo archive")
    if header.get("stage") not in stages:
        if "optimized" in stages and header.get("stage") == "parsed":
            fail("Failed to compile the model: the model is not optimized (quantized); run "
                 "`hailo optimize` first")
        fail("Unexpected HAR state {!r}".format(header.get("stage")))
    return header


def parser_onnx(args):
    model = args.model
    if not os.path.isfile(model):
        fail(f"Failed to parse the model: [Errno 2] No such file or directory: '{model}'")
    name = args.net_name or os.path.splitext(os.path.basename(model))[0]
    sha = lab.sha256_file(model)
    info(f"Translation started on ONNX model {name}")
    info(f"Restored ONNX model {name} (completion time: {elapsed(0.04)})")
    info(f"Extracted ONNXRuntime meta-data for Hailo model (completion time: {elapsed(0.21)})")
    start = args.start_node_names or ["input"]
    info("Start nodes mapped from original model: {}.".format(", ".join(
        f"'{node}': '{name}/input_layer{i + 1}'" for i, node in enumerate(start))))
    end = args.end_node_names or ["output"]
    info("End nodes mapped from original model: {}.".format(", ".join(
        f"'{node}'" for node in end)))
    time.sleep(HOST.run_seconds() / 4)
    info(f"Translation completed on ONNX model {name} (completion time: {elapsed(0.62)})")
    har = args.har_path or f"{name}.har"
    header = {"fleet_lab_har": 1, "stage": "parsed", "net_name": name, "hw_arch": args.hw_arch,
              "onnx_sha256": sha, "dfc": HOST.config["dfc"]}
    lab.write_with_header(har, header)
    info(f"Saved HAR to: {os.path.abspath(har)}")
    return 0


def optimize(args):
    header = read_har(args.har, ("parsed",))
    name = header["net_name"]
    hw_arch = args.hw_arch or header.get("hw_arch") or "hailo8"
    info("Starting Model Optimization")
    warning("Reducing optimization level to 0 (the accuracy won't be optimized and compression "
            "won't be used) because there's no available GPU")
    if args.use_random_calib_set:
        calib, entries = "random", 64
        info("Using a random calibration set (the accuracy of the optimized model is not "
             "representative)")
    else:
        path = args.calib_set_path
        if not os.path.exists(path):
            fail("Failed to load the calibration set: [Errno 2] No such file or directory: "
                 f"'{path}'")
        calib = lab.sha256_file(path) if os.path.isfile(path) else "dir:" + os.path.abspath(path)
        entries = 64
    info(f"Using dataset with {entries} entries for calibration")
    time.sleep(HOST.run_seconds() / 4)
    info("Model Optimization is done")
    out = args.output_har_path or f"{name}_optimized.har"
    header = dict(header, stage="optimized", hw_arch=hw_arch, calib=calib)
    lab.write_with_header(out, header)
    info(f"Saved HAR to: {os.path.abspath(out)}")
    return 0


def compiler(args):
    header = read_har(args.har, ("optimized",))
    name = header["net_name"]
    hw_arch = args.hw_arch or header.get("hw_arch") or "hailo8"
    out_dir = args.output_dir or "."
    if not os.path.isdir(out_dir):
        os.makedirs(out_dir)
    info("Compiling network")
    info("Finding the best partition to contexts...")
    time.sleep(HOST.run_seconds() / 4)
    contexts = 1 + lab.stable_int(header.get("onnx_sha256"), "contexts") % 3
    if contexts == 1:
        info("Successful Mapping (allocation time: 12s)")
    else:
        info(f"Found valid partition to {contexts} contexts")
    info("Successful Compilation (compilation time: 9s)")
    hef_header = {
        "fleet_lab_hef": 1,
        "arch": hw_arch.upper(),
        "net_name": name,
        "dfc": HOST.config["dfc"],
        "onnx_sha256": header.get("onnx_sha256"),
        "calib": header.get("calib"),
        "contexts": contexts,
        "input_shape": "640x640x3",
        "fps_scale": round(0.7 + (lab.stable_int(header.get("onnx_sha256"), "fps") % 800) / 1000.0,
                           3),
    }
    hef = os.path.join(out_dir, f"{name}.hef")
    lab.write_with_header(hef, hef_header, size=16384)
    compiled = os.path.join(out_dir, f"{name}_compiled.har")
    lab.write_with_header(compiled, dict(header, stage="compiled", hw_arch=hw_arch))
    info(f"Compiled HEF saved to: {os.path.abspath(hef)}")
    info(f"Saved HAR to: {os.path.abspath(compiled)}")
    return 0


def arguments():
    parser = argparse.ArgumentParser(prog="hailo")
    parser.add_argument("--version", action="store_true")
    commands = parser.add_subparsers(dest="command")
    parse = commands.add_parser("parser")
    frameworks = parse.add_subparsers(dest="framework")
    onnx = frameworks.add_parser("onnx")
    onnx.add_argument("model")
    onnx.add_argument("--net-name")
    onnx.add_argument("--hw-arch", choices=ARCHS, default="hailo8")
    onnx.add_argument("--har-path")
    onnx.add_argument("--start-node-names", nargs="+")
    onnx.add_argument("--end-node-names", nargs="+")
    onnx.add_argument("-y", action="store_true")
    opt = commands.add_parser("optimize")
    opt.add_argument("har")
    opt.add_argument("--hw-arch", choices=ARCHS)
    calib = opt.add_mutually_exclusive_group(required=True)
    calib.add_argument("--calib-set-path")
    calib.add_argument("--use-random-calib-set", action="store_true")
    opt.add_argument("--output-har-path")
    opt.add_argument("--model-script")
    comp = commands.add_parser("compiler")
    comp.add_argument("har")
    comp.add_argument("--hw-arch", choices=ARCHS)
    comp.add_argument("--output-dir")
    comp.add_argument("--model-script")
    return parser


def main(argv):
    parser = arguments()
    args = parser.parse_args(argv)
    if args.version:
        lab.out("HailoRT v{}".format(HOST.config["hailort"]))
        lab.out("Hailo Dataflow Compiler v{}".format(HOST.config["dfc"]))
        return 0
    if HOST.fails("hailo"):
        lab.out("[error] Failed to initialize the Dataflow Compiler (fleet lab: hailo configured "
                "to fail)")
        return 1
    if args.command == "parser" and args.framework == "onnx":
        return parser_onnx(args)
    if args.command == "optimize":
        return optimize(args)
    if args.command == "compiler":
        return compiler(args)
    parser.print_usage(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
