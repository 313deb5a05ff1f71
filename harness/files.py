"""Reading the user's files and writing reports, with the error contract of the README: a file that is
missing, not UTF-8, not what it claims to be, or that cannot be written is one line naming it (InputError,
exit 2); a report is written atomically (a temporary file in the same folder, then a rename), so a full
disk or a crash mid-write leaves the previous good file, never half a new one."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import tomllib
from pathlib import Path

from harness.errors import InputError


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of `path`; `what` names the file's role in errors ("gate file", "profile file")."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: {what} is a folder, not a file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise InputError(f"{path}: line {line}: {what} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                         f"{err.start})") from None


def read_toml(path: Path, what: str) -> tuple[dict, str]:
    """(table, text) of a TOML file; a syntax error names the file and TOML's own line/column."""
    text = read_text(path, what)
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path}: not valid TOML ({err})") from None


def read_json(path: Path, what: str):
    text = read_text(path, what)
    try:
        return json.loads(text)
    except ValueError as err:
        raise InputError(f"{path}: {what} is not valid JSON ({err})") from None


def write_atomic(path: Path, content: str | bytes) -> None:
    """Writes `content` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    data = content.encode("utf-8") if isinstance(content, str) else content
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise InputError(f"{path}: cannot write ({err.strerror or err})") from None
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as err:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise InputError(f"{path}: cannot write ({err.strerror or err}); the previous file, if any, is "
                         "unchanged") from None


@contextlib.contextmanager
def output_captured_in(log: Path):
    """Everything written to standard output and error meanwhile, by Python or native code (an exporter's
    thousand-line dump, a converter's warnings), goes to `log` instead of the terminal, where it would
    drown the one line that matters. The caller names `log` in its error when something fails."""
    import sys
    import warnings

    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = os.dup(1), os.dup(2)
    streams = sys.stdout, sys.stderr
    with open(log, "ab") as sink, open(log, "a", buffering=1, errors="backslashreplace") as text, \
            warnings.catch_warnings():
        warnings.simplefilter("always")  # to the log, each one: not "once", not lost
        warnings.showwarning = _warning_to_stderr  # whatever handler the host installed (pytest records them)
        os.dup2(sink.fileno(), 1)  # native code writes to the descriptors
        os.dup2(sink.fileno(), 2)
        sys.stdout = sys.stderr = text  # Python code to the objects, which a host may have replaced
        try:
            yield log
        finally:
            text.flush()
            sys.stdout, sys.stderr = streams
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _warning_to_stderr(message, category, filename, lineno, file=None, line=None) -> None:
    import sys
    import warnings

    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
