"""The README's snippets, as a test reads them: its Python blocks and its shell lines, and the
``sdn`` commands among them (also inside ``ray job submit ... -- sdn ...`` and
``ray exec ... "sdn ..."``). Used by ``tests/test_readme.py`` and by ``tests/test_workflow.py``,
which holds the trained sweep the model snippets need."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def readme() -> str:
    return README.read_text(encoding="utf-8")


def python_blocks(text: str | None = None) -> list[str]:
    """Every fenced ```python block."""
    return re.findall(r"^```python\n(.*?)^```", text or readme(), flags=re.S | re.M)


def shell_lines(text: str | None = None) -> list[str]:
    """Every line of the indented (4-space) code blocks and ```bash fences, continuation lines
    (ending in a backslash) joined."""
    text = text or readme()
    lines: list[str] = []
    in_fence = False
    fence_is_shell = False
    previous_blank = True
    in_indented = False
    for raw in text.splitlines():
        if raw.startswith("```"):
            in_fence = not in_fence
            fence_is_shell = in_fence and raw.strip() in ("```bash", "```sh", "```console")
            continue
        if in_fence:
            if fence_is_shell:
                lines.append(raw)
            continue
        if raw.startswith("    ") and (previous_blank or in_indented):
            in_indented = True
            lines.append(raw[4:])
        elif raw.strip():
            in_indented = False
        previous_blank = not raw.strip()
    joined: list[str] = []
    for line in lines:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line.strip()
        else:
            joined.append(line)
    return [line for line in joined if line.strip()]


def _is_sdn(word: str) -> bool:
    return word == "sdn" or word.endswith("/sdn")


def sdn_commands(text: str | None = None, direct: bool = False) -> list[list[str]]:
    """The arguments of every ``sdn`` command in the README's shell lines, in order; with
    ``direct``, only lines that are an ``sdn`` command (not one run on a cluster through ray)."""
    found = []
    for line in shell_lines(text):
        words = shlex.split(line, comments=True)
        if direct and not (words and _is_sdn(words[0])):
            continue
        for i, word in enumerate(words):
            if _is_sdn(word):
                found.append(words[i + 1 :])
                break
            inner = shlex.split(word) if " " in word else []
            if inner and _is_sdn(inner[0]):
                found.append(inner[1:])
                break
    return found


def check_parses(args: list[str]) -> str:
    """Parse ``sdn ARGS`` with the CLI's own parser, without running it: the command path exists
    and every option and argument is accepted. Returns the command path; raises the CLI's
    usage error otherwise."""
    import typer

    from workflows.cli import app

    command = typer.main.get_command(app)
    path = ["sdn"]
    rest = list(args)
    while rest and hasattr(command, "commands") and rest[0] in command.commands:
        command = command.commands[rest[0]]
        path.append(rest.pop(0))
    if hasattr(command, "commands"):
        raise AssertionError(f"`sdn {' '.join(args)}` does not name a command")
    with command.make_context(" ".join(path), rest) as ctx:
        assert ctx.command is command
    return " ".join(path)


def run_python(code: str, cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    """Run one snippet as written in a fresh interpreter in ``cwd``; return its stdout."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, f"README snippet failed:\n{code}\n--- stderr:\n{done.stderr}"
    return done.stdout
