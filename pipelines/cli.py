"""The ``streamrecon`` console script.

Each subcommand lives in the module that owns its work and exposes
``main(argv: list[str]) -> int``. Modules are imported only when their
subcommand runs, so ``streamrecon serve`` never pays for importing torch
and this dispatcher does not tie the packages' import graphs together.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("pipelines.host", "embedded Gadgetron-compatible ISMRMRD stream host"),
    "demo": ("simulator.demo", "start the embedded host, stream the built-in cine, print what came back"),
    "replay": ("simulator.replay", "replay a dataset or phantom as live scanner traffic"),
    "bench": ("simulator.bench", "run a benchmark and print its figures"),
    "train": ("models.training.cli", "train a reconstruction network"),
    "evaluate": ("models.evaluation.cli", "score reconstruction methods against fully sampled references"),
    "infer-server": ("pipelines.inference_service", "long-lived ZeroMQ inference service"),
    "triton-server": ("pipelines.triton_server", "the models on NVIDIA Triton Inference Server (PyTriton)"),
    "pipelines": ("pipelines.listing", "list the pipelines that --pipeline can name"),
    "gadget-server": ("pipelines.gadget_server", "warm gadgets for a real Gadgetron's <external><connect> nodes"),
}


def _usage() -> str:
    lines = ["usage: streamrecon COMMAND [options]", "", "commands:"]
    width = max(len(n) for n in COMMANDS)
    for name, (_, text) in COMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"streamrecon: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            print(f"streamrecon: command {name!r} is not available in this build", file=sys.stderr)
            return 2
        raise
    try:
        return int(module.main(rest) or 0)
    except KeyboardInterrupt:
        # Ctrl-C: a person stopped it; one line, not a traceback from whichever thread was waiting.
        print(f"\nstreamrecon {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
