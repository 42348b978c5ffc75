"""Background reconstruction jobs: never block Blender's main thread.

A job runs `core.backend.run_request` either

* **in-process**, in a worker thread (when `core` and torch import in Blender's Python), or
* in the **warm backend process** (server.py): ``core.backend --serve`` started once from the configured
  environment and kept running, with its reader thread turning the JSON-lines progress into messages.

Either way the worker only puts messages on a queue; the main thread calls :meth:`Job.poll` (from the
operator's modal timer, or in a loop when the operator waits: headless scripts, `wait=True`) which drains
the queue and updates ``state``, ``stage``, ``fraction``. No bpy data is touched here. Both paths write the
same result file (an .npz, see core/backend.py) that the main thread then turns into a Blender object,
with the options the job carries (`Job.options`, captured when it started).

Cancel: in-process sets a `threading.Event` that `core.reconstruct` checks between stages (the job shows
CANCELLING until the worker has really stopped); the backend is asked to cancel the request (the same
event, in its process), and the process is killed when it has not answered within CANCEL_GRACE_S.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from pathlib import Path

from . import paths, server

RUNNING, CANCELLING, DONE, ERROR, CANCELLED = "RUNNING", "CANCELLING", "DONE", "ERROR", "CANCELLED"
FINISHED_STATES = (DONE, ERROR, CANCELLED)
CANCEL_GRACE_S = 10.0  # the warm backend stops between stages; killing it loses the warm state
CANCEL_WAIT_S = CANCEL_GRACE_S + 3.0  # how long a cancel can take at the most (the kill included)
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

    def __init__(self, request: dict, options: dict | None = None):
        self.request = dict(request)
        self.options = dict(options or {})  # how to build the result in Blender, fixed at start
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

    def __init__(self, request: dict, options: dict | None = None):
        super().__init__(request, options)
        self._event = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monohuman-reconstruct", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            run_request = paths.backend_module().run_request  # lazy: torch is imported here, in the worker
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
    """A request served by the session's warm backend process (server.py)."""

    mode = "backend"

    def __init__(self, request: dict, backend: server.BackendServer, options: dict | None = None):
        super().__init__(request, options)
        self.server = backend
        self._cancel_at: float | None = None
        self.id = backend.submit("reconstruct", self.request, self._put)

    @property
    def log_path(self) -> Path:
        return self.server.log_path

    def _cancel(self) -> None:
        self.server.cancel(self.id)
        self._cancel_at = time.monotonic()

    def _alive(self) -> bool:
        if self._cancel_at is not None and time.monotonic() - self._cancel_at > CANCEL_GRACE_S:
            self.server.kill()  # it did not stop between stages: the next run starts a fresh backend
        return self.server.pending(self.id)


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


def backend(python: str = "", idle_timeout: float = server.DEFAULT_IDLE_S) -> server.BackendServer:
    """The session's warm backend for this Python (started or restarted when needed). Raises JobError."""
    python = python or paths.detect_backend_python()
    fix = "Set Preferences > Add-ons > Monohuman > Backend Python to "
    if not python:
        raise JobError("No backend Python is set.", fix + "the python of the environment that has torch "
                       "(see docs/ADDON.md).", kind="BackendError")
    python = os.path.expanduser(python)
    if not os.path.isfile(python):
        raise JobError(f"Backend Python not found: {python}.",
                       fix + "an existing python executable (the project's .venv/bin/python).", kind="BackendError")
    root = paths.backend_cwd(python)
    if root is None:
        raise JobError("The Monohuman library (core) was not found next to the add-on or the backend.",
                       "Reinstall the extension zip, or use a backend Python inside a Monohuman checkout.",
                       kind="BackendError")
    try:
        return server.get(python, root, idle_timeout)
    except server.ServerError as err:
        raise JobError(err.problem, err.fix, kind="BackendError") from err


def start(request: dict, execution: str = "AUTO", python: str = "", options: dict | None = None,
          idle_timeout: float = server.DEFAULT_IDLE_S) -> Job:
    """Start a job (the current one) with the request for core and the `options` for building the
    result in Blender, both fixed now. Raises JobError when it cannot start."""
    global _current
    if _current is not None and not _current.finished:
        _current.poll()
        if not _current.finished:
            raise JobError("A reconstruction is already running.", "Wait for it or press Cancel.",
                           kind="Busy")
    if choose_mode(execution) == "IN_PROCESS":
        if not paths.in_process_available():
            raise JobError("Cannot run in-process: torch or the Monohuman library does not import in "
                           "Blender's Python.", "Set Execution to Backend process in the add-on preferences.")
        job: Job = InProcessJob(request, options)
    else:
        job = BackendJob(request, backend(python, idle_timeout), options)
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
