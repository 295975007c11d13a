"""Helpers for benchmarks and tests that start the project's own servers as processes."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python_env() -> dict:
    """This environment with the repository on PYTHONPATH, for ``python -m pipelines.cli ...`` children."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Return once ``proc`` accepts connections on ``port``; raise if it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


def stop(proc: subprocess.Popen) -> None:
    """Terminate, then kill if it does not go within 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


TRITON_PYTHON_ENV = "STREAMRECON_TRITON_PYTHON"


def triton_python() -> tuple[str | None, str]:
    """The Python that can run ``streamrecon triton-server`` (PyTriton installed), or None and why not.

    PyTriton pins numpy<2, so it lives in its own environment: ``$STREAMRECON_TRITON_PYTHON``,
    else ``.venv-triton`` (``make triton-env``), else this interpreter.
    """
    candidates = [os.environ.get(TRITON_PYTHON_ENV, ""), str(ROOT / ".venv-triton" / "bin" / "python"), sys.executable]
    tried = []
    for python in filter(None, candidates):
        if not Path(python).exists():
            tried.append(f"{python}: absent")
            continue
        probe = subprocess.run([python, "-c", "import pytriton.triton"], capture_output=True, text=True, timeout=120)
        if probe.returncode == 0:
            return python, ""
        tried.append(f"{python}: {(probe.stderr.strip().splitlines() or ['cannot import pytriton'])[-1]}")
    return None, ("PyTriton is not installed (`make triton-env` installs it into .venv-triton; it needs glibc >= 2.35): "
                  + "; ".join(tried))


def start_triton_server(python: str, args: list[str], timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """``streamrecon triton-server ARGS`` in its own process group on free loopback ports; (process, gRPC endpoint) once ready."""
    from pipelines.triton_client import health

    grpc, http, metrics = free_port(), free_port(), free_port()
    endpoint = f"127.0.0.1:{grpc}"
    cmd = [python, "-m", "pipelines.cli", "triton-server", "--grpc-port", str(grpc), "--http-port", str(http),
           "--metrics-port", str(metrics)] + list(args)
    # its own process group: PyTriton starts tritonserver and stub processes that must go with it.
    # tritonserver logs to stderr whatever our log level: a file, not a pipe nobody drains
    log_file = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, env=python_env(), stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log_file.seek(0)
            tail = log_file.read().decode(errors="replace")[-3000:]
            log_file.close()
            raise RuntimeError(f"triton-server exited with {proc.returncode}: {tail}")
        try:
            if health(endpoint, timeout_ms=1000)["status"] == "ready":
                log_file.close()  # the child keeps its own descriptor
                return proc, endpoint
        except Exception:
            pass
        time.sleep(0.5)
    stop_group(proc, kill=True)
    log_file.close()
    raise RuntimeError("triton-server did not become ready")


def start_inference_service(args: list[str], timeout: float = 300.0) -> tuple[subprocess.Popen, str]:
    """``streamrecon infer-server ARGS`` on a free loopback port; (process, endpoint) once it answers its health check."""
    from pipelines.inference_client import health

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "pipelines.cli", "infer-server", "--bind", endpoint, "--log-level", "WARNING", *args]
    log_file = tempfile.TemporaryFile()  # its log: a file, not a pipe nobody drains during a long run
    proc = subprocess.Popen(cmd, env=python_env(), stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log_file.seek(0)
                raise RuntimeError(f"infer-server exited with {proc.returncode}: "
                                   f"{log_file.read().decode(errors='replace')[-2000:]}")
            try:
                health(endpoint, timeout_ms=500)
                return proc, endpoint
            except Exception:  # not listening yet: zmq's and the health reply's errors alike
                time.sleep(0.2)
        stop(proc)
        raise RuntimeError("infer-server did not become healthy")
    finally:
        log_file.close()  # the child keeps its own descriptor


def _group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes in process group ``pgid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append((int(stat.parent.name), (stat.parent / "cmdline").read_bytes().decode(errors="replace")))
        except (OSError, IndexError, ValueError):
            continue
    return out


def stop_group(proc: subprocess.Popen, kill: bool = False) -> None:
    """End the process group ``proc`` leads: SIGTERM (its leader shuts the rest down), or with ``kill`` SIGKILL,
    as a crash would; SIGKILL for whatever is left after 20 s."""
    if kill:
        # a crash as the host sees it, except that multiprocessing's resource tracker is left to
        # notice its parent's death and remove the shared memory it tracked (nothing else would)
        for pid, cmdline in _group_members(proc.pid):
            if "resource_tracker" not in cmdline:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    else:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    deadline = time.monotonic() + 20  # the members left clean up and go; then they are made to
    try:
        while time.monotonic() < deadline and _group_members(proc.pid):
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if kill:  # a killed PyTriton cannot remove its tensor store's shared memory (named after its pid)
        for leftover in Path("/dev/shm").glob(f"pytrtion{proc.pid}-*"):
            leftover.unlink(missing_ok=True)
