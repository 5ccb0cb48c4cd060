"""Start the gradtel daemons from Python: a ``gradtel-agent`` beside a training process and, for a
single machine, a ``gradtel-collector``. Used by the examples and tests; production jobs usually
start the agent from their launcher instead.

The binaries are found in ``$GRADTEL_BIN_DIR`` if set, else on ``PATH`` (``cargo install --path .``
in the repository puts them there).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from typing import Optional, Sequence


class SidecarError(RuntimeError):
    pass


def binary(name: str) -> str:
    d = os.environ.get("GRADTEL_BIN_DIR")
    if d:
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
        raise SidecarError(f"{name} not found in GRADTEL_BIN_DIR={d}")
    path = shutil.which(name)
    if path is None:
        raise SidecarError(
            f"{name} is not on PATH; build it (cargo build --release) and set GRADTEL_BIN_DIR"
        )
    return path


class _Daemon:
    proc: subprocess.Popen

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the crash case (nothing flushed)."""
        if self.alive():
            self.proc.kill()
        self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the daemon drains and flushes before it exits."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise SidecarError(f"{self.proc.args[0]} did not stop within {timeout} s") from None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if not self.alive():
            return
        if exc_type is not None:
            # The block failed: that error is the one to see, not a slow shutdown's (a client
            # left open keeps the agent's graceful shutdown waiting).
            self.kill()
        else:
            self.stop()


class Collector(_Daemon):
    """``gradtel-collector --out OUT --listen LISTEN``; ``url`` is where agents send."""

    def __init__(
        self,
        out: str,
        listen: str = "127.0.0.1:0",
        extra: Sequence[str] = (),
        timeout: float = 30,
        wrapper: Sequence[str] = (),
    ):
        """``wrapper`` is prepended to the command line (e.g. ``["chrt", "--idle", "0"]``)."""
        self.out = out
        self.metrics: Optional[str] = None
        self.proc = subprocess.Popen(
            [*wrapper, binary("gradtel-collector"), "--listen", listen, "--out", out, *extra],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "GRADTEL_LOG": os.environ.get("GRADTEL_LOG", "warn")},
        )
        found = threading.Event()
        self.url = ""

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith("gradtel-collector metrics on "):
                    self.metrics = line.split(" on ", 1)[1].strip()
                if line.startswith("gradtel-collector listening on "):
                    self.url = "http://" + line.split(" on ", 1)[1].strip()
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(timeout):
            self.kill()
            raise SidecarError("gradtel-collector did not report its address")


class Agent(_Daemon):
    """``gradtel-agent --socket SOCKET --collector URL``, started and waited for."""

    def __init__(
        self,
        socket: str,
        collector: str,
        extra: Sequence[str] = (),
        timeout: float = 30,
        wrapper: Sequence[str] = (),
    ):
        """``wrapper`` is prepended to the command line (e.g. ``["chrt", "--idle", "0"]``)."""
        self.socket = socket
        if os.path.exists(socket):
            os.unlink(socket)
        self.proc = subprocess.Popen(
            [*wrapper, binary("gradtel-agent"), "--socket", socket, "--collector", collector,
             *extra],
            stdout=subprocess.DEVNULL,
            env={**os.environ, "GRADTEL_LOG": os.environ.get("GRADTEL_LOG", "warn")},
        )
        deadline = time.monotonic() + timeout
        while not os.path.exists(socket):
            if not self.alive() or time.monotonic() > deadline:
                self.kill()
                raise SidecarError(f"gradtel-agent did not open {socket}")
            time.sleep(0.02)
