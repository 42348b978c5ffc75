"""Files that are complete or absent: written to a temporary file beside the target, fsynced, then renamed.

One place for it, because every output (meshes, previews, models, samples, training state) needs the same
three properties: no half-written file under the final name after a crash or a full disk, several files
of one output written all or nothing, and the permissions any program's new file gets (the umask decides;
mkstemp's private 0600 is for temporary files, not for results).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from core.errors import os_error


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() gives a new file


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file so that it is either complete or absent (temporary file + rename), never half-written."""
    write_files({Path(path): data})


def write_files(files: dict) -> None:
    """Write several files all or nothing: each goes to a temporary file beside its target (fsynced), and only
    when all are complete are they renamed into place, so a failure (no space, no permission) leaves none of
    them changed. File modes follow the umask, like any file a program creates. OSError -> OutputError."""
    temps: list[tuple[str, Path]] = []
    path = None
    try:
        for path, data in files.items():
            path = Path(path)
            if isinstance(data, str):
                data = data.encode("utf-8")
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), FILE_MODE)
                os.fsync(f.fileno())
        for tmp, path in temps:
            os.replace(tmp, path)
    except OSError as err:
        if not err.filename and path is not None:  # a failed write names no file: name the one being written
            err = OSError(err.errno, err.strerror or str(err), str(path))
        raise os_error(err) from err
    finally:
        for tmp, _ in temps:
            try:
                os.unlink(tmp)
            except OSError:
                pass
