"""Files the package writes and the user files it reads: one owner for atomic writes and their checks.

Every output is written under a temporary name in its destination folder and renamed into place, so an
interrupted command never leaves half a file or half a directory, and an existing output is replaced only
after the new one is complete (and only when the user said ``--force``).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from admin_ds.errors import UserError


# --- writing ---------------------------------------------------------------------------------------------
def _umask_mode(bits: int) -> int:
    """``bits`` as open()/mkdir() would leave them: mkstemp/mkdtemp make 0600/0700, which would hide a
    user's outputs from the rest of their group on a shared cluster."""
    mask = os.umask(0)
    os.umask(mask)
    return bits & ~mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename it into place."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), _umask_mode(0o666))
            handle.flush()
            os.fsync(handle.fileno())  # the rename must not reach the disk before the data does
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text with "\\n" line ends, atomically (see ``write_bytes_atomic``)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data: object) -> Path:
    """Indented JSON, atomically; values JSON does not know (paths) are written as strings."""
    return write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_output_text(path: str, text: str) -> None:
    """Write to stdout for "-", else atomically to ``path``."""
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_text_atomic(Path(path).resolve(), text)


def check_new_output(path: str | os.PathLike, force: bool, flag: str = "output") -> None:
    """The ``--force`` rule, checked before any work: an existing output is replaced only when forced."""
    if Path(path).exists() and not force:
        raise UserError(f"{flag} {path} exists; pass --force to replace it")


def check_output_path(path: str, flag: str) -> None:
    """Fail before the work, not after it, when an output file cannot be written ("-" is stdout)."""
    if path == "-":
        return
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: directory {parent} does not exist")
    if Path(path).is_dir():
        raise UserError(f"{flag} {path} is a directory")


@contextmanager
def atomic_directory(target: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Build a directory in a temporary sibling and move it to ``target`` when the block ends without error.

    An existing ``target`` is refused unless ``force``; with it, the old one is moved aside and removed
    only after the new one is in place (and put back if that move fails). On error nothing is left.
    """
    target = Path(target)
    check_new_output(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as err:
        raise UserError(f"cannot write next to {target}: {err.strerror}") from None
    try:
        yield tmp
        tmp.chmod(_umask_mode(0o777))
        replace_path(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_path(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an old ``target`` goes only once ``new`` is in place."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(target, old)
    try:
        os.replace(new, target)
    except OSError:
        os.replace(old, target)  # put the old output back rather than leave nothing
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


# --- reading ---------------------------------------------------------------------------------------------
def read_json_object(path: str | os.PathLike, what: str, missing: Optional[str] = None) -> dict:
    """The JSON object in ``path``; ``what`` names the file in errors, ``missing`` replaces the not-found one."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(missing or f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{what} {path} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise UserError(f"{what} {path} must hold a JSON object")
    return value


def read_json_or_empty(path: str | os.PathLike) -> dict:
    """A JSON object from ``path``, or {} when it is missing or not one (for optional lookups)."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def decode_lines(data: bytes, name: str, strip: bool = False, first_line: int = 1, first_byte: int = 0) -> list[str]:
    """UTF-8 bytes -> lines without their line ends (a final newline starts no extra line).

    Invalid UTF-8 is a UserError naming the line; a BOM at the start of the file is dropped. ``str.splitlines``
    is not used: it also splits on \\x0b, \\x1c, \\u2028, ..., which may occur inside a sentence. ``strip``
    removes the surrounding whitespace of every line, else only a "\\r" before the newline goes.
    ``first_line`` and ``first_byte`` place ``data`` in its file when it is one chunk of a longer stream, so
    that errors name the file's line and byte (and a BOM counts only at byte 0).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + data.count(b"\n", 0, err.start)
        raise UserError(f"{name}: invalid UTF-8 on line {line} (byte {first_byte + err.start}: {err.reason})") from None
    if first_byte == 0:
        text = text.removeprefix("\ufeff")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.strip() for line in lines] if strip else [line.rstrip("\r") for line in lines]


def read_text_lines(path: str, flag: str) -> list[str]:
    """Lines of a UTF-8 file, or of stdin for "-"; ``flag`` names the option in errors."""
    if path == "-":
        return decode_lines(sys.stdin.buffer.read(), "<stdin>")
    file = Path(path)
    if not file.is_file():
        what = "is a directory" if file.is_dir() else "does not exist"
        raise UserError(f"{flag} {path} {what}")
    return decode_lines(file.read_bytes(), path)


# --- streaming text --------------------------------------------------------------------------------------
READ_BYTES = 1 << 16


def read_line_chunks(path: str, flag: str, max_lines: int) -> Iterator[list[str]]:
    """Lines of a UTF-8 file, or of stdin for "-", in chunks of at most ``max_lines`` (as ``read_text_lines``
    decodes them). A chunk is handed on when it is full, at the end, or as soon as no more input is waiting:
    a line typed at a terminal, or written by a slow producer, comes back at once, while a file or a fast
    pipe gives full chunks. Only one chunk and one read are held in memory, whatever the input's length.
    The path and ``max_lines`` are checked here, before the first chunk is asked for."""
    if max_lines < 1:
        raise UserError(f"{flag}: the chunk size must be at least 1 line, got {max_lines}")
    if path == "-":
        return _stdin_line_chunks(max_lines)
    file = Path(path)
    if not file.is_file():
        what = "is a directory" if file.is_dir() else "does not exist"
        raise UserError(f"{flag} {path} {what}")
    return _file_line_chunks(file, max_lines)


def _file_line_chunks(file: Path, max_lines: int) -> Iterator[list[str]]:
    with open(file, "rb", buffering=0) as handle:
        fd = handle.fileno()
        yield from _line_chunks(lambda: os.read(fd, READ_BYTES), lambda: True, str(file), max_lines)


def _stdin_line_chunks(max_lines: int) -> Iterator[list[str]]:
    """Raw reads of stdin's file descriptor (a buffered reader would hide what waits); an in-memory stdin
    (no descriptor, as when a caller replaces sys.stdin) is read through its buffer, all of it waiting."""
    stream = sys.stdin.buffer
    try:
        fd = stream.fileno()
    except (OSError, AttributeError, ValueError):
        yield from _line_chunks(lambda: stream.read(READ_BYTES), lambda: True, "<stdin>", max_lines)
        return
    yield from _line_chunks(lambda: os.read(fd, READ_BYTES), lambda: _input_waiting(fd), "<stdin>", max_lines)


def _input_waiting(fd: int) -> bool:
    """Whether a read of ``fd`` would return at once (always, for a regular file)."""
    return bool(select.select([fd], [], [], 0)[0])


def _line_chunks(read: Callable[[], bytes], waiting: Callable[[], bool], name: str,
                 max_lines: int) -> Iterator[list[str]]:
    """``read_line_chunks`` over ``read()`` (up to READ_BYTES, b"" at the end); ``waiting()``: whether more
    input would come at once."""
    complete: list[bytes] = []  # lines read, without their "\n", not yet handed on
    partial, eof = b"", False
    line_number, byte = 1, 0  # where the next chunk starts in the input, for error messages
    while True:
        if complete and (len(complete) >= max_lines or eof or not waiting()):
            chunk, complete = complete[:max_lines], complete[max_lines:]
            data = b"\n".join(chunk) + b"\n"
            yield decode_lines(data, name, first_line=line_number, first_byte=byte)
            line_number, byte = line_number + len(chunk), byte + len(data)
            continue
        if eof:
            if partial:  # a last line without its newline
                yield decode_lines(partial, name, first_line=line_number, first_byte=byte)
            return
        data = read()
        eof = not data
        parts = (partial + data).split(b"\n")
        partial = parts.pop()
        complete.extend(parts)


@contextmanager
def output_stream(path: str) -> Iterator[Callable[[str], None]]:
    """A writer of text pieces: for "-" each piece goes to stdout and is flushed at once; else the pieces go
    to a temporary file beside ``path`` that is renamed to ``path`` when the block ends without error (and
    removed when it does not), as every output of the package."""
    if path == "-":
        def write_stdout(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()
        yield write_stdout
        return
    target = Path(path).resolve()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield lambda text: handle.write(text.encode("utf-8"))
            os.fchmod(handle.fileno(), _umask_mode(0o666))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
