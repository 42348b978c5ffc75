"""The warm backend: one `core.backend --serve` process per Blender session, serving every reconstruction.

Started on the first reconstruction that needs it (or by *Start Backend* in the preferences), it keeps
torch, mediapipe and the models loaded, so only the first run of a session pays for importing them. It is
stopped when the add-on is disabled or Blender exits (its stdin closes, so it ends even when Blender is
killed), stops by itself after the preferences' idle time, and a new one is started when the one there has
died or another Backend Python is set.

The process is started as ``python -c BOOT ROOT --serve ...``: BOOT puts ROOT (the checkout, or the
add-on's vendor folder) first on the backend's sys.path before it imports `core`, and the add-on checks
the path the backend reports in its first line, so a stranger package named `core` in that environment is
never the one that runs. Nothing here touches bpy data; callbacks run on the reader thread.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from . import paths

BOOT = ("import runpy, sys; sys.path.insert(0, sys.argv[1]); del sys.argv[1]; "
        "runpy.run_module('core.backend', run_name='__main__', alter_sys=True)")
KEEP_LOGS = 5
DEFAULT_IDLE_S = 600.0
STOP_WAIT_S = 3.0
FIX_PYTHON = ("Check Preferences > Add-ons > Monohuman > Backend Python (run `python -m core.backend --check` "
              "with it).")

Sink = Callable[[dict], None]


class ServerError(Exception):
    """The backend process could not be started; `problem` and `fix` as in core.errors."""

    def __init__(self, problem: str, fix: str):
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem} {fix}")


def logs_dir() -> Path:
    path = paths.user_dir() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def prune_logs(folder: Path, keep: int = KEEP_LOGS) -> None:
    """Keep the `keep` newest backend logs (one per backend process, failed runs included)."""
    logs = sorted(folder.glob("backend-*.log"), key=lambda p: p.stat().st_mtime)
    for old in logs[:-keep] if keep > 0 else logs:
        try:
            old.unlink()
        except OSError:
            pass


class BackendServer:
    """One backend process; requests are routed to their sinks by id."""

    def __init__(self, python: str, root: Path, idle_timeout: float):
        self.python, self.root, self.idle_timeout = python, Path(root), float(idle_timeout)
        folder = logs_dir()
        prune_logs(folder, KEEP_LOGS - 1)
        self.log_path = folder / f"backend-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.log"
        self.info: dict | None = None  # the backend's "ready" line
        self.problem: str | None = None  # why it is unusable (stranger core, ended)
        self.requests = 0
        self._sinks: dict[str, Sink] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        env = dict(os.environ)
        env.pop("PYTHONHOME", None)  # Blender's own; the backend is another Python
        env["PYTHONPATH"] = str(self.root)  # replaces the caller's: nothing else named core is visible
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "wb") as log:
            try:
                self.process = subprocess.Popen(
                    [python, "-c", BOOT, str(self.root), "--serve", "--idle-timeout", f"{self.idle_timeout:g}"],
                    cwd=str(self.root), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                    text=True, encoding="utf-8", bufsize=1)
            except OSError as exc:
                raise ServerError(f"Cannot start the backend Python {python!r}: {exc.strerror or exc}.",
                                  "Set Preferences > Add-ons > Monohuman > Backend Python to the python of "
                                  "the environment that has torch (see docs/ADDON.md).") from exc
        self._reader = threading.Thread(target=self._read, name="monohuman-backend-reader", daemon=True)
        self._reader.start()

    # -- reader thread -----------------------------------------------------------------------------
    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue  # not ours (the backend sends everything else to stderr; be tolerant anyway)
            if isinstance(msg, dict):
                self._route(msg)
        self.process.stdout.close()
        try:
            rc = self.process.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            rc = None
        if self.problem is None:
            tail = self.log_tail()
            self.problem = (f"The backend process ended (exit status {rc}) without a result"
                            + (f": {tail}." if tail else "."))
        self._ready.set()
        with self._lock:
            sinks, self._sinks = list(self._sinks.values()), {}
        for sink in sinks:
            sink({"error": f"{self.problem} {FIX_PYTHON}", "kind": "BackendError"})

    def _route(self, msg: dict) -> None:
        if msg.get("ready"):
            self.info = msg
            core = Path(str(msg.get("core", ""))).resolve()
            if core != (self.root / "core").resolve():
                self.problem = (f"The backend imported another package named core ({core}) instead of the "
                                f"Monohuman library in {self.root}.")
                self.process.terminate()
            self._ready.set()
            return
        job_id = str(msg.pop("id", ""))
        final = any(k in msg for k in ("done", "error", "cancelled"))
        with self._lock:
            sink = self._sinks.pop(job_id, None) if final else self._sinks.get(job_id)
        if sink is not None:
            sink(msg)

    # -- any thread ----------------------------------------------------------------------------------
    def _send(self, msg: dict) -> bool:
        try:
            self.process.stdin.write(json.dumps(msg) + "\n")
            self.process.stdin.flush()
            return True
        except (OSError, ValueError):
            return False  # it has ended; the reader reports that to every sink

    def submit(self, op: str, request: dict, sink: Sink) -> str:
        """Send a request ("reconstruct" or "warmup"); `sink` gets its messages (without the id)."""
        job_id = uuid.uuid4().hex
        with self._lock:
            self._sinks[job_id] = sink
            dead = not self._reader.is_alive()
        if dead:  # its sinks were already told; tell this one too
            with self._lock:
                self._sinks.pop(job_id, None)
            sink({"error": f"{self.problem or 'The backend process has ended.'} {FIX_PYTHON}", "kind": "BackendError"})
            return job_id
        self.requests += 1
        self._send({"op": op, "id": job_id, "request": request})
        return job_id

    def cancel(self, job_id: str) -> None:
        self._send({"op": "cancel", "id": job_id})

    def pending(self, job_id: str) -> bool:
        """True until the request's final message was delivered."""
        with self._lock:
            return job_id in self._sinks

    def alive(self) -> bool:
        return self.problem is None and self.process.poll() is None

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout) and self.problem is None

    def stop(self, timeout: float = STOP_WAIT_S) -> None:
        """Ask it to leave (after cancelling what runs), then terminate, then kill."""
        if self.process.poll() is None:
            self._send({"op": "shutdown"})
            try:
                self.process.stdin.close()
            except OSError:
                pass
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(timeout=STOP_WAIT_S + 1)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])


# --------------------------------------------------------------------------------------------------
# The session's one server

_server: BackendServer | None = None


def get(python: str, root: Path, idle_timeout: float) -> BackendServer:
    """The running server for this Python and library root, started (or restarted) when needed."""
    global _server
    s = _server
    if s is not None and s.alive() and (s.python, s.root, s.idle_timeout) == (python, Path(root), idle_timeout):
        return s
    if s is not None:
        s.stop()
    _server = BackendServer(python, root, idle_timeout)
    return _server


def current() -> BackendServer | None:
    return _server if _server is not None and _server.alive() else None


def shutdown() -> None:
    global _server
    if _server is not None:
        _server.stop()
    _server = None


atexit.register(shutdown)
