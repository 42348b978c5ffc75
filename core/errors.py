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
