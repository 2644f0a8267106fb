"""The one error type users see: it names the input at fault and says how to fix it."""

from __future__ import annotations


class TLInputError(ValueError):
    """Bad user input. The message names the input (node input, file or folder) and the fix."""

    def __init__(self, what: str, problem: str, fix: str) -> None:
        self.what = what
        self.problem = problem
        self.fix = fix
        super().__init__(f"{what}: {problem} Fix: {fix}")
