"""``streamrecon demo``: the README's main job.

Starts the embedded host on a free loopback port, replays the built-in
beating-heart cine (8 coils, 2 slices, kt-Gaussian 8x) through the KGMgT
pipeline, paced at 36 ms a frame with a GPU and at 400 ms without one (the
CPU network takes about 0.2-0.4 s an image: at scanner pace most
model-series images would be the flagged real-time fallbacks, view-sharing
SENSE, instead; ``--frame-ms 36`` shows exactly that), and prints the image quality of
the KGMgT series against the zero-filled input and the conventional series,
frame latency, and where the images and GIFs were written. Needs no
download and no GPU. The matrix is 96x96 by default so the model keeps up
better on a laptop CPU; ``--matrix 128`` or more where a GPU is present.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from pipelines.cli_help import HelpFormatter
from pipelines.host import StreamHost
from simulator import replay
from simulator.replay import PIPELINE_HELP, pipeline_names


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="streamrecon demo", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--pipeline", default="kgmgt_cine", help=f"{PIPELINE_HELP} (shipped: {pipeline_names()})")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    p.add_argument("--accel", type=float, default=8.0, help="net acceleration, ACS included")
    p.add_argument("--mask", default="kt-gaussian", help="mask family (see `streamrecon replay --help`)")
    p.add_argument("--frame-ms", type=float, default=None,
                   help="frame duration in ms; the stream is paced at it (default 36 with a GPU, 400 without)")
    p.add_argument("--matrix", type=int, default=96, help="phantom matrix size")
    p.add_argument("--frames", type=int, default=20, help="frames per slice")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    if args.frame_ms is None:
        args.frame_ms = 36.0 if torch.cuda.is_available() else 400.0
        if not torch.cuda.is_available():
            print("no GPU: frames paced at 400 ms so the CPU network keeps up (--frame-ms 36 for scanner pace; "
                  "the model then works on the newest frames and the others get view-sharing SENSE, flagged)")

    host = StreamHost("127.0.0.1", 0)
    host.preload_pipelines()
    host.start_background()
    print(f"embedded host listening on 127.0.0.1:{host.port}")
    try:
        return replay.main([
            "cine", "--host", "127.0.0.1", "--port", str(host.port), "--pipeline", args.pipeline,
            "--accel", str(args.accel), "--mask", args.mask, "--order", "realtime", "--frame-ms", str(args.frame_ms),
            "--slices", "2", "--coils", "8", "--matrix", str(args.matrix), "--frames", str(args.frames),
            "--out", str(args.out),
        ])
    finally:
        host.shutdown()
        host.server_close()
