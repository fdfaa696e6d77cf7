"""What README.md and RELIABILITY.md say is checked against the code: each Python command and `reactor-rt`
subcommand answers ``--help``; the tests, files, calls, keywords, error codes and examples they name exist."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

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


# --- what README.md and RELIABILITY.md say about the code, checked against it ---------------------------

DOCS = ("README.md", "RELIABILITY.md")
TESTS = ROOT / "tests"


def _text(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def _flat(name: str) -> str:
    """The document with its line breaks folded, so that a call wrapped over two lines reads whole."""
    return re.sub(r"\s*\n\s*", " ", _text(name))


def _defines(path: Path, function: str) -> bool:
    return re.search(rf"^(?:async )?def {re.escape(function)}\(", path.read_text(encoding="utf-8"), re.M) is not None


def _test_file(name: str) -> Path:
    found = sorted(TESTS.rglob(name))
    assert found, f"RELIABILITY.md names {name}, which is not under tests/"
    return found[0]


def test_every_test_reliability_names_exists_under_that_name():
    text = _text("RELIABILITY.md")
    checked = 0
    last_file: Path | None = None
    # in reading order: `file.py`, `file.py::test_x`, `::test_x` (of the last file named), a bare `test_x`
    for m in re.finditer(r"(test_\w+\.py)(?:::(test_\w+))?|::(test_\w+)|\b(test_\w+)\b(?!\.py)", text):
        file_name, in_file, of_last, bare = m.groups()
        if file_name:
            last_file = _test_file(file_name)
            if in_file:
                assert _defines(last_file, in_file), f"{file_name}::{in_file} is not defined"
        elif of_last:
            assert last_file is not None and _defines(last_file, of_last), f"::{of_last} is not in {last_file}"
        else:
            assert any(_defines(p, bare) for p in TESTS.rglob("test_*.py")), f"{bare} is not defined under tests/"
        checked += 1
    assert checked >= 40
    # the fault table's parametrize ids, e.g. `[encoder-rx.query]`, are (actor, at) pairs of the kill test
    faults = _test_file("test_actor_faults.py").read_text(encoding="utf-8")
    ids = re.findall(r"\[(decoder|encoder|memory|stm|conductor)-([a-z.]+)\]", text)
    assert len(ids) >= 8
    for actor, at in ids:
        assert f'"{actor}", "{at}"' in faults, f"[{actor}-{at}] is not a case of test_killing_an_actor_mid_interaction"


def test_files_the_docs_name_exist():
    for doc in DOCS:
        for path in set(re.findall(r"`([\w./-]+/[\w.-]+\.(?:py|md|sh|json))`", _text(doc))):
            if not path.startswith(".."):  # ../shared lies outside this repository
                assert (ROOT / path).is_file(), f"{doc} names {path}, which does not exist"


def test_the_listed_examples_are_all_the_examples_and_each_is_tested():
    listed = set(re.findall(r"`examples/(\w+)\.py`", _text("README.md")))
    assert listed == {p.stem for p in (ROOT / "examples").glob("*.py")}
    tests = (TESTS / "test_examples.py").read_text(encoding="utf-8")
    for name in listed:
        assert f'load("{name}")' in tests, f"examples/{name}.py is not run by tests/test_examples.py"


def _owner(receiver: str) -> Any:
    from reactor_rt.actors.conductor import Conductor
    from reactor_rt.runtime import Reactor, Stream

    return {"Reactor": Reactor, "rx": Reactor, "stream": Stream, "Stream": Stream, "alice": Stream,
            "Conductor": Conductor}[receiver]


def _check_call(doc: str, receiver: str, method: str, args: str) -> None:
    owner = _owner(receiver)
    assert hasattr(owner, method), f"{doc}: {receiver}.{method}() does not exist"
    params = inspect.signature(getattr(owner, method)).parameters
    for keyword in re.findall(r"(?<![\w.])(\w+)=", args):
        assert keyword in params, f"{doc}: {receiver}.{method}() has no parameter {keyword!r}"


def test_calls_the_docs_show_exist_with_those_keywords():
    calls = 0
    for doc in DOCS:
        text = _flat(doc)
        for receiver, method, args in re.findall(
                r"(?<![\w.])(Reactor|rx|stream|Stream|alice|Conductor)\.(\w+)\(([^()`]*(?:\([^()`]*\)[^()`]*)*)\)", text):
            _check_call(doc, receiver, method, args)
            calls += 1
    assert calls >= 15


def test_dotted_names_the_docs_give_resolve():
    for doc in DOCS:
        for dotted in set(re.findall(r"`(reactor_rt(?:\.\w+)+)", _text(doc))):
            parts = dotted.split(".")
            obj = importlib.import_module(parts[0])
            for i, part in enumerate(parts[1:], start=1):
                try:
                    obj = getattr(obj, part)
                except AttributeError:
                    obj = importlib.import_module(".".join(parts[: i + 1]))
            assert obj is not None, dotted


def test_the_readme_python_example_parses_and_uses_the_api():
    blocks = re.findall(r"```python\n(.*?)```", _text("README.md"), re.S)
    assert blocks
    for block in blocks:
        tree = ast.parse(block)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("Reactor", "rx", "alice"):
                keywords = ", ".join(f"{k.arg}=" for k in node.keywords if k.arg)
                _check_call("README.md", node.func.value.id, node.func.attr, keywords)


def test_the_error_codes_reliability_lists_are_the_runtimes():
    from reactor_rt.error_codes import _BY_CODE

    text = _flat("RELIABILITY.md")
    listed = re.search(r"`rx\.error` \(a typed code: ((?:`\w+`(?:, )?)+)\)", text)
    assert listed is not None
    assert set(re.findall(r"`(\w+)`", listed.group(1))) == set(_BY_CODE)


def test_the_cli_defaults_the_readme_states():
    from reactor_rt.cli import CHAT_HELP, _parser

    parser = _parser()
    assert parser.parse_args(["eval", "recall"]).dialogues == 200  # "200 dialogues a cell"
    for command in ("/new", "/fork NAME", "/memory", "/quit"):
        assert command.split()[0] in CHAT_HELP and command.split()[0] in _text("README.md")
