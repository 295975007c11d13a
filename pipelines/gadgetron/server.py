"""Starting a real Gadgetron 4.x for tests and benchmarks.

Finds an installed Gadgetron (``GADGETRON_PREFIX``, else ``/opt/gadgetron``,
where ``../shared/tools/gadgetron/install.sh`` puts it), gives it a private
home folder whose ``share/gadgetron/config`` holds the project's pipelines
and any others given (the libraries are found through ``LD_LIBRARY_PATH``,
so the installed tree is never written to), and runs it on a free
loopback port with this Python environment first on ``PATH``, the
repository on ``PYTHONPATH`` and a tag in the environment, so the
``python -m gadgetron`` processes it starts for ``<execute>`` nodes can be
found afterwards (:func:`tagged_processes`).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import ismrmrd

from pipelines.processes import ROOT, free_port, stop, wait_port

log = logging.getLogger(__name__)

DEFAULT_PREFIX = Path("/opt/gadgetron")
TAG_VARIABLE = "STREAMRECON_GADGETRON_TAG"


def gadgetron_prefix() -> Path | None:
    """The installed Gadgetron's prefix, or None when there is none."""
    prefix = Path(os.environ.get("GADGETRON_PREFIX", DEFAULT_PREFIX))
    return prefix if (prefix / "bin" / "gadgetron").is_file() else None


def missing_reason() -> str | None:
    """Why a real Gadgetron cannot be run here, or None when it can."""
    prefix = gadgetron_prefix()
    if prefix is None:
        where = os.environ.get("GADGETRON_PREFIX", DEFAULT_PREFIX)
        return (f"no Gadgetron in {where} (install it with ../shared/tools/gadgetron/install.sh {DEFAULT_PREFIX}, "
                f"or set GADGETRON_PREFIX)")
    try:
        subprocess.run([str(prefix / "bin" / "gadgetron"), "--info"], env=_env(prefix, ""), capture_output=True,
                       timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"Gadgetron in {prefix} does not run: {exc}"
    return None


def _env(prefix: Path, tag: str) -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(prefix / "lib"), env.get("LD_LIBRARY_PATH", "")) if p)
    env.setdefault("GADGETRON_EXTERNAL_LOG_LEVEL", "WARNING")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env[TAG_VARIABLE] = tag
    return env


@dataclass
class GadgetronServer:
    """A running Gadgetron; ``port`` is where clients connect, ``log_path`` its log."""

    process: subprocess.Popen
    port: int
    home: Path
    tag: str
    log_path: Path
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def config_dir(self) -> Path:
        return self.home / "share" / "gadgetron" / "config"

    def add_pipeline(self, name: str, xml_text: str) -> str:
        """Make ``xml_text`` available as CONFIG_FILE ``name``; returns the name."""
        (self.config_dir / name).write_text(xml_text)
        return name

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        stop(self.process)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def start_gadgetron(pipelines: dict[str, str] | None = None, port: int | None = None, env: dict | None = None,
                    timeout: float = 60.0) -> GadgetronServer:
    """Start Gadgetron on a free loopback port with ``pipelines`` (name -> XML) plus the shipped ones.

    ``env`` adds variables to the environment Gadgetron and its Python nodes get.
    """
    prefix = gadgetron_prefix()
    if prefix is None:
        raise RuntimeError(missing_reason() or "no Gadgetron installed")
    tmp = tempfile.TemporaryDirectory(prefix="streamrecon-gadgetron-")
    home = Path(tmp.name)
    config = home / "share" / "gadgetron" / "config"
    config.mkdir(parents=True)
    for xml in (ROOT / "pipelines").glob("*.xml"):
        shutil.copy(xml, config / xml.name)
    for name, text in (pipelines or {}).items():
        (config / name).write_text(text)
    port = port or free_port()
    tag = uuid.uuid4().hex
    log_path = home / "gadgetron.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(prefix / "bin" / "gadgetron"), "-G", str(home), "-W", str(home / "work"),
                                 "-p", str(port), "-d", "true"], env={**_env(prefix, tag), **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, cwd=home)
    server = GadgetronServer(proc, port, home, tag, log_path, tmp)
    try:
        wait_port(port, proc, timeout)
    except RuntimeError as exc:
        tail = server.log_tail()
        server.stop()
        raise RuntimeError(f"Gadgetron did not start: {exc}\n{tail}") from None
    return server


def tagged_processes(tag: str, marker: str = "-m gadgetron") -> list[tuple[int, str]]:
    """``(pid, command line)`` of live processes started under the Gadgetron tagged ``tag``."""
    found = []
    needle = f"{TAG_VARIABLE}={tag}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            if marker not in cmdline:
                continue
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append((int(entry.name), cmdline))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found




def run_ismrmrd_client(server: GadgetronServer, data_h5: Path, out_h5: Path, *, config: str,
                       timeout_s: float = 30.0, retry_race: bool = True) -> subprocess.CompletedProcess:
    """Gadgetron's own ``gadgetron_ismrmrd_client``: ``data_h5`` through the pipeline named ``config``.

    The 4.7.2 client now and then never sends its configuration, or loses its
    socket between its threads: Gadgetron's log shows the connection waiting
    in [CONFIG] until the client gives up with "write: Bad file descriptor"
    (seen with several pipelines, up to 1 run in 6, more on a loaded
    machine). A run that fails with that message is a race in the client,
    not an answer from the server: it is run again from scratch (the output
    file removed), at most ``MAX_CLIENT_TRIES`` times in all, each retry
    logged; the returned process says how many it took (``tries``). Any
    other failure is returned at once, and so is every failure with
    ``retry_race`` False (a scan whose answer makes the client abort anyway).
    """
    prefix = gadgetron_prefix()
    assert prefix is not None
    # "localhost", not "127.0.0.1": this client aborts on a numeric address (4.7.2).
    cmd = [str(prefix / "bin" / "gadgetron_ismrmrd_client"), "-a", "localhost", "-p", str(server.port),
           "-f", str(data_h5), "-o", str(out_h5), "-G", "images", "-t", str(int(timeout_s * 1000)), "-c", config]
    for attempt in range(1, MAX_CLIENT_TRIES + 1):
        Path(out_h5).unlink(missing_ok=True)  # a crashed try may have written part of the images
        run = subprocess.run(cmd, env=_env(prefix, ""), capture_output=True, text=True, timeout=timeout_s + 30)
        if run.returncode == 0 or CLIENT_RACE not in run.stderr or not retry_race:
            break
        log.warning("gadgetron_ismrmrd_client try %d of %d hit its socket race (%s); running it again", attempt,
                    MAX_CLIENT_TRIES, CLIENT_RACE)
    run.tries = attempt
    return run


MAX_CLIENT_TRIES = 3
CLIENT_RACE = "Bad file descriptor"


def read_images_h5(path: Path, group: str = "images") -> list:
    """Every ``ismrmrd.Image`` in ``path``'s ``group`` (one ``image_<series>`` subgroup per series)."""

    if not Path(path).exists():
        return []
    with h5py.File(path, "r") as f:
        names = sorted(k for k in f[group].keys()) if group in f else []
    if not names:
        return []
    dset = ismrmrd.Dataset(str(path), group, create_if_needed=False)
    try:
        return [dset.read_image(name, i) for name in names for i in range(dset.number_of_images(name))]
    finally:
        dset.close()

__all__ = ["GadgetronServer", "start_gadgetron", "gadgetron_prefix", "missing_reason", "tagged_processes",
           "run_ismrmrd_client", "read_images_h5"]
