"""The commands README.md tells people to run exist: each Python command and `reactor-rt` subcommand
answers ``--help`` (a module path that only works from some other directory fails here)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _code_lines() -> list[str]:
    """Commands in README's indented code blocks, without their trailing comments."""
    lines = []
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("    ") and not line.startswith("     "):
            command = line.strip().split("  #")[0].strip()
            if command:
                lines.append(command)
    return lines


def _python_commands() -> list[list[str]]:
    """`.venv/bin/python ARGS` / `python ARGS` lines as argv, run with this interpreter."""
    out = []
    for command in _code_lines():
        argv = shlex.split(command)
        if argv[0] in (".venv/bin/python", "python"):
            out.append(argv[1:])
    return out


def _cli_subcommands() -> list[str]:
    return sorted({m.group(1) for c in _code_lines() if (m := re.match(r"(?:\.venv/bin/)?reactor-rt ([a-z-]+)", c))})


def test_readme_lists_the_commands_this_test_checks():
    assert len(_python_commands()) >= 5
    assert {"chat", "ask", "events", "train", "eval"} <= set(_cli_subcommands())


@pytest.mark.parametrize("argv", _python_commands(), ids=lambda a: " ".join(a[:2]))
def test_python_command_runs(argv: list[str]):
    # keep only the module or script and what selects it: the options after it are what --help lists
    target = argv[:2] if argv[0] == "-m" else argv[:1]
    done = subprocess.run([sys.executable, *target, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()


@pytest.mark.parametrize("sub", _cli_subcommands())
def test_cli_subcommand_exists(sub: str):
    from reactor_rt.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([sub, "--help"])
    assert exit_info.value.code == 0
