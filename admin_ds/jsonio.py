"""Reading a JSON object from a user-supplied file, with one-line errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

from admin_ds.errors import UserError


def read_json_object(path: Path, what: str, missing: str | None = None) -> dict:
    """The JSON object in ``path``; ``what`` names the file in errors, ``missing`` replaces the not-found one."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(missing or f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{what} {path} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise UserError(f"{what} {path} must hold a JSON object")
    return value
