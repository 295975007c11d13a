"""``streamrecon serve --stream``: one ISMRMRD stream on stdin, the results on stdout."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import ismrmrd
from ismrmrd.serialization import ConfigFile, ProtocolDeserializer, ProtocolSerializer

from simulator.acquire import acquisitions
from simulator.header import make_header
from tests.streams import small_cine

ROOT = Path(__file__).resolve().parents[1]


def _run(stdin: bytes) -> tuple[list, int, str]:
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "serve", "--stream", "--log-level", "WARNING"],
                          input=stdin, capture_output=True, timeout=120, cwd=ROOT)
    items = []
    try:
        items = list(ProtocolDeserializer(io.BytesIO(proc.stdout)).deserialize())
    except EOFError:
        pass
    return items, proc.returncode, proc.stderr.decode()


def test_stream_mode_reconstructs_stdin_to_stdout():
    scan = small_cine(slices=1, frames=3, coils=4, ny=16, nx=16)
    buf = io.BytesIO()
    with ProtocolSerializer(buf) as ser:
        ser.serialize(ConfigFile("cine_conventional"))
        ser.serialize(make_header(scan))
        for acq in acquisitions(scan):
            ser.serialize(acq)
    items, code, err = _run(buf.getvalue())
    assert code == 0, err
    images = [i for i in items if isinstance(i, ismrmrd.Image)]
    assert len(images) == 3 and [im.repetition for im in images] == [0, 1, 2]
    assert images[0].data.max() > 0


def test_stream_mode_reports_errors_on_stdout_and_exit_status():
    buf = io.BytesIO()
    ProtocolSerializer(buf).serialize(ConfigFile("does_not_exist"))
    items, code, err = _run(buf.getvalue())
    assert code == 1 and "unknown pipeline 'does_not_exist'" in err
    assert any(isinstance(i, str) and "unknown pipeline" in i for i in items)
