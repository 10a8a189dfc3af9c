"""Serializers, quoting and the jinja environment shared by every renderer.

Structured formats (YAML, JSON) only ever come from a serializer with sorted keys. Jinja2 is for
formats without one (shell scripts, systemd units), and there every value from the spec passes a
quoting filter: `shell` (shlex.quote) in scripts, `unit_word` (a strict allow-list) in units
(`unit_words` for a value of several such words, `unit_name` for the \\xHH escapes of a
systemd-escaped unit name).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from typing import Any

import jinja2
import yaml

from blueprints.yaml_text import FastDumper

# Characters that need no escaping anywhere in a unit file: systemd expands % (specifiers) and
# $ (environment) and splits on whitespace and quotes, none of which are in here.
_UNIT_WORD = re.compile(r"[A-Za-z0-9@._:/-]+")


# Words bash reads as syntax in some positions. As an argument they mean themselves, but
# quoting them costs nothing and keeps a reader (and shellcheck) from taking `x then` for code.
_SHELL_RESERVED = frozenset(
    [
        "!",
        "[[",
        "]]",
        "{",
        "}",
        "case",
        "coproc",
        "do",
        "done",
        "elif",
        "else",
        "esac",
        "fi",
        "for",
        "function",
        "if",
        "in",
        "select",
        "then",
        "time",
        "until",
        "while",
    ]
)


def shell_quote(value: object) -> str:
    """Quote one value as a single shell word; NUL cannot be passed to a process, so refuse it."""
    text = str(value)
    if "\0" in text:
        # The value itself stays out of the message: it may be sensitive.
        raise ValueError("a value contains a NUL character, which no process argument can hold")
    if text in _SHELL_RESERVED:
        return f"'{text}'"
    return shlex.quote(text)


def unit_word(value: object) -> str:
    """Let a value into a systemd unit only if it cannot mean anything but itself there."""
    text = str(value)
    if not _UNIT_WORD.fullmatch(text):  # fullmatch: `$` would let a final newline in
        raise ValueError(
            f"{text!r} cannot be written into a systemd unit safely "
            "(allowed: letters, digits and @._:/-)"
        )
    return text


# A value of several words (an OnCalendar= expression, a cron line in a comment): unit_word's
# characters plus single spaces, * , and ~, none of which systemd expands.
_UNIT_WORDS = re.compile(r"[A-Za-z0-9@._:/*,~-]+(?: [A-Za-z0-9@._:/*,~-]+)*")


def unit_words(value: object) -> str:
    """Let a value of space-separated words into a systemd unit only if it cannot mean anything
    but itself there (a calendar expression like `Mon,Fri *-*-* 03:00:00 UTC`)."""
    text = str(value)
    if not _UNIT_WORDS.fullmatch(text):
        raise ValueError(
            f"{text!r} cannot be written into a systemd unit safely "
            "(allowed: words of letters, digits and @._:/*,~- separated by single spaces)"
        )
    return text


# A unit name as systemd-escape writes it: unit_word's characters plus \xHH escapes, nothing else.
_UNIT_NAME = re.compile(r"(?:[A-Za-z0-9@._:-]|\\x[0-9a-f]{2})+")


def unit_name(value: object) -> str:
    """Let an escaped unit name (dev-disk-by\\x2did-....device) into a unit file; a backslash
    only as part of a \\xHH escape, which systemd reads back as that byte of the name."""
    text = str(value)
    if not _UNIT_NAME.fullmatch(text):
        raise ValueError(f"{text!r} is not an escaped systemd unit name")
    return text


def systemd_escape_path(path: str) -> str:
    """The unit-name form of a path, as `systemd-escape --path` prints it."""
    trimmed = path.strip("/")
    if not trimmed:
        return "-"
    out = []
    for i, ch in enumerate(trimmed):
        if ch == "/":
            out.append("-")
        elif ch.isascii() and (ch.isalnum() or ch in ":_" or (ch == "." and i > 0)):
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    return "".join(out)


def docker_env_file(values: Mapping[str, str], what: str = "variable") -> str:
    """A `docker run --env-file` file: one NAME=value line per variable, sorted by name.

    Docker reads the value verbatim up to the end of the line (no quotes, no escapes), so a value
    spanning lines cannot be written at all; it gets a clear error instead of a silent truncation.
    """
    lines = []
    for name in sorted(values):
        value = values[name]
        for bad, label in (("\n", "a newline"), ("\r", "a carriage return"), ("\0", "a NUL")):
            if bad in value:
                raise ValueError(
                    f"{what} {name} contains {label}; docker env files hold one line per "
                    "variable, so its value must be a single line"
                )
        lines.append(f"{name}={value}\n")
    return "".join(lines)


_UNICODE_LINE_BREAKS = "\x85\u2028\u2029"


class _Dumper(FastDumper):
    """A safe dumper printing multi-line strings as `|` blocks, so embedded files read well,
    and quoting every string another YAML reader would take for a bool, number, null or date
    (blueprints/yaml_text.py: k3s and Compose read with Go's YAML, not PyYAML's)."""


def _represent_str(dumper: Any, data: str) -> yaml.nodes.ScalarNode:
    style: str | None = None
    if any(ch in data for ch in _UNICODE_LINE_BREAKS):
        # YAML also breaks lines at these; PyYAML would emit them raw (and lose them) in a
        # block or plain scalar, so only an escaped double-quoted string keeps them.
        style = '"'
    elif "\n" in data:
        # PyYAML falls back to a quoted style by itself when a block cannot hold the text exactly
        # (trailing spaces, control characters), so asking for a block never changes the value.
        style = "|"
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(data: Any) -> str:
    return yaml.dump(
        data,
        Dumper=_Dumper,
        sort_keys=True,
        default_flow_style=False,
        allow_unicode=True,
        width=1_000_000,
    )


def dump_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


_HCL_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def hcl_string(value: object) -> str:
    """One value as an HCL quoted string literal (Nomad job files, agent configs).

    HCL's escapes are \\" \\\\ \\n \\r \\t and \\uNNNN (not JSON's \\b or \\f), so other control
    characters are written as \\uNNNN. HCL also starts an interpolation at `${` and a directive
    at `%{` inside quotes, so the brace after `$` or `%` is written as \\u007b: HCL then sees
    `$` followed by a backslash, which starts nothing, and reads the value back as `${`. (HCL's
    own `$${` means the same, but python-hcl2, the validator, cannot lex it when no `}` follows
    in the same string.) NUL is refused: no process can receive it.
    """
    if isinstance(value, jinja2.Undefined):
        raise ValueError("undefined value passed to the hcl filter")
    text = str(value)
    if "\0" in text:
        raise ValueError("a value contains a NUL character, which no process can receive")
    out = []
    for i, ch in enumerate(text):
        if ch in _HCL_ESCAPES:
            out.append(_HCL_ESCAPES[ch])
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        elif ch == "{" and i and text[i - 1] in "$%":
            out.append("\\u007b")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


_HCL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def hcl_name(value: object) -> str:
    """Let a value into HCL as an attribute name (an env block's keys) only if it is a plain
    identifier; anything else could end the attribute and start another."""
    text = str(value)
    if not _HCL_NAME.fullmatch(text):
        raise ValueError(f"{text!r} cannot be an HCL attribute name (letters, digits and _)")
    return text


def _shell_filter(value: object) -> str:
    if isinstance(value, jinja2.Undefined):
        raise ValueError("undefined value passed to the shell filter")
    return shell_quote(value)


def _shell_words(values: Iterable[object]) -> str:
    return " ".join(shell_quote(v) for v in values)


# Rungs with a package of their own under blueprints/rungs.
RUNGS = ("nomad", "k8s")


@cache
def template_env() -> jinja2.Environment:
    env = jinja2.Environment(
        # A rung that lives in its own package (blueprints/rungs/<rung>) keeps its templates
        # there; they are named "<rung>/<file>" as before.
        loader=jinja2.ChoiceLoader(
            [
                jinja2.PrefixLoader(
                    {
                        **{
                            rung: jinja2.PackageLoader(f"blueprints.rungs.{rung}") for rung in RUNGS
                        },
                        # The backup units every VM rung shares.
                        "backup": jinja2.PackageLoader("blueprints.backup"),
                    }
                ),
                jinja2.PackageLoader("blueprints.render", "templates"),
            ]
        ),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["shell"] = _shell_filter
    env.filters["shell_words"] = _shell_words
    env.filters["unit_word"] = unit_word
    env.filters["unit_words"] = unit_words
    env.filters["unit_name"] = unit_name
    env.filters["hcl"] = hcl_string
    env.filters["hcl_name"] = hcl_name
    return env


def render_template(template: str, **values: Any) -> str:
    return template_env().get_template(template).render(**values)


def static_file(name: str) -> str:
    """A file shipped verbatim (it holds no spec values, so it needs no template)."""
    return (resources.files("blueprints.render") / "templates" / name).read_text(encoding="utf-8")
