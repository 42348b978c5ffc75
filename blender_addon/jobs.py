"""Background reconstruction jobs: never block Blender's main thread.

A job runs `core.backend.run_request` either

* **in-process**, in a worker thread (when `core` and torch import in Blender's Python), or
* in a **backend process**, ``python -m core.backend`` started from the configured environment, with a
  reader thread turning its JSON-lines progress into messages.

Either way the worker only puts messages on a queue; the main thread calls :meth:`Job.poll` (from the
operator's modal timer, or in a loop in tests / `wait=True`) which drains the queue and updates
``state``, ``stage``, ``fraction``. No bpy data is touched here. Both paths write the same result file
(an .npz, see core/backend.py) that the main thread then turns into a Blender object.

Cancel: in-process sets a `threading.Event` that `core.reconstruct` checks between stages (the job shows
CANCELLING until the worker has really stopped); the backend process is terminated (then killed if it
does not exit within a few seconds).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
import uuid
from pathlib import Path

from . import paths

RUNNING, CANCELLING, DONE, ERROR, CANCELLED = "RUNNING", "CANCELLING", "DONE", "ERROR", "CANCELLED"
FINISHED_STATES = (DONE, ERROR, CANCELLED)
KILL_AFTER_S = 3.0
KEEP_RESULTS = 5

_current: "Job | None" = None


class JobError(Exception):
    """A job could not start (bad configuration); `problem` and `fix` as in core.errors."""

    def __init__(self, problem: str, fix: str = "", kind: str = "ConfigError"):
        self.problem, self.fix, self.kind = problem, fix, kind
        super().__init__(f"{problem} {fix}".strip())


class Job:
    """Common state and polling. Subclasses start the work and implement _cancel/_alive."""

    mode = "?"

    def __init__(self, request: dict):
        self.request = dict(request)
        self.output = Path(request["output"])
        self.state = RUNNING
        self.stage = "starting"
        self.fraction = 0.0
        self.error: str | None = None
        self.error_kind: str | None = None
        self.result_path: Path | None = None
        self.started = time.monotonic()
        self.finished_at: float | None = None
        self._queue: queue.Queue = queue.Queue()
        self._cancel_requested = False

    # -- worker side (any thread) ------------------------------------------------------------------
    def _put(self, msg: dict) -> None:
        self._queue.put(msg)

    # -- main thread ---------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def elapsed(self) -> float:
        return (self.finished_at or time.monotonic()) - self.started

    def poll(self) -> str:
        """Drain the worker's messages and return the state. Cheap; call it from a timer."""
        if self.finished:
            return self.state
        outcome = None
        while True:
            try:
                msg = self._queue.get_nowait()
            except queue.Empty:
                break
            if "stage" in msg:
                self.stage = str(msg["stage"])
                self.fraction = max(self.fraction, min(1.0, float(msg.get("fraction", 0.0))))
            elif "done" in msg or "error" in msg or "cancelled" in msg:
                outcome = msg
        if outcome is None:
            outcome = self._check_exit()
        if outcome is not None and not self._alive():
            self._finish(outcome)
        elif outcome is not None:
            self._queue.put(outcome)  # the worker has reported but not stopped yet: look again next poll
        return self.state

    def _finish(self, msg: dict) -> None:
        if self._cancel_requested or "cancelled" in msg or msg.get("kind") == "Cancelled":
            self.state = CANCELLED
            self.stage = "cancelled"
        elif "done" in msg:
            self.state = DONE
            self.result_path = Path(msg["done"])
            self.stage, self.fraction = "done", 1.0
        else:
            self.state = ERROR
            self.error = str(msg.get("error") or "The reconstruction failed.")
            self.error_kind = str(msg.get("kind") or "Error")
            self.stage = "failed"
        self.finished_at = time.monotonic()

    def cancel(self) -> None:
        """Ask the work to stop. The state becomes CANCELLED once it really has (see poll)."""
        if self.finished or self._cancel_requested:
            return
        self._cancel_requested = True
        self.state = CANCELLING
        self.stage = "cancelling"
        self._cancel()

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> str:
        """Poll until finished (tests, `wait=True`): the same poll the modal timer calls."""
        end = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            self.poll()
            if self.finished:
                break
            if end is not None and time.monotonic() > end:
                break
            time.sleep(interval)
        return self.state

    # -- subclass hooks ------------------------------------------------------------------------------
    def _cancel(self) -> None:
        raise NotImplementedError

    def _alive(self) -> bool:
        raise NotImplementedError

    def _check_exit(self) -> dict | None:
        return None


class InProcessJob(Job):
    """core.backend.run_request in a daemon worker thread of this (Blender's) Python."""

    mode = "in-process"

    def __init__(self, request: dict):
        super().__init__(request)
        self._event = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monohuman-reconstruct", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            paths.ensure_core_importable()
            from core.backend import run_request  # lazy: torch is imported here, in the worker

            path = run_request(self.request, progress=lambda s, f: self._put({"stage": s, "fraction": f}),
                               cancel=self._event)
            self._put({"done": str(path)})
        except BaseException as exc:  # noqa: BLE001 - everything becomes a message for the main thread
            kind = type(exc).__name__
            if kind == "Cancelled":
                self._put({"cancelled": True, "kind": kind})
            elif hasattr(exc, "problem"):
                self._put({"error": str(exc), "kind": kind})
            elif isinstance(exc, ImportError):
                self._put({"error": f"Cannot run in Blender's Python: {exc}.", "kind": kind})
            else:
                import traceback

                traceback.print_exc()
                self._put({"error": f"The reconstruction failed: {kind}: {exc}", "kind": kind})

    def _cancel(self) -> None:
        self._event.set()

    def _alive(self) -> bool:
        return self._thread.is_alive()


class BackendJob(Job):
    """`python -m core.backend` in a separate process; JSON request on stdin, JSON lines on stdout."""

    mode = "backend"

    def __init__(self, request: dict, python: str, cwd: Path):
        super().__init__(request)
        self.python = python
        self.log_path = self.output.with_name(self.output.stem + "_backend.log")
        self._terminated_at: float | None = None
        env = dict(os.environ)
        env.pop("PYTHONHOME", None)
        env["PYTHONPATH"] = str(cwd)
        env["PYTHONUNBUFFERED"] = "1"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in _alive when the process ends
        try:
            self.process = subprocess.Popen(
                [python, "-m", "core.backend"], cwd=str(cwd), env=env, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=self._log, text=True, encoding="utf-8", bufsize=1)
        except OSError as exc:
            self._log.close()
            raise JobError(f"Cannot start the backend Python {python!r}: {exc.strerror or exc}.",
                           "Set Preferences > Add-ons > Monohuman > Backend Python to the python of the "
                           "environment that has torch (see docs/ADDON.md).", kind="BackendError") from exc
        self._reader = threading.Thread(target=self._read, name="monohuman-backend-reader", daemon=True)
        self._reader.start()
        try:
            self.process.stdin.write(json.dumps(self.request) + "\n")
            self.process.stdin.close()
        except OSError:
            pass  # it died at once; _check_exit reports it with the log

    def _read(self) -> None:
        for line in self.process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                continue  # not ours (the backend sends everything else to stderr; be tolerant anyway)
            if isinstance(msg, dict):
                self._put(msg)
        self.process.stdout.close()

    def _cancel(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self._terminated_at = time.monotonic()

    def _alive(self) -> bool:
        if self.process.poll() is None:
            if self._terminated_at is not None and time.monotonic() - self._terminated_at > KILL_AFTER_S:
                self.process.kill()
            return True
        if self._reader.is_alive():
            self._reader.join(timeout=0.5)
            if self._reader.is_alive():
                return True
        if not self._log.closed:
            self._log.close()
        return False

    def _check_exit(self) -> dict | None:
        if self._cancel_requested:
            return {"cancelled": True} if not self._alive() else None
        rc = self.process.poll()
        if rc is None or self._reader.is_alive():
            return None
        # The process ended without a final line: report what its log says.
        tail = self.log_tail()
        return {"error": f"The backend process ended (exit status {rc}) without a result"
                         + (f": {tail}" if tail else ".")
                         + " Check Preferences > Add-ons > Monohuman > Backend Python (run "
                           "`python -m core.backend --check` with it).", "kind": "BackendError"}

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])


# --------------------------------------------------------------------------------------------------
# Starting jobs


def new_output_path(photo: str) -> Path:
    """A fresh result file in the extension user folder; old results beyond KEEP_RESULTS are pruned."""
    out_dir = paths.results_dir()
    _prune(out_dir)
    stem = Path(photo).stem or "photo"
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:40]
    return out_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}-{uuid.uuid4().hex[:6]}.npz"


def _prune(out_dir: Path) -> None:
    results = sorted(out_dir.glob("*.npz"), key=lambda p: p.stat().st_mtime)
    for old in results[:-KEEP_RESULTS] if len(results) > KEEP_RESULTS else []:
        stem = old.with_suffix("")
        for p in [old, *old.parent.glob(stem.name + "_*")]:
            try:
                p.unlink()
            except OSError:
                pass


def choose_mode(execution: str) -> str:
    """'IN_PROCESS' or 'BACKEND' for the preference value AUTO / IN_PROCESS / BACKEND."""
    if execution == "AUTO":
        return "IN_PROCESS" if paths.in_process_available() else "BACKEND"
    return execution


def start(request: dict, execution: str = "AUTO", python: str = "") -> Job:
    """Start a job (the current one). Raises JobError when it cannot start."""
    global _current
    if _current is not None and not _current.finished:
        _current.poll()
        if not _current.finished:
            raise JobError("A reconstruction is already running.", "Wait for it or press Cancel.",
                           kind="Busy")
    mode = choose_mode(execution)
    if mode == "IN_PROCESS":
        if not paths.in_process_available():
            raise JobError("Cannot run in-process: torch or the Monohuman library does not import in "
                           "Blender's Python.", "Set Execution to Backend process in the add-on preferences.")
        job: Job = InProcessJob(request)
    else:
        python = python or paths.detect_backend_python()
        if not python:
            raise JobError("No backend Python is set.",
                           "Set Preferences > Add-ons > Monohuman > Backend Python to the python of the "
                           "environment that has torch (see docs/ADDON.md).", kind="BackendError")
        python = os.path.expanduser(python)
        if not os.path.isfile(python):
            raise JobError(f"Backend Python not found: {python}.",
                           "Set Preferences > Add-ons > Monohuman > Backend Python to an existing python "
                           "executable (the project's .venv/bin/python).", kind="BackendError")
        cwd = paths.backend_cwd(python)
        if cwd is None:
            raise JobError("The Monohuman library (core) was not found next to the add-on or the backend.",
                           "Reinstall the extension zip, or use a backend Python inside a Monohuman checkout.",
                           kind="BackendError")
        job = BackendJob(request, python, cwd)
    _current = job
    return job


def current() -> Job | None:
    return _current


def cancel_current() -> bool:
    if _current is not None and not _current.finished:
        _current.cancel()
        return True
    return False


def shutdown(timeout: float = 2.0) -> None:
    """Stop any running job (unregister, file load): cancel and wait briefly."""
    global _current
    job = _current
    if job is not None and not job.finished:
        job.cancel()
        job.wait(timeout=timeout)
    _current = None
