"""Errors a user can act on.

Every message names the problem and the fix in one line, so the CLI can print it as is and the Blender
add-on can show it as a report.
"""


class MonohumanError(Exception):
    """Base class: `problem` says what is wrong, `fix` what to do about it."""

    exit_code = 1

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} {fix}".strip())


class InputError(MonohumanError):
    """The photo (or another input file) is missing, unreadable or not an image."""

    exit_code = 2


class NoPersonError(MonohumanError):
    """The detector found nobody in the photo."""

    exit_code = 3


class ModelError(MonohumanError):
    """A model is missing, truncated, corrupt or does not match its config."""

    exit_code = 4


class DataError(MonohumanError):
    """A dataset, sample or scan is missing or broken."""

    exit_code = 5


class Cancelled(MonohumanError):
    """The user cancelled a running job; nothing was produced."""

    exit_code = 130


class ArgumentError(InputError, ValueError):
    """An argument (command-line option, API parameter, backend request field) has the wrong type or is out
    of range. Also a ValueError, so callers that caught the bare one keep working."""

    exit_code = 2


class OutputError(MonohumanError):
    """An output cannot be written (folder missing or read-only, disk full) or would replace an input."""

    exit_code = 6


class Terminated(MonohumanError):
    """A SIGTERM (a scheduler, `kill`) stopped the run after it saved what it had."""

    exit_code = 143


def os_error(err: OSError, action: str = "write") -> OutputError:
    """An OSError (permission, full disk, a folder where a file should be) as a one-line OutputError."""
    where = f" {err.filename}" if err.filename else ""
    return OutputError(f"Cannot {action}{where}: {err.strerror or err}.",
                       "Check that the folder exists, is writable and has free space.")


def run_command(body, debug: bool | None = None) -> int:
    """Run a command's body (returns its exit code) so that every expected failure is one line on stderr
    (`error: problem fix`) and its exit code; the traceback only with MONOHUMAN_DEBUG=1."""
    import os
    import sys
    import traceback

    debug = os.environ.get("MONOHUMAN_DEBUG", "") not in ("", "0") if debug is None else debug
    try:
        return body()
    except KeyboardInterrupt:
        err = Cancelled("Interrupted.", "")
    except MonohumanError as e:
        err = e
    except OSError as e:
        err = os_error(e, "read or write")
    if debug:
        traceback.print_exc()
    print(f"error: {err}", file=sys.stderr)
    return err.exit_code
