"""The harness's error vocabulary. The CLI maps each to one line and an exit code (harness.cli.common.run_with_error_contract)."""
from __future__ import annotations


class HarnessError(Exception):
    """A problem the user can fix; shown as one line, exit code `exit_code`."""

    exit_code = 2


class UsageError(HarnessError):
    """A flag, value or combination of them that cannot work."""


class InputError(HarnessError):
    """A file the user named is missing, unreadable or not what it claims to be."""


class UnknownName(UsageError):
    """A backend, model, decoder, ... name that is not known; the message lists the known ones."""

    LISTED = 200  # known names beyond this: only the closest CLOSEST are listed
    CLOSEST = 10

    def __init__(self, kind: str, name: str, known: list[str] | tuple[str, ...]):
        import difflib

        hint = difflib.get_close_matches(name, list(known), n=1)
        suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
        if len(known) > self.LISTED:  # timm's 1,600 models are no line to read: the closest ones and the count
            closest = difflib.get_close_matches(name, list(known), n=self.CLOSEST, cutoff=0.0)
            super().__init__(f"unknown {kind} {name!r}; {len(known)} are known, the closest: "
                             f"{', '.join(closest)}.{suggestion}")
            return
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(known)}.{suggestion}")


class BackendUnavailable(HarnessError):
    """A backend that is known but cannot run here (package or device missing)."""


class SampleError(HarnessError):
    """One sample of a dataset cannot be used (missing, corrupt); counted, never fatal to a run."""


class RunFailed(HarnessError):
    """The run itself could not produce a result (the reference crashed or hung): exit 1, like a failed row."""

    exit_code = 1
