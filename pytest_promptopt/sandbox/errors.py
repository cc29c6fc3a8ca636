"""What running user code can end in, besides a value: the code raised (`ScriptRaised`, which
promptfoo turns into a failed check or an errored case depending on the form), or it could not
give an answer at all (`ScriptFault`: a time limit, an exit, a crash, a missing engine), which is
always an error of the case."""

from __future__ import annotations

__all__ = ["ScriptFault", "ScriptRaised", "ScriptTimeout"]


class ScriptRaised(Exception):
    """The user's code raised (a JavaScript or Python exception): `type_name: message`, `trace`."""

    def __init__(self, type_name: str, message: str, trace: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if type_name else message)
        self.type_name = type_name
        self.message = message
        self.trace = trace


class ScriptFault(RuntimeError):
    """The code gave no answer: it exited, crashed, raised a BaseException, or no engine runs it."""


class ScriptTimeout(ScriptFault):
    """The code did not return within its time limit (--promptopt-script-timeout)."""
