"""``streamrecon pipelines``: the pipelines a host serves, by the name ``--pipeline`` takes."""
from __future__ import annotations

import argparse
from pathlib import Path

from .pipeline_config import pipeline_names, pipeline_summary
from .cli_help import HelpFormatter


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="streamrecon pipelines", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--pipelines", type=Path, action="append", default=[],
                   help="extra pipeline folder, as given to `streamrecon serve --pipelines`")
    args = p.parse_args(argv)
    names = pipeline_names(args.pipelines)
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name.ljust(width)}  {pipeline_summary(name, args.pipelines)}")
    return 0
