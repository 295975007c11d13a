"""Playing Gadgetron's part for one external Python module.

Gadgetron 4.x runs an ``<external>`` node by listening on a port,
launching ``python -m gadgetron PORT MODULE TARGET``, and, once the module
connects, sending CONFIG (id 2, the node's ``<configuration>`` XML), HEADER
(id 3), the stream's items and CLOSE, while reading back what the module
sends (items, Gadgetron's ERROR id 8, CLOSE). :func:`run_external` does
exactly that with the ``gadgetron`` package's own readers and writers, so
a gadget can be checked (tests) and timed (benchmarks) under the real
external-module runtime without a Gadgetron installation.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import ismrmrd
from gadgetron.external import constants, readers, writers
from gadgetron.types.recon_data import ReconData, read_recon_data, write_recon_data

ROOT = Path(__file__).resolve().parents[2]  # the repository (pipelines/gadgetron/ is two below it)


class _Socket:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.bytes_written = 0

    def read(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError(f"module closed the connection ({len(data)} of {n} bytes)")
            data += chunk
        return bytes(data)

    def write(self, data: Any) -> None:
        data = bytes(data)
        self.sock.sendall(data)
        self.bytes_written += len(data)


def _write_item(dest: _Socket, item: Any) -> None:
    if isinstance(item, ismrmrd.Acquisition):
        writers.write_acquisition(dest, item)
    elif isinstance(item, ismrmrd.Image):
        writers.write_image(dest, item)
    elif isinstance(item, ismrmrd.Waveform):
        writers.write_waveform(dest, item)
    elif isinstance(item, ReconData):
        write_recon_data(dest, item)
    else:
        raise TypeError(f"cannot send {type(item).__name__} to an external module")


_READERS = {
    constants.GADGET_MESSAGE_ISMRMRD_ACQUISITION: readers.read_acquisition,
    constants.GADGET_MESSAGE_ISMRMRD_IMAGE: readers.read_image,
    constants.GADGET_MESSAGE_ISMRMRD_WAVEFORM: readers.read_waveform,
    constants.GADGET_MESSAGE_RECON_DATA: read_recon_data,
}


@dataclass
class ExternalRun:
    items: list = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    returncode: int | None = None
    bytes_sent: int = 0
    seconds: float = 0.0  # from the first item sent to the module's CLOSE
    stderr: str = ""


def run_external(module: str, target: str, config: ET.Element | None, header_xml: bytes, items: Iterable,
                 timeout: float = 120.0) -> ExternalRun:
    """Run one external module over ``items`` the way Gadgetron would; collect its answer."""
    run = ExternalRun()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    env = dict(os.environ, GADGETRON_EXTERNAL_LOG_LEVEL=os.environ.get("GADGETRON_EXTERNAL_LOG_LEVEL", "WARNING"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen([sys.executable, "-m", "gadgetron", str(port), module, target], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        listener.settimeout(timeout)
        conn, _ = listener.accept()
    finally:
        listener.close()
    conn.settimeout(timeout)
    dest = _Socket(conn)

    def receive() -> None:
        try:
            while True:
                (mid,) = constants.GadgetMessageIdentifier.unpack(dest.read(2))
                if mid == constants.GADGET_MESSAGE_CLOSE:
                    return
                if mid == constants.GADGET_MESSAGE_ERROR:
                    (n,) = constants.uint64.unpack(dest.read(8))
                    run.errors.append(dest.read(n).decode("utf-8", "replace"))
                elif mid in _READERS:
                    run.items.append(_READERS[mid](dest))
                else:
                    run.errors.append(f"unexpected message id {mid} from the module")
                    return
        except (EOFError, OSError):
            return

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    config_bytes = ET.tostring(config if config is not None else ET.Element("configuration"))
    header_xml = header_xml if isinstance(header_xml, bytes) else header_xml.encode()
    start = time.perf_counter()
    try:
        dest.write(constants.GadgetMessageIdentifier.pack(constants.GADGET_MESSAGE_CONFIG))
        dest.write(constants.uint32.pack(len(config_bytes)) + config_bytes)
        dest.write(constants.GadgetMessageIdentifier.pack(constants.GADGET_MESSAGE_HEADER))
        dest.write(constants.uint32.pack(len(header_xml)) + header_xml)
        for item in items:
            _write_item(dest, item)
        dest.write(constants.GadgetMessageIdentifier.pack(constants.GADGET_MESSAGE_CLOSE))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the module stopped reading (it failed); its answer is still collected
    receiver.join(timeout)
    run.seconds = time.perf_counter() - start
    run.bytes_sent = dest.bytes_written
    conn.close()
    try:
        _, err = proc.communicate(timeout=timeout)
        run.stderr = err.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
    run.returncode = proc.returncode
    return run


def run_pipeline_as_externals(gadgets: list, header_xml: bytes, items: Iterable) -> tuple[list, list[str]]:
    """Every ``<external>`` node in turn, each node's output the next one's input, as Gadgetron chains them."""
    items = list(items)
    for spec in gadgets:
        run = run_external(spec.module, spec.target, spec.config, header_xml, items)
        if run.errors or run.returncode != 0:
            return run.items, run.errors or [f"{spec.label} exited with {run.returncode}: {run.stderr[-500:]}"]
        items = run.items
    return items, []
