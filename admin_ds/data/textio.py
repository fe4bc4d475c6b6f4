"""Reading parallel text: one sentence a line, UTF-8, line N of one side translating line N of the other.

Files are read as bytes and decoded by `admin_ds.io.decode_lines`, not by `open(..., encoding=...)`, so that
invalid UTF-8 can be reported with the file and the line number a user needs to fix it.
"""

from __future__ import annotations

from pathlib import Path

from admin_ds.errors import UserError
from admin_ds.io import decode_lines


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


def read_parallel(prefix: str | Path, source_lang: str, target_lang: str, flag: str) -> tuple[list[str], list[str]]:
    """Both sides of a parallel split, checked to have the same number of lines.

    Returns:
        (source lines, target lines), each a list of stripped strings of equal length.
    """
    src_path, tgt_path = parallel_paths(prefix, source_lang, target_lang)
    check_exists(src_path, flag)
    check_exists(tgt_path, flag)
    src_lines = read_lines(src_path)
    tgt_lines = read_lines(tgt_path)
    if len(src_lines) != len(tgt_lines):
        raise UserError(
            f"{src_path} has {len(src_lines)} lines but {tgt_path} has {len(tgt_lines)}; "
            "line N of one side must translate line N of the other"
        )
    return src_lines, tgt_lines
