"""Running an admin-ds command inside the test process."""

from __future__ import annotations

from admin_ds import cli


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``admin-ds ARGV...`` run in this process; argparse's own usage
    errors (a SystemExit) count as their status, as on the command line."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err
