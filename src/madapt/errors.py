"""User-facing errors.

Every mistake a user can make (a missing file, a bad config value, an unknown name, a missing
dataset folder, corrupt weights, an occupied run folder) raises a `UserError`. The CLI prints its
message as exactly one line on stderr and exits with code 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit code 2."""

    exit_code = 2

    def __init__(self, where: str, found: str, expected: str) -> None:
        self.where, self.found, self.expected = where, found, expected
        super().__init__(f"{where}: {found}; expected {expected}")

    def one_line(self) -> str:
        return " ".join(str(self).split())


class ConfigError(UserError):
    """Bad config file, key or value."""


class UnknownNameError(UserError):
    """A method, dataset, backbone, preset ... name that is not registered."""


class DataError(UserError):
    """Missing `data_root`, dataset folder, split or file; a dataset that contradicts the config."""


class WeightsError(UserError):
    """A weights path that is missing, not loadable, or corrupt."""


class RunFolderError(UserError):
    """An output folder that holds another run, or a resume that does not match."""


def closest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest choice, or '' when nothing is close."""
    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""
