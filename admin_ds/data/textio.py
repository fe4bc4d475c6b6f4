"""Reading parallel text: one sentence a line, UTF-8, line N of one side translating line N of the other.

Files are read as bytes and decoded by `admin_ds.io.decode_lines`, not by `open(..., encoding=...)`, so that
invalid UTF-8 can be reported with the file and the line number a user needs to fix it. Corpora are read in
chunks of lines (`read_parallel_chunks`), so memory does not grow with the corpus: a 40M-pair corpus is
several gigabytes of text.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

from admin_ds.errors import UserError
from admin_ds.io import decode_lines

_BLOCK_BYTES = 1 << 24  # read size of `count_lines`: large enough to run at disk speed, small enough to not matter


def parallel_paths(prefix: str | Path, source_lang: str, target_lang: str) -> tuple[Path, Path]:
    """`PREFIX.SRC`, `PREFIX.TGT`, the fairseq naming of a parallel split."""
    return Path(f"{prefix}.{source_lang}"), Path(f"{prefix}.{target_lang}")


def check_exists(path: Path, flag: str) -> None:
    """Raise a UserError naming the flag that produced `path` when the file is missing."""
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise UserError(f"input file {path} {what} (from {flag})")


def read_lines(path: Path) -> list[str]:
    """All lines of a UTF-8 file, stripped of surrounding whitespace (so `\\r\\n` files work).

    A final newline does not make an extra empty line; empty lines inside the file are kept (as "") so
    that line numbers stay aligned with the other side.
    """
    return decode_lines(path.read_bytes(), str(path), strip=True)


def count_lines(path: Path) -> int:
    """Lines in a file as `read_lines` counts them (a last line without a newline counts), without decoding."""
    count, last = 0, b"\n"
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK_BYTES):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def iter_line_chunks(path: Path, chunk_lines: int) -> Iterator[tuple[list[str], int]]:
    """The lines of `path` as `read_lines` gives them, `chunk_lines` at a time (the last chunk may be shorter).

    Yields:
        (lines, nbytes): stripped lines of one chunk and the bytes they took in the file.
    """
    line, offset = 1, 0
    with open(path, "rb") as handle:
        # A binary file iterates on b"\n" only, the same line ends decode_lines splits on.
        while raw := list(itertools.islice(handle, chunk_lines)):
            data = b"".join(raw)
            yield decode_lines(data, str(path), strip=True, first_line=line, first_byte=offset), len(data)
            line, offset = line + len(raw), offset + len(data)


def line_count_error(src_path: Path, tgt_path: Path) -> UserError:
    """The error for two sides of different lengths, with both files' full line counts."""
    return UserError(
        f"{src_path} has {count_lines(src_path)} lines but {tgt_path} has {count_lines(tgt_path)}; "
        "line N of one side must translate line N of the other"
    )


def read_parallel_chunks(prefix: str | Path, source_lang: str, target_lang: str,
                         chunk_lines: int) -> Iterator[tuple[list[str], list[str], int]]:
    """Both sides of a parallel split, `chunk_lines` pairs at a time, checked to stay aligned as they are read.

    A side that runs out before the other is a UserError with both line counts (it surfaces at the chunk
    where one side ends, so possibly after most of the corpus was read); invalid UTF-8 is one naming the line.

    Yields:
        (source lines, target lines, nbytes): two lists of stripped strings of equal length, and the bytes
        both took in their files.
    """
    src_path, tgt_path = parallel_paths(prefix, source_lang, target_lang)
    sides = itertools.zip_longest(iter_line_chunks(src_path, chunk_lines), iter_line_chunks(tgt_path, chunk_lines),
                                  fillvalue=([], 0))
    for (src_lines, src_bytes), (tgt_lines, tgt_bytes) in sides:
        if len(src_lines) != len(tgt_lines):
            raise line_count_error(src_path, tgt_path)
        yield src_lines, tgt_lines, src_bytes + tgt_bytes
