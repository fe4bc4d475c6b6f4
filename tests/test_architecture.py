"""The architecture rules the layout promises (docs/architecture.md), checked on the source itself."""

import argparse
import ast
import re
import shutil
import subprocess
import sys

import pytest

from admin_ds.cli import SUBCOMMANDS, build_parser

from launch_util import REPO

PACKAGE = REPO / "admin_ds"
SOURCES = sorted(PACKAGE.rglob("*.py"))
ENGINE = PACKAGE / "training" / "engine"  # the one package that may import DeepSpeed


def imported_modules(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


@pytest.mark.parametrize("tool", ["lint-imports", "ruff"])
def test_import_contracts_and_lint_hold(tool):
    """The import-linter contracts of .importlinter (rooms point down, commands independent, one DeepSpeed
    owner, a pure-torch model, a standalone plain.py) and ruff, as CI runs them."""
    command = {"lint-imports": [shutil.which("lint-imports") or "lint-imports"],
               "ruff": [sys.executable, "-m", "ruff", "check", "."]}[tool]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_only_the_engine_touches_deepspeed_and_torch_distributed():
    """import-linter sees external packages only as a whole (torch, not torch.distributed): this checks
    the collectives' owner directly."""
    engine_files = set(ENGINE.glob("*.py"))
    offenders = [f"{path.relative_to(REPO)}: {module}" for path in SOURCES if path not in engine_files
                 for module in imported_modules(path)
                 if module.split(".")[0] == "deepspeed" or module.startswith("torch.distributed")]
    assert offenders == []
    assert {"deepspeed", "torch.distributed"} <= {module for path in engine_files for module in imported_modules(path)}


def test_deepspeed_internals_stay_in_one_module():
    """A DeepSpeed or torch internal (a private attribute or module-level default) is used in
    engine/internals.py only, behind a named function that says what it works around."""
    engine_internals = (r"\._config\b|__compatible_ops__|default_pg_timeout|\bds_numel\b|\bds_shape\b|"
                        r"\bbase_lrs\b|\.overflow\b|refresh_fp32_params|import ds_to_universal|"
                        r"torch\.load = |checkpoint_engine\.load")
    internal = re.compile(engine_internals + r"|[.\"']fp32_groups")
    # checkpoints/zero.py reads the keys DeepSpeed saves its optimizers' masters under, in the files (not
    # the live optimizer's attributes): that layout is its own contract, tested against real checkpoints.
    rules = {PACKAGE / "checkpoints" / "zero.py": re.compile(engine_internals)}
    offenders = [str(path.relative_to(REPO)) for path in SOURCES if path != ENGINE / "internals.py"
                 and rules.get(path, internal).search(path.read_text(encoding="utf-8"))]
    assert offenders == []


def test_files_stay_small():
    sizes = {str(p.relative_to(REPO)): len(p.read_text(encoding="utf-8").splitlines()) for p in SOURCES}
    assert {name: lines for name, lines in sizes.items() if lines > 400} == {}


def test_every_docs_reference_resolves():
    texts = [p.read_text(encoding="utf-8") for p in [*SOURCES, *REPO.glob("tests/**/*.py"), *REPO.glob("bench/*"),
                                                      REPO / "README.md", *REPO.glob("docs/*.md")] if p.is_file()]
    cited = {match for text in texts for match in re.findall(r"docs/[\w.-]+\.md", text)}
    assert cited, "nothing cites docs/: the pattern is wrong"
    assert sorted(name for name in cited if not (REPO / name).is_file()) == []


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_help_shows_every_default(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "10000")  # no line wrapping (argparse also breaks lines at hyphens)
    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    text = " ".join(sub.format_help().split())
    shown = 0
    for action in sub._actions:
        if (action.help in (None, argparse.SUPPRESS) or action.default in (None, argparse.SUPPRESS)
                or isinstance(action.default, bool) or action.required):
            continue
        assert f"(default: {action.default})" in text, f"{command} {action.option_strings}: no default in --help"
        shown += 1
    assert shown or command in ("convert", "average-checkpoints", "plot")
