"""The README's `blueprints ...` commands run as printed after its setup command: `make demo` (or
`make setup`) installs into .venv and `source .venv/bin/activate` puts `blueprints` on PATH.

Every command in a fenced shell block that invokes blueprints is checked: its subcommand exists,
its `--help` works, every option it uses is one the subcommand has and its arguments fit. The
cheap ones run for real through the activated shell, and where the README shows their output,
that output is compared."""

from __future__ import annotations

import math
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import typer.main
from typer.testing import CliRunner

from blueprints.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHELL_BLOCKS = {"", "sh", "bash", "shell", "console"}
OPERATORS = {">", ">>", "|", "&&", "||", ";", "2>", "2>&1", "&"}
ACTIVATE = "source .venv/bin/activate"


@dataclass
class Command:
    line: int  # in README.md
    argv: list[str]  # after `blueprints`
    shown: list[str] = field(default_factory=list)  # output printed under a `$ ` command

    def __str__(self) -> str:
        return f"README.md:{self.line}: blueprints {shlex.join(self.argv)}"


def readme_commands(text: str) -> list[Command]:
    commands: list[Command] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"\s*```(\S*)\s*$", lines[i])
        i += 1
        if not fence:
            continue
        lang, block, start = fence[1], [], i
        while i < len(lines) and not re.match(r"\s*```\s*$", lines[i]):
            block.append(lines[i])
            i += 1
        i += 1
        if lang not in SHELL_BLOCKS:
            continue
        current: Command | None = None
        j = 0
        while j < len(block):
            number, line = start + j + 1, block[j]
            while line.endswith("\\") and j + 1 < len(block):  # continuation lines
                j += 1
                line = line[:-1] + " " + block[j].strip()
            j += 1
            prompt = line.startswith("$ ")
            try:
                words = shlex.split(line[2:] if prompt else line, comments=True)
            except ValueError:
                words = []
            argv = None
            if words[:1] == ["blueprints"] or words[:1] == [".venv/bin/blueprints"]:
                argv = words[1:]
            elif words[:3] == ["uv", "run", "blueprints"]:
                argv = words[3:]
            if argv is not None:
                cut = next((k for k, w in enumerate(argv) if w in OPERATORS), len(argv))
                current = Command(number, argv[:cut])
                commands.append(current)
                if not prompt:
                    current = None
            elif prompt:
                current = None
            elif current is not None:
                current.shown.append(line)
    return commands


COMMANDS = readme_commands(README.read_text())
GROUP = typer.main.get_command(app)  # typer's own click: parameters told apart by their kind


def activated(script: str, cwd: Path, home: Path) -> subprocess.CompletedProcess:
    """A bash on a PATH without the project, after the README's activation line."""
    return subprocess.run(
        ["bash", "-c", f"cd {shlex.quote(str(ROOT))} && {ACTIVATE} && cd - >/dev/null && {script}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200"},
    )


def test_the_readme_finds_its_commands():
    assert len(COMMANDS) >= 30, [str(c) for c in COMMANDS]
    used = {c.argv[0] for c in COMMANDS if c.argv}
    assert {"validate", "plan", "render", "new", "compare", "diff"} <= used


def test_the_setup_puts_blueprints_on_path_as_the_readme_says(tmp_path):
    setup = README.read_text().split("\n## ", 2)[1]  # the first section: "Two commands"
    assert "make demo" in setup and ACTIVATE in setup
    bare = subprocess.run(
        ["bash", "-c", "command -v blueprints"], capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert bare.returncode != 0  # not on PATH before
    res = activated("command -v blueprints", tmp_path, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(ROOT / ".venv" / "bin" / "blueprints")


def _problems(command: Command) -> list[str]:
    if not command.argv:
        return ["no subcommand"]
    sub, *tokens = command.argv
    cmd = GROUP.commands.get(sub)
    if cmd is None:
        return [f"no subcommand {sub!r}"]
    options = {
        name: param
        for param in cmd.params
        if param.param_type_name == "option"
        for name in (*param.opts, *param.secondary_opts)
    }
    arguments = [p for p in cmd.params if p.param_type_name == "argument"]
    most = math.inf if any(a.nargs == -1 for a in arguments) else sum(a.nargs for a in arguments)
    least = sum(max(a.nargs, 1) for a in arguments if a.required)
    problems, positional, k = [], 0, 0
    while k < len(tokens):
        token = tokens[k]
        if token.startswith("-") and token != "-":
            name, eq, _ = token.partition("=")
            param = options.get(name)
            if param is None:
                problems.append(f"{sub} has no option {name}")
            elif not (param.is_flag or param.count or eq):
                k += 1  # its value
                if k >= len(tokens):
                    problems.append(f"{name} needs a value")
        else:
            positional += 1
        k += 1
    if not least <= positional <= most:
        problems.append(f"{positional} arguments, {sub} takes {least} to {most}")
    return problems


def test_every_blueprints_command_in_the_readme_parses():
    problems = [f"{c}: {p}" for c in COMMANDS for p in _problems(c)]
    assert not problems, "\n".join(problems)
    runner = CliRunner()
    for sub in sorted({c.argv[0] for c in COMMANDS}):
        res = runner.invoke(app, [sub, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, (sub, res.output)
        assert "Usage:" in res.output


def test_the_cheap_ones_run_as_printed(tmp_path):
    ran = []
    for command in COMMANDS:
        sub, args = command.argv[0], command.argv[1:]
        if sub == "validate" and all((ROOT / a).is_file() for a in args if not a.startswith("-")):
            res = activated(f"blueprints {shlex.join(command.argv)}", ROOT, tmp_path)
            assert res.returncode == 0, (str(command), res.stderr)
            assert res.stdout.startswith(f"ok {args[0]}: app "), res.stdout
        elif sub == "new" and "--no-input" in args and command.shown:
            # An example of a refused answer: nothing is written, the output is as shown.
            work = tmp_path / f"new-{command.line}"
            work.mkdir()
            res = activated(f"blueprints {shlex.join(command.argv)}", work, tmp_path)
            assert res.returncode == 2, (str(command), res.stdout, res.stderr)
            assert (res.stdout + res.stderr).splitlines() == command.shown, str(command)
            assert list(work.iterdir()) == []
        else:
            continue
        ran.append(str(command))
    assert len(ran) >= 2, ran  # at least the spec check and the refused answer
