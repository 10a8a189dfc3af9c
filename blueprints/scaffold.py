"""The cookiecutter scaffold: answers checked once, a team's own project written from them.

`blueprints new` and the template's hooks (cookiecutter-app/hooks/) call these functions; the
hooks run them in a fresh process, so everything here is importable and free of cookiecutter
state. Bad answers raise `ScaffoldError` with one sentence naming the answer and what is allowed.

What the baked project contains beyond the template's static files is produced here from the
package's own knowledge: the stack files from `StackSettings` (its defaults and descriptions), the
app spec (the example with the answers applied, or the team's own spec as written), Pulumi.yaml,
pyproject.toml and `.gitlab-ci.yml`, all through serializers and checked by parsing them back.
The project carries the wheel of the blueprints that baked it (vendor/, see blueprints.vendoring)
and depends on that file, with the versions of its dependencies pinned as uv constraints: it
installs without a package index, the same way on every machine.
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import json
import logging
import os
import posixpath
import re
import shutil
import sys
import tempfile
import textwrap
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from blueprints.render.common import dump_yaml
from blueprints.settings import (
    BLUEPRINT_ONLY,
    DEFAULT_SERVER_TYPE,
    LOCALSTACK_ENDPOINT,
    NAMESPACE,
    StackSettings,
    config_key,
    parse_settings,
    priced_locations,
)
from blueprints.spec import (
    DNS_LABEL,
    EMAIL,
    HOSTNAME,
    SSH_KEY,
    AppSpec,
    SpecError,
    load_spec,
    parse_spec,
    read_yaml,
)
from blueprints.vendoring import build_wheel, installed_pins, wheel_version

# The blueprints a team can bake, in ladder order: THE list. A blueprint that lands adds itself
# here (one line); stack files, CI jobs and tests follow from it.
BLUEPRINTS: tuple[str, ...] = (
    "single-vm",
    "compose",
    "nomad",
    "k8s",
)
# Targets a baked project gets stacks for. `aws` is the localstack stack pointed at real AWS
# (copy the file, drop localstackEndpoint), so it is not offered here.
TARGETS: tuple[str, ...] = ("hcloud", "localstack")
EMULATED = frozenset({"localstack"})  # no real machines: no CI deploy by default, no watchdog
ALL_BLUEPRINTS = "all"
BOTH_TARGETS = "both"

# Every answer, in prompt order; cookiecutter.json has exactly these keys (a test checks).
ANSWER_KEYS = (
    "project_name",
    "project_slug",
    "domain",
    "acme_email",
    "blueprint",
    "target",
    "hcloud_location",
    "admin_cidr",
    "ssh_public_key",
)

SPEC_FILE = "app.yaml"
PROGRAM_FILE = "program.py"
README_MARKER = "<!-- blueprints:stacks -->"
VENDOR_DIR = "vendor"  # the wheel of the blueprints that baked the project
# Answers an app spec of the team's own (`--spec`) already holds: its name, domain and e-mail.
SPEC_HELD = {"project_slug": "name", "domain": "domain", "acme_email": "acme_email"}
# Answers with a fixed set of values, listed at the prompt.
CHOICES: dict[str, tuple[str, ...]] = {
    "blueprint": (*BLUEPRINTS, ALL_BLUEPRINTS),
    "target": (*TARGETS, BOTH_TARGETS),
    "hcloud_location": tuple(priced_locations()),
}

# Pinned tools of the generated CI (bump on purpose). The Pulumi image matches the Pulumi SDK this
# package is developed against; uv is the version scripts/bootstrap pins.
PULUMI_IMAGE = "pulumi/pulumi-python-3.12:3.272.0"
WATCHDOG_IMAGE = "python:3.12.8-bookworm"  # no Pulumi CLI: a promotion is recorded in the file
LOCALSTACK_IMAGE = "localstack/localstack:4.13.1"
UV_VERSION = "0.13.8"
# The scheduled watchdog is a backstop to the long-lived one (`blueprints watchdog-unit`):
# gitlab.com runs a schedule at most every 5 minutes (24 pipelines a day per schedule on the Free
# tier), so one run checks for a minute; resource_group keeps two runs from overlapping.
WATCH_FOR = "60s"

_PROJECT_NAME = re.compile(r"[^\x00-\x1f\x7f{}]{1,80}")
_JINJA = ("{{", "{%", "{#")


class ScaffoldError(ValueError):
    """An answer that cannot be used; the message is one sentence starting with its name."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True)
class Answers:
    """Validated answers; `ssh_key` is the public key read from `ssh_public_key`."""

    project_name: str
    project_slug: str
    domain: str
    acme_email: str
    blueprint: str
    target: str
    hcloud_location: str
    admin_cidr: str
    ssh_public_key: str
    ssh_key: str
    spec: str = ""  # the team's own app spec (absolute path); "" bakes the example

    @property
    def blueprints(self) -> list[str]:
        return list(BLUEPRINTS) if self.blueprint == ALL_BLUEPRINTS else [self.blueprint]

    @property
    def targets(self) -> list[str]:
        return list(TARGETS) if self.target == BOTH_TARGETS else [self.target]

    @property
    def stacks(self) -> list[tuple[str, str]]:
        """(blueprint, target) of every stack the project gets, in ladder order."""
        return [(b, t) for b in self.blueprints for t in self.targets]


# ---------------------------------------------------------------------------------------------
# Answers


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ScaffoldError(key, f"must be text (got {type(value).__name__})")
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):  # undecodable bytes, as Python keeps them
        raise ScaffoldError(key, f"{value!r} is not valid UTF-8 text")
    if any(mark in value for mark in _JINJA):
        raise ScaffoldError(
            key, "must not contain {{, {% or {# (cookiecutter reads them as a template)"
        )
    return value


def check_project_name(value: Any) -> str:
    v = _text("project_name", value)
    if not _PROJECT_NAME.fullmatch(v):
        raise ScaffoldError(
            "project_name", f"must be one line of 1 to 80 characters without {{ or }} (got {v!r})"
        )
    return v


def check_slug(value: Any) -> str:
    v = _text("project_slug", value)
    if not DNS_LABEL.match(v):
        raise ScaffoldError(
            "project_slug",
            f"{v!r} is not a valid slug; use lower-case letters, digits and hyphens, starting "
            "with a letter and at most 63 characters (it names the app and its cloud resources)",
        )
    return v


def check_domain(value: Any) -> str:
    v = _text("domain", value)
    if not HOSTNAME.match(v):
        raise ScaffoldError("domain", f"{v!r} is not a lower-case DNS name like app.example.com")
    return v


def check_email(value: Any) -> str:
    v = _text("acme_email", value)
    if not EMAIL.match(v):
        raise ScaffoldError("acme_email", f"{v!r} is not an e-mail address like ops@example.com")
    return v


def check_blueprint(value: Any) -> str:
    v = _text("blueprint", value)
    allowed = (*BLUEPRINTS, ALL_BLUEPRINTS)
    if v not in allowed:
        raise ScaffoldError("blueprint", f"{v!r} is not a blueprint; allowed: {', '.join(allowed)}")
    return v


def check_target(value: Any) -> str:
    v = _text("target", value)
    allowed = (*TARGETS, BOTH_TARGETS)
    if v not in allowed:
        raise ScaffoldError("target", f"{v!r} is not a target; allowed: {', '.join(allowed)}")
    return v


def check_location(value: Any) -> str:
    v = _text("hcloud_location", value)
    if v not in priced_locations():
        raise ScaffoldError(
            "hcloud_location",
            f"{v!r} is not a Hetzner Cloud location; allowed: {', '.join(priced_locations())}",
        )
    return v


def check_cidr(value: Any) -> str:
    v = _text("admin_cidr", value)
    try:
        net = ipaddress.ip_network(v, strict=False)
    except ValueError:
        raise ScaffoldError(
            "admin_cidr", f"{v!r} is not a network in CIDR form like 203.0.113.0/24"
        ) from None
    if "/" not in v:
        raise ScaffoldError("admin_cidr", f"{v!r} has no prefix length; did you mean {net}?")
    if net.network_address != ipaddress.ip_address(v.split("/")[0]):
        raise ScaffoldError("admin_cidr", f"{v!r} has host bits set; did you mean {net}?")
    return str(net)


def check_ssh_key_path(value: Any) -> str:
    v = _text("ssh_public_key", value)
    if not v:
        raise ScaffoldError(
            "ssh_public_key",
            "is empty; give the path of your SSH public key (~/.ssh/id_ed25519.pub)",
        )
    return v


def read_ssh_key(value: Any, base: Path | None = None) -> tuple[Path, str]:
    """(absolute path, key) of the public key file; relative paths are read from `base`."""
    path = Path(os.path.expanduser(check_ssh_key_path(value)))
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScaffoldError(
            "ssh_public_key",
            f"{path}: no such file; give the path of your SSH public key (e.g. "
            "~/.ssh/id_ed25519.pub, made by ssh-keygen -t ed25519)",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc.__class__.__name__
        raise ScaffoldError("ssh_public_key", f"{path}: cannot be read ({reason})") from None
    if "PRIVATE KEY" in text:
        raise ScaffoldError(
            "ssh_public_key", f"{path}: is a private key; give the public one (the .pub file)"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 1 or not SSH_KEY.match(lines[0]):
        raise ScaffoldError(
            "ssh_public_key",
            f"{path}: is not one SSH public key (one line starting with ssh-ed25519, ssh-rsa "
            "or ecdsa-sha2-nistp256)",
        )
    return path, lines[0]


CHECKS = {
    "project_name": check_project_name,
    "project_slug": check_slug,
    "domain": check_domain,
    "acme_email": check_email,
    "blueprint": check_blueprint,
    "target": check_target,
    "hcloud_location": check_location,
    "admin_cidr": check_cidr,
    "ssh_public_key": check_ssh_key_path,
}


def check_given(answers: Mapping[str, Any]) -> dict[str, str]:
    """Check answers one by one, as given (before cookiecutter derives the others)."""
    unknown = sorted(set(answers) - set(CHECKS))
    if unknown:
        raise ScaffoldError(unknown[0], f"is not an answer; answers: {', '.join(ANSWER_KEYS)}")
    return {key: CHECKS[key](value) for key, value in answers.items()}


def read_spec(path: str | Path) -> tuple[Path, AppSpec]:
    """The team's own app spec (`--spec`), validated by the spec's rules (SpecError if not)."""
    p = Path(os.path.expanduser(str(path)))
    return p.absolute(), load_spec(p)


def open_answers(app: AppSpec | None) -> tuple[str, ...]:
    """The answers a person gives, in prompt order: all of them for the example; for a spec
    of the team's own, those it leaves open (its name, domain and e-mail are its own; the admin
    SSH keys and networks only when it lists none)."""
    if app is None:
        return ANSWER_KEYS
    held = set(SPEC_HELD)
    if app.admin.cidrs:
        held.add("admin_cidr")
    if app.admin.ssh_keys:
        held.add("ssh_public_key")
    return tuple(k for k in ANSWER_KEYS if k not in held)


def spec_defaults(app: AppSpec) -> dict[str, str]:
    """The answers a spec of the team's own gives (what `new` passes on for it)."""
    answers = {key: getattr(app, field) for key, field in SPEC_HELD.items()}
    answers["project_name"] = app.name
    if app.admin.cidrs:
        answers["admin_cidr"] = app.admin.cidrs[0]
    if app.admin.ssh_keys:
        answers["ssh_public_key"] = ""  # the spec lists its keys; no key file is read
    return answers


def check_against_spec(
    given: Mapping[str, str], app: AppSpec, spec: Path, base: Path | None = None
) -> None:
    """An answer the spec already holds must say what the spec says: the spec is baked as
    written, never contradicted."""
    for key, field in SPEC_HELD.items():
        if key in given and given[key] != getattr(app, field):
            raise ScaffoldError(
                key,
                f"{given[key]!r} differs from the spec's {field} {getattr(app, field)!r} "
                f"({spec}); the spec is baked as written: change it there, or leave this "
                "answer out",
            )
    cidr = given.get("admin_cidr")
    if cidr and app.admin.cidrs and cidr not in app.admin.cidrs:
        raise ScaffoldError(
            "admin_cidr",
            f"{cidr} is not among the spec's admin.cidrs ({', '.join(app.admin.cidrs)}; "
            f"{spec}); add it there, or leave this answer out",
        )
    key_path = given.get("ssh_public_key")
    if key_path and app.admin.ssh_keys:
        path, key = read_ssh_key(key_path, base)
        if key not in app.admin.ssh_keys:
            raise ScaffoldError(
                "ssh_public_key",
                f"{path}: this key is not among the spec's admin.ssh_keys ({spec}); add it "
                "there, or leave this answer out",
            )


def validate_answers(answers: Mapping[str, Any], base: Path | None = None) -> Answers:
    """All answers (cookiecutter's context; private `_` keys ignored but `_spec`, the team's
    own app spec when given), or the first problem."""
    missing = [k for k in ANSWER_KEYS if k not in answers]
    if missing:
        raise ScaffoldError(missing[0], "is missing")
    spec_path, app = read_spec(answers["_spec"]) if answers.get("_spec") else (None, None)
    asked = open_answers(app)
    # With a spec, an answer it holds is only checked when it says something (not "").
    given = check_given({k: answers[k] for k in ANSWER_KEYS if k in asked or answers[k] != ""})
    if app is not None and spec_path is not None:
        check_against_spec(given, app, spec_path, base)
    path, key = "", ""
    if "ssh_public_key" in asked or given.get("ssh_public_key"):
        read = read_ssh_key(given["ssh_public_key"], base)
        path, key = str(read[0]), read[1]
    values = {k: given.get(k, "") for k in ANSWER_KEYS}
    return Answers(**{**values, "ssh_public_key": path}, ssh_key=key, spec=str(spec_path or ""))


# ---------------------------------------------------------------------------------------------
# Where the package keeps the template and the example (a source checkout or an editable install)


def _packaged(*parts: str) -> Path | None:
    """A scaffold file: inside the package when a wheel carries it (blueprints/_scaffold/, see
    the README), else in the source checkout an editable install points at."""
    for base in (
        Path(__file__).resolve().parent / "_scaffold",
        Path(__file__).resolve().parents[1],
    ):
        if (base.joinpath(*parts)).exists():
            return base.joinpath(*parts)
    return None


def template_dir() -> Path:
    path = _packaged("cookiecutter-app", "cookiecutter.json")
    if path is None:
        raise ScaffoldError(
            "template",
            "cookiecutter-app/ is not part of this blueprints install; install blueprints from "
            "its git repository (pip install -e <checkout>)",
        )
    return path.parent


def example_spec_path() -> Path:
    path = _packaged("examples", "app.yaml")
    if path is None:
        raise ScaffoldError(
            "template",
            "examples/app.yaml is not part of this blueprints install; install blueprints from "
            "its git repository (pip install -e <checkout>)",
        )
    return path


def package_version() -> str:
    try:
        return importlib.metadata.version("blueprints")
    except importlib.metadata.PackageNotFoundError:
        raise ScaffoldError(
            "blueprints", "is not installed as a package, so there is no version to pin"
        ) from None


# ---------------------------------------------------------------------------------------------
# The files a baked project gets


def stack_name(blueprint: str, target: str) -> str:
    return f"{blueprint}-{target}"


def _comment(text: str, indent: str = "") -> str:
    lines = textwrap.wrap(text, width=96 - len(indent) - 2) or [""]
    return "".join(f"{indent}# {line}\n" for line in lines)


def _entry(field: str, value: Any, indent: str = "  ") -> str:
    return indent + dump_yaml({config_key(field): value})


def stack_settings(blueprint: str, target: str, answers: Answers) -> list[tuple[str, Any, bool]]:
    """(field, value, describe) in file order: what the stack states explicitly. The
    blueprint's own keys come with their defaults and descriptions, so a team sees its knobs."""
    cloud = "aws" if target in ("aws", "localstack") else "hcloud"
    rows: list[tuple[str, Any, bool]] = [
        ("blueprint", blueprint, False),
        ("target", target, False),
        ("spec", SPEC_FILE, False),
    ]
    if cloud == "hcloud":
        rows.append(("location", answers.hcloud_location, False))
    if target == "localstack":
        defaults = StackSettings.model_fields
        rows += [
            ("localstack_endpoint", LOCALSTACK_ENDPOINT, False),
            ("region", defaults["region"].default, False),
            ("zone", f"{defaults['region'].default}a", False),
        ]
    rows.append(("server_type", DEFAULT_SERVER_TYPE[(blueprint, cloud)], False))
    for field in BLUEPRINT_ONLY.get(blueprint, ()):
        rows.append((field, StackSettings.model_fields[field].default, True))
    rows.append(("protect_data", True, True))
    return rows


def secret_commands(target: str, secret_names: list[str]) -> list[str]:
    cmds = []
    if target == "hcloud":
        cmds.append(
            "pulumi config set --secret hcloud:token   # Hetzner Cloud API token (read/write)"
        )
    cmds += [
        f"pulumi config set --secret --path '{NAMESPACE}:secrets.{name}' ..."
        for name in secret_names
    ]
    return cmds


def stack_file_text(blueprint: str, target: str, answers: Answers, secret_names: list[str]) -> str:
    stack = stack_name(blueprint, target)
    where = "Hetzner Cloud" if target == "hcloud" else "AWS emulated by LocalStack"
    head = _comment(
        f"{blueprint} on {where}, generated by `blueprints new` (blueprints {package_version()}). "
        "A key left out takes its default (the blueprints README lists every key)."
    )
    head += _comment(
        f"Before the first `pulumi up --stack {stack}`, set the secrets (encrypted in this file, "
        "never in plain text):"
    )
    head += "".join(f"#   {cmd}\n" for cmd in secret_commands(target, secret_names))
    body = "config:\n"
    for field, value, describe in stack_settings(blueprint, target, answers):
        description = StackSettings.model_fields[field].description
        if describe and description:
            body += _comment(description, indent="  ")
        if value is None:
            # Unset by default (an optional feature): shown, commented out, to be filled in.
            body += f"  # {config_key(field)}:\n"
            continue
        body += _entry(field, value)
    text = head + body
    # What was written must read back as exactly these settings.
    config = yaml.safe_load(text)["config"]
    prefix = f"{NAMESPACE}:"
    parse_settings({k[len(prefix) :]: v for k, v in config.items()}, f"stacks/Pulumi.{stack}.yaml")
    return text


def _entry_of(mapping: yaml.MappingNode, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    """The (key, value) nodes of `key` in a composed mapping, or None."""
    for k, v in mapping.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return k, v
    return None


def _node_end(text: str, node: yaml.Node) -> int:
    """Where a node's own text ends. A block collection ends with its last entry, not where
    the parser saw the next token (so the comments and blank lines after it are not part of
    it). A block scalar (`|`, `>`) ends after its line breaks, which may be part of its value
    (`|+`): then the end is at the start of a line."""
    block = isinstance(node, yaml.MappingNode | yaml.SequenceNode) and not node.flow_style
    if block and node.value:
        last = node.value[-1]
        return _node_end(text, last[1] if isinstance(node, yaml.MappingNode) else last)
    end = node.end_mark.index
    while end > node.start_mark.index and text[end - 1] in " \t":  # the next line's indent
        end -= 1
    return end


def _own_node(key: yaml.Node, value: yaml.Node, where: str) -> yaml.Node:
    """The value node, written after its key (not an alias of a value written elsewhere)."""
    if value.start_mark.index < key.end_mark.index:
        raise ScaffoldError(
            "spec",
            f"{where}{key.value}: is an alias (*name) of a value written elsewhere in the file; "
            "write it out to have it filled in",
        )
    return value


def _block_entry(key: str, value: Any, column: int) -> str:
    """`key: value` in block style, its lines indented for a mapping at `column` (the first
    line starts where the key goes; no final line break)."""
    lines = dump_yaml({key: value}).rstrip("\n").split("\n")
    return ("\n" + " " * column).join(lines)


def _flow(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)  # JSON is YAML's flow style


def _set_entries(
    text: str, mapping: yaml.MappingNode, entries: Mapping[str, Any], where: str
) -> str:
    """`text` with these keys of one mapping set: replaced where present, added where not,
    every other character of the file (comments, blank lines, order) kept. Where each key and
    value is comes from the composed YAML nodes' positions, not from guessing by lines.
    `where` names the mapping in messages (`app.yaml: admin.`)."""
    edits: list[tuple[int, int, str]] = []
    present = {}
    for key in entries:
        found = _entry_of(mapping, key)
        if found is not None:
            present[key] = (found[0], _own_node(*found, where))
    missing = {key: value for key, value in entries.items() if key not in present}
    if mapping.flow_style:  # {a: 1, b: 2}: values replaced in place, new entries after "{"
        for key, (_, node) in present.items():
            edits.append((node.start_mark.index, node.end_mark.index, _flow(entries[key])))
        if missing:
            at = mapping.start_mark.index + 1
            added = ", ".join(f"{_flow(k)}: {_flow(v)}" for k, v in missing.items())
            edits.append((at, at, added + (", " if mapping.value else "")))
    else:  # a block mapping: an entry is replaced from its key to its value's end
        column = mapping.value[0][0].start_mark.column
        for key, (key_node, node) in present.items():
            if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.flow_style:
                # `ssh_keys: []  # none yet` keeps its style (and its comment's place)
                edits.append((node.start_mark.index, node.end_mark.index, _flow(entries[key])))
                continue
            start, end = key_node.start_mark.index, _node_end(text, node)
            eol = "\n" if text[end - 1] == "\n" else ""  # a block scalar's end: a line start
            edits.append((start, end, _block_entry(key, entries[key], column) + eol))
        if missing:  # new entries after the last one, at the same indentation
            at = _node_end(text, mapping)
            lines = [" " * column + _block_entry(k, v, column) for k, v in missing.items()]
            if text[at - 1] == "\n":
                added = "".join(line + "\n" for line in lines)
            else:
                added = "".join("\n" + line for line in lines)
            edits.append((at, at, added))
    for start, end, new in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _top_mapping(text: str, source: str | Path) -> yaml.MappingNode:
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(node, yaml.MappingNode) or not node.value:
        raise ScaffoldError("spec", f"{source}: the top level is not a YAML mapping of keys")
    return node


def app_spec_text(example: str, answers: Answers) -> str:
    """The example app spec with the answers applied; checked with the spec's own rules."""
    admin = {"ssh_keys": [answers.ssh_key], "cidrs": [answers.admin_cidr]}
    entries = {
        "name": answers.project_slug,
        "domain": answers.domain,
        "acme_email": answers.acme_email,
        "admin": admin,
    }
    text = _set_entries(example, _top_mapping(example, SPEC_FILE), entries, f"{SPEC_FILE}: ")
    head = _comment(
        f"{answers.project_name}: the app spec (what the app needs), started from the blueprints "
        "example. Replace the services with your own; check it with `blueprints validate "
        f"{SPEC_FILE}`."
    )
    text = head + text
    app = parse_spec(strict_yaml(text), SPEC_FILE)
    if (app.name, app.domain, app.acme_email, app.admin.model_dump()) != (
        answers.project_slug,
        answers.domain,
        answers.acme_email,
        admin,
    ):
        raise ScaffoldError("template", f"{SPEC_FILE}: the answers could not be applied")
    return text


def pulumi_yaml_text(answers: Answers) -> str:
    data = {
        "name": answers.project_slug,
        "description": f"{answers.project_name}: infrastructure from the app spec {SPEC_FILE} "
        "(blueprints).",
        "main": PROGRAM_FILE,
        "stackConfigDir": "stacks",
        "runtime": {"name": "python", "options": {"toolchain": "uv", "virtualenv": ".venv"}},
        # Promotions move the volume and IP outside Pulumi: read the cloud before each update.
        "options": {"refresh": "always"},
    }
    head = _comment(
        "The Pulumi project: `pulumi up` runs program.py with the stack's config from "
        "stacks/Pulumi.<stack>.yaml; uv installs pyproject.toml's dependencies into .venv."
    )
    return head + dump_yaml(data)


def admin_filled(app: AppSpec, answers: Answers) -> dict[str, list[str]]:
    """The admin block a spec of the team's own is baked with: its lists, the empty ones
    filled from the answers."""
    admin = app.admin.model_dump()
    return {
        "ssh_keys": admin["ssh_keys"] or [answers.ssh_key],
        "cidrs": admin["cidrs"] or [answers.admin_cidr],
    }


def user_spec_text(text: str, app: AppSpec, answers: Answers, source: str | Path) -> str:
    """The team's own spec as written; only admin lists it leaves empty are filled from the
    answers (a spec made by `blueprints import` has none): inside its admin mapping when it
    has one (only those keys set, its comments and other keys kept), else as a new admin."""
    filled = admin_filled(app, answers)
    empty = {key: value for key, value in filled.items() if not getattr(app.admin, key)}
    if not empty:
        return text
    top = _top_mapping(text, source)
    found = _entry_of(top, "admin")
    if found is not None:
        admin = _own_node(*found, f"{source}: ")
        if isinstance(admin, yaml.MappingNode) and admin.value:
            return _set_entries(text, admin, empty, f"{source}: admin.")
    return _set_entries(text, top, {"admin": filled}, f"{source}: ")


def strict_yaml(text: str) -> Any:
    """A spec's text as data, read as `load_spec` reads it: a key given twice is an error."""
    return read_yaml(text)


def spec_sources(text: str) -> list[str]:
    """The files a (validated) spec reads its services' file contents from, relative to it and
    normalised (`./config//a.yml` is `config/a.yml`): the path each lands on in the project."""
    data = yaml.safe_load(text) or {}
    return sorted(
        {
            posixpath.normpath(f["source"])
            for svc in (data.get("services") or {}).values()
            for f in (svc or {}).get("files") or ()
            if isinstance(f, dict) and isinstance(f.get("source"), str)
        }
    )


_TOML_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def toml_string(value: str) -> str:
    """A TOML basic string ("..."): any Unicode character as itself (UTF-8 in the file), but
    the quote, the backslash and the control characters TOML forbids there (U+0000-U+001F and
    U+007F) escaped. A lone surrogate has no UTF-8 form and is refused."""
    out = []
    for ch in value:
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            raise ScaffoldError("template", f"{value!r} holds a lone surrogate (not UTF-8)")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def requires_python(version: tuple[int, ...] = tuple(sys.version_info)) -> str:
    """The Pythons a baked project runs on: the baking one's minor version and up. Its pins are
    the versions installed for this Python, and a pinned version may need this Python (or a
    newer one): with an older lower bound `uv lock` could not resolve for those Pythons."""
    return f">={version[0]}.{version[1]}"


def pyproject_text(answers: Answers, wheel: str, pins: list[str]) -> str:
    """The project's pyproject.toml: blueprints from the wheel in vendor/ (the version that
    baked it), every other package pinned, as a uv constraint, to the version that blueprints
    runs with here, for Pythons from this one's minor version up (`requires_python`)."""
    q = toml_string
    version = wheel_version(Path(wheel))
    pinned = "".join(f"    {q(pin)},\n" for pin in pins)
    text = f"""\
# {answers.project_slug}: the app's infrastructure, deployed by the blueprints package.
# Install: uv sync (offline too: uv's cache is enough), then commit uv.lock and vendor/.

[project]
name = {q(answers.project_slug)}
version = "0.1.0"
description = {q(f"{answers.project_name}: infrastructure (Pulumi, blueprints)")}
requires-python = {q(requires_python())}
dependencies = [
    # The blueprints that baked this project, from the wheel in {VENDOR_DIR}/ ([tool.uv.sources]
    # below): no package index needed. A newer blueprints may change what `pulumi up` deploys,
    # so upgrade on purpose (README.md: Upgrading blueprints) and read `pulumi preview` first.
    {q(f"blueprints=={version}")},
]

[dependency-groups]
dev = ["pytest>=8"]

[tool.uv]
package = false  # a Pulumi project, not a library
# The versions blueprints {version} ran with where it baked this project (its dependencies and
# pytest's): every machine resolves to these, from uv's cache when offline. Loosen on purpose.
constraint-dependencies = [
{pinned}]

[tool.uv.sources]
blueprints = {{ path = {q(f"{VENDOR_DIR}/{wheel}")} }}

[tool.pytest.ini_options]
testpaths = ["tests"]
addopts = "-ra"
filterwarnings = ["ignore::DeprecationWarning:pulumi_aws.*"]
"""
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScaffoldError("template", f"pyproject.toml: is not valid TOML ({exc})") from None
    expected = {
        "name": answers.project_slug,
        "description": f"{answers.project_name}: infrastructure (Pulumi, blueprints)",
        "dependencies": [f"blueprints=={version}"],
        "requires-python": requires_python(),
        "source": {"path": f"{VENDOR_DIR}/{wheel}"},
        "pins": pins,
    }
    found = {
        "name": parsed["project"]["name"],
        "description": parsed["project"]["description"],
        "dependencies": parsed["project"]["dependencies"],
        "requires-python": parsed["project"]["requires-python"],
        "source": parsed["tool"]["uv"]["sources"]["blueprints"],
        "pins": parsed["tool"]["uv"]["constraint-dependencies"],
    }
    if found != expected:
        raise ScaffoldError("template", "pyproject.toml: does not read back as written")
    return text


def wheel_requirements(wheel: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's METADATA (what it installs with)."""
    import email.parser
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.HeaderParser().parsestr(zf.read(name).decode("utf-8"))
    return meta.get_all("Requires-Dist") or []


def project_pins(wheel: Path) -> list[str]:
    """The constraints of a baked project: what the wheel and pytest need, at the versions
    installed here; blueprints itself comes from the wheel."""
    return [
        pin
        for pin in installed_pins([*wheel_requirements(wheel), "pytest"])
        if not pin.startswith("blueprints==")
    ]


# -- .gitlab-ci.yml ------------------------------------------------------------------------------

MR = '$CI_PIPELINE_SOURCE == "merge_request_event"'
MAIN = '$CI_PIPELINE_SOURCE == "push" && $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH'
SCHEDULE = '$CI_PIPELINE_SOURCE == "schedule"'
UV_SYNC = "if [ -f uv.lock ]; then uv sync --locked; else uv sync; fi"


def has_watchdog(blueprint: str, target: str) -> bool:
    """A blueprint whose stacks carry the watchdog's settings fails over by itself; on an
    emulator no machine runs, so there is nothing to watch."""
    return "watch_interval" in BLUEPRINT_ONLY.get(blueprint, ()) and target not in EMULATED


def _job(name: str, job: dict[str, Any]) -> str:
    return dump_yaml({name: job}) + "\n"


def gitlab_ci_text(answers: Answers) -> str:
    stacks = [stack_name(b, t) for b, t in answers.stacks]
    emulated = {stack_name(b, t) for b, t in answers.stacks if t in EMULATED}
    watched = [stack_name(b, t) for b, t in answers.stacks if has_watchdog(b, t)]
    localstack_service = {"name": LOCALSTACK_IMAGE, "alias": "localstack"}

    out = _comment(
        f"CI/CD of {answers.project_slug}, generated by `blueprints new` "
        f"(blueprints {package_version()})."
    )
    out += """\
#
# Merge requests: validate the app spec, plan every stack offline, run the project's tests,
#   `pulumi preview --json` per stack (artifacts preview-<stack>.json), and one report comment on
#   the merge request (`blueprints preview-report`).
# Default branch: `pulumi up` per stack. Every job that changes a stack holds the resource_group
#   named after it, so two deploys of a stack never overlap (nor a deploy and the watchdog).
# Schedules (CI/CD > Schedules, e.g. hourly): a backstop check of single-VM stacks' failover; the
#   watchdog itself runs as a service (`blueprints watchdog-unit`, blueprints README: Failover).
#
# CI/CD variables (Settings > CI/CD > Variables, masked):
#   PULUMI_ACCESS_TOKEN   the Pulumi Cloud backend; for a self-managed backend set
#                         PULUMI_BACKEND_URL and PULUMI_CONFIG_PASSPHRASE instead
#   HCLOUD_TOKEN          the watchdog's Hetzner API token (pulumi reads hcloud:token from the
#                         stack file, where `pulumi config set --secret` encrypted it)
#   LOCALSTACK_ENDPOINT   optional: a LocalStack that outlives the job (e.g. on your runner's
#                         host); only then are the localstack stacks deployed
#   GITLAB_TOKEN          optional: a project access token with the `api` scope (Reporter or
#                         above) that posts the preview report on the merge request
#   WATCHDOG_WEBHOOK      optional: a chat webhook the watchdog posts a promotion to

"""
    out += dump_yaml(
        {
            "stages": ["validate", "preview", "report", "deploy", "watch"],
            "variables": {"UV_VERSION": UV_VERSION, "UV_CACHE_DIR": ".uv-cache"},
        }
    )
    out += "\n"
    out += _comment("Python, uv and the project's dependencies (blueprints, Pulumi SDKs).")
    out += _job(
        ".blueprints",
        {
            "image": PULUMI_IMAGE,
            "cache": {"key": {"files": ["pyproject.toml"]}, "paths": [".uv-cache/"]},
            "before_script": [
                'python -m pip install --quiet "uv==${UV_VERSION}"',
                UV_SYNC,
            ],
        },
    )
    out += _job(
        "validate",
        {
            "extends": ".blueprints",
            "stage": "validate",
            "rules": [{"if": MR}, {"if": MAIN}],
            "script": [
                f"uv run blueprints validate {SPEC_FILE}",
                "uv run blueprints plan --all",
                "uv run pytest -q",
            ],
        },
    )
    for stack in stacks:
        job: dict[str, Any] = {
            "extends": ".blueprints",
            "stage": "preview",
            "needs": ["validate"],
            "rules": [{"if": MR}],
            "script": [
                f"pulumi stack select --create {stack}",
                # --show-sames: the report recognises the server holding the volume through
                # its (often unchanged) attachment.
                f"pulumi preview --stack {stack} --json --show-sames"
                + (
                    " --config blueprints:localstackEndpoint=http://localstack:4566"
                    if stack in emulated
                    else ""
                )
                + f" > preview-{stack}.json",
            ],
            "artifacts": {
                "when": "always",
                "expire_in": "30 days",
                "paths": [f"preview-{stack}.json"],
            },
        }
        if stack in emulated:
            job["services"] = [localstack_service]
        if stack in emulated:
            out += _comment(
                "A throwaway LocalStack serves the preview (the stack file's endpoint is this "
                "machine's; in CI it is the service).",
            )
        out += _job(f"preview:{stack}", job)
    files = " ".join(f"preview-{stack}.json" for stack in stacks)
    out += _comment(
        "One comment on the merge request, updated in place on every pipeline: per-stack "
        "summary, a warning for any replace or delete of data (volumes, IPs, the server holding "
        "the volume), the monthly cost delta, per-resource details. It needs GITLAB_TOKEN: a "
        "project access token with the `api` scope (the job token cannot write notes); without "
        "it the report is only kept as an artifact. A data-loss change fails the job, so a "
        "merge that needs a passing pipeline is blocked until someone looks."
    )
    out += _job(
        "preview-report",
        {
            "extends": ".blueprints",
            "stage": "report",
            "needs": [{"job": f"preview:{stack}", "artifacts": True} for stack in stacks],
            # Also after a failed preview: its JSON carries the errors, the report shows them
            # and --fail-on data-loss fails (exit 5), since Pulumi stopped before the end.
            "rules": [{"if": MR, "when": "always"}],
            "script": [
                f"uv run blueprints preview-report {files} --output preview-report.md"
                " --fail-on data-loss ${GITLAB_TOKEN:+--gitlab}",
            ],
            "artifacts": {"when": "always", "expire_in": "30 days", "paths": ["preview-report.md"]},
        },
    )
    for stack in stacks:
        script = [f"pulumi stack select --create {stack}"]
        rules: list[dict[str, Any]] = [{"if": MAIN}]
        if stack in emulated:
            rules = [{"if": f"{MAIN} && $LOCALSTACK_ENDPOINT"}]
            script.append(
                f"pulumi up --yes --refresh --stack {stack} "
                '--config "blueprints:localstackEndpoint=${LOCALSTACK_ENDPOINT}"'
            )
            out += _comment(
                "LocalStack keeps nothing after a job ends, so this deploys only to a LocalStack "
                "that outlives it (CI/CD variable LOCALSTACK_ENDPOINT)."
            )
        else:
            script.append(f"pulumi up --yes --refresh --stack {stack}")
        out += _job(
            f"deploy:{stack}",
            {
                "extends": ".blueprints",
                "stage": "deploy",
                "needs": ["validate"],
                "resource_group": stack,
                "environment": {"name": stack},
                "rules": rules,
                "script": script,
            },
        )
    for stack in watched:
        out += _comment(
            f"A backstop watchdog of {stack}: probes the app every few seconds for {WATCH_FOR}, "
            "promotes the spare if the primary's host is dead and fails (exit 4) if the app fails "
            "on a live host (blueprints README: Failover). A promotion is recorded in stacks/ "
            "here, in CI's checkout only: the job then fails and keeps the changed stack file as "
            "an artifact to commit (the next deploy keeps the app where the cloud runs it, and "
            "warns until the file agrees)."
        )
        out += _job(
            f"watchdog:{stack}",
            {
                "extends": ".blueprints",
                "image": WATCHDOG_IMAGE,
                "stage": "watch",
                "needs": [],
                "resource_group": stack,
                "rules": [{"if": SCHEDULE}],
                "timeout": "10 minutes",
                "script": [
                    f"uv run blueprints watch {stack} --for {WATCH_FOR}"
                    ' ${WATCHDOG_WEBHOOK:+--notify "$WATCHDOG_WEBHOOK"}',
                    "if ! git diff --quiet -- stacks/; then git diff -- stacks/; echo "
                    f'"{stack} was promoted: commit stacks/ (artifact), then run pulumi up '
                    f'--refresh --stack {stack}"; exit 1; fi',
                ],
                "artifacts": {"when": "on_failure", "paths": ["stacks/"]},
            },
        )
    yaml.safe_load(out)  # must parse; the tests also run GitLab's schema over it
    return out


def readme_stacks_section(answers: Answers, secret_names: list[str]) -> str:
    rows = ["| stack | blueprint | runs on |", "|---|---|---|"]
    for b, t in answers.stacks:
        where = (
            f"Hetzner Cloud ({answers.hcloud_location})"
            if t == "hcloud"
            else "AWS emulated by LocalStack"
        )
        rows.append(f"| `{stack_name(b, t)}` | {b} | {where} |")
    lines = [*rows, "", "For each stack, once:", "", "```sh"]
    for b, t in answers.stacks:
        stack = stack_name(b, t)
        lines.append(f"pulumi stack init {stack}")
        lines += secret_commands(t, secret_names)
        lines.append("")
    lines[-1] = "```"
    return "\n".join(lines)


def _refuse_source(spec: str | Path, rel: str) -> None:
    raise ScaffoldError(
        "spec",
        f"{spec}: the file {rel} its services read would land on the baked project's own "
        f"{rel}; move it into a directory of its own (like config/)",
    )


def check_spec_sources(spec: Path) -> None:
    """The files a spec's services read come along at the same relative paths: none may be a
    file the project has itself (checked before baking)."""
    own = {SPEC_FILE, "Pulumi.yaml", "pyproject.toml", ".gitlab-ci.yml", "uv.lock"}
    project = template_dir() / "{{cookiecutter.project_slug}}"
    own |= {p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()}
    for rel in spec_sources(spec.read_text(encoding="utf-8")):  # normalised paths
        parts = rel.split("/")
        prefixes = {"/".join(parts[:n]) for n in range(1, len(parts) + 1)}
        if prefixes & own or parts[0] in (VENDOR_DIR, "stacks"):
            _refuse_source(spec, rel)


def _baked_spec(answers: Answers) -> tuple[str, list[str], AppSpec]:
    """(app.yaml's text, the files its services read, the spec it holds), read back the way
    `load_spec` reads the baked file (a key given twice refused), so a spec that cannot be
    baked is refused here, naming the team's spec, before anything is written."""
    if not answers.spec:
        text = app_spec_text(example_spec_path().read_text(encoding="utf-8"), answers)
        return text, [], parse_spec(strict_yaml(text), SPEC_FILE)
    source = Path(answers.spec)
    app = load_spec(source)
    text = user_spec_text(source.read_text(encoding="utf-8"), app, answers, source)
    if text == source.read_text(encoding="utf-8"):
        return text, spec_sources(text), app
    filling = "admin " + " and ".join(k for k in ("ssh_keys", "cidrs") if not getattr(app.admin, k))
    refuse = (
        f"{source}: filling in its empty {filling} from the answers did not give the same "
        "spec ({}); list them in the spec itself"
    )
    try:
        baked = parse_spec(strict_yaml(text), str(source), source.parent)
    except yaml.YAMLError as exc:
        raise ScaffoldError("spec", refuse.format(getattr(exc, "problem", None) or exc)) from None
    except SpecError as exc:
        raise ScaffoldError("spec", refuse.format(exc.lines[0])) from None
    if baked.model_dump(exclude={"admin"}) != app.model_dump(exclude={"admin"}):
        raise ScaffoldError("spec", refuse.format("other fields changed"))
    if baked.admin.model_dump() != admin_filled(app, answers):
        raise ScaffoldError("spec", refuse.format("admin is not what was filled in"))
    return text, spec_sources(text), baked


def write_project(project_dir: Path, answers: Answers, wheel: Path | None = None) -> list[str]:
    """Write the answer-dependent files into a baked project (the post-generation hook): the
    app spec and the files its services read, the wheel of blueprints in vendor/ (`wheel`, or
    built now), pyproject.toml, Pulumi.yaml, the stack files, .gitlab-ci.yml and the README's
    stacks section."""
    if answers.spec:
        check_spec_sources(Path(answers.spec))
    spec_text, sources, app = _baked_spec(answers)
    secret_names = app.secret_names()
    vendor = project_dir / VENDOR_DIR
    vendor.mkdir(parents=True, exist_ok=True)
    if wheel is None:
        wheel = build_wheel(vendor)
    else:
        wheel_version(wheel)
        wheel = Path(shutil.copyfile(wheel, vendor / wheel.name))
    files = {
        SPEC_FILE: spec_text,
        "Pulumi.yaml": pulumi_yaml_text(answers),
        "pyproject.toml": pyproject_text(answers, wheel.name, project_pins(wheel)),
        ".gitlab-ci.yml": gitlab_ci_text(answers),
    }
    for b, t in answers.stacks:
        files[f"stacks/Pulumi.{stack_name(b, t)}.yaml"] = stack_file_text(
            b, t, answers, secret_names
        )
    readme = project_dir / "README.md"
    text = readme.read_text(encoding="utf-8")
    if README_MARKER not in text:
        raise ScaffoldError("template", f"README.md has no {README_MARKER} line")
    files["README.md"] = text.replace(README_MARKER, readme_stacks_section(answers, secret_names))
    for rel in sources:  # a spec's own files, beside it as beside the spec they came with
        if rel in files or (project_dir / rel).exists():
            _refuse_source(answers.spec, rel)
        (project_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(answers.spec).parent / rel, project_dir / rel)
    for rel, content in files.items():
        path = project_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    try:  # what was written is the spec, files and all
        written: AppSpec | None = load_spec(project_dir / SPEC_FILE)
    except SpecError:
        written = None
    if written != app:
        raise ScaffoldError(
            "spec",
            f"{answers.spec or example_spec_path()}: written into the project as {SPEC_FILE}, "
            "it does not read back as the same spec (did it or a file it reads change while "
            "baking?)",
        )
    return sorted([*files, *sources, f"{VENDOR_DIR}/{wheel.name}"])


# ---------------------------------------------------------------------------------------------
# Baking (the `blueprints new` command)


class AnswersRefused(Exception):
    """A hook refused an answer; it has printed its sentence already."""


@dataclass(frozen=True)
class Question:
    """One prompt of `blueprints new`: the answer's key, the text shown (its choices listed,
    when it has a fixed set) and the suggested answer (Enter keeps it)."""

    key: str
    text: str
    default: str


def _context(template: Path, given: Mapping[str, str]) -> dict[str, Any]:
    from cookiecutter.generate import generate_context

    return generate_context(
        context_file=str(template / "cookiecutter.json"), extra_context=dict(given)
    )


def resolve_answers(given: Mapping[str, str], template: Path) -> dict[str, str]:
    """Every answer as cookiecutter would settle it without prompting (defaults rendered)."""
    from cookiecutter.prompt import prompt_for_config

    settled = prompt_for_config(_context(template, given), no_input=True)
    return {k: settled[k] for k in ANSWER_KEYS}


def ask_answers(
    given: Mapping[str, str],
    template: Path,
    ask: Callable[[Question], str],
    complain: Callable[[str], None],
    *,
    spec: tuple[Path, AppSpec] | None = None,
    base: Path | None = None,
) -> dict[str, str]:
    """Ask each open answer in prompt order and check it right at its prompt: a bad one is
    said in one sentence (`complain`) and asked again, the answers before it kept. Answers
    given as options are the suggestions; what a spec of the team's own holds is not asked. A
    Hetzner location is not asked when only LocalStack stacks are baked."""
    from cookiecutter.prompt import render_variable
    from cookiecutter.utils import create_env_with_context

    context = _context(template, given)
    env = create_env_with_context(context)
    raw = context["cookiecutter"]
    prompts = raw.get("__prompts__", {})
    app = spec[1] if spec else None
    asked = open_answers(app)
    answers: dict[str, str] = {**spec_defaults(app), **given} if app else {}
    for n, key in enumerate(asked, start=1):
        default = given[key] if key in given else render_variable(env, raw[key], answers)
        if app is not None and key == "project_name" and key not in given:
            default = app.name
        if key == "hcloud_location" and answers.get("target") == "localstack":
            answers[key] = default
            continue
        text = f"[{n}/{len(asked)}] {prompts.get(key, key)}"
        if key in CHOICES:
            text += f" ({', '.join(CHOICES[key])})"
        while True:
            value = ask(Question(key, text, str(default)))
            try:
                value = CHECKS[key](value)
                if key == "ssh_public_key":
                    value = str(read_ssh_key(value, base)[0])
                break
            except ScaffoldError as exc:
                complain(str(exc))
        answers[key] = value
    return answers


def _refuse_destination(dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise ScaffoldError("directory", f"{dest}: exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()):
        raise ScaffoldError("directory", f"{dest}: is not empty; choose a new or empty directory")


def bake(
    dest: Path | None,
    given: Mapping[str, str],
    *,
    spec: Path | None = None,
    ask: Callable[[Question], str] | None = None,
    complain: Callable[[str], None] | None = None,
    step: Callable[[str], None] | None = None,
    cwd: Path | None = None,
    config_file: Path | None = None,
) -> Path:
    """Bake a project into `dest` (default ./<slug>): all of it or nothing.

    Everything is checked before anything is written: the options, the spec (`spec`: the
    team's own instead of the example), the destination, and each answer at its prompt (`ask`;
    without it, the options and the defaults). The project is generated by cookiecutter in a
    temporary directory beside the destination, without prompting, and moved into place only
    when both hooks succeeded. Raises ScaffoldError, SpecError (the spec) or VendorError (no
    wheel of blueprints to carry).
    """
    from cookiecutter.exceptions import CookiecutterException, FailedHookException
    from cookiecutter.main import cookiecutter

    cwd = cwd or Path.cwd()
    step = step or (lambda _text: None)
    answers = check_given(given)
    if answers.get("ssh_public_key"):  # relative to where the command runs, not the hook's dir
        answers["ssh_public_key"] = str(read_ssh_key(answers["ssh_public_key"], cwd)[0])
    own = None
    if spec is not None:  # errors name the spec as given when it is read from here
        own = read_spec(spec if spec.is_absolute() or cwd == Path.cwd() else cwd / spec)
        check_against_spec(answers, own[1], own[0], cwd)
        check_spec_sources(own[0])
    template = template_dir()
    if dest is not None:
        dest = dest if dest.is_absolute() else cwd / dest
        _refuse_destination(dest)
    parent = dest.parent if dest is not None else cwd
    if not parent.is_dir():
        raise ScaffoldError("directory", f"{parent}: no such directory")
    try:
        if ask is not None:
            answers = ask_answers(
                answers, template, ask, complain or (lambda _m: None), spec=own, base=cwd
            )
        elif own is not None:
            answers = {**spec_defaults(own[1]), **answers}
        settled = resolve_answers(answers, template)
    except CookiecutterException as exc:
        raise ScaffoldError("template", str(exc)) from None
    private = {"_cwd": str(cwd), "_spec": str(own[0]) if own else ""}
    valid = validate_answers({**settled, **private}, cwd)
    _baked_spec(valid)  # the spec as it will be baked: refused now, naming the team's spec
    if dest is None:
        _refuse_destination(parent / valid.project_slug)

    staging = Path(tempfile.mkdtemp(prefix=".blueprints-new-", dir=parent))
    # Cookiecutter logs a refused hook with a traceback; the hook has said why in one line.
    log = logging.getLogger("cookiecutter")
    quiet = logging.NullHandler()
    log.addHandler(quiet)
    propagate, log.propagate = log.propagate, False
    try:
        step("building the wheel of blueprints")
        wheel = build_wheel(staging / ".wheel")
        step("writing the project")
        (staging / "out").mkdir()
        try:
            baked = Path(
                cookiecutter(
                    str(template),
                    no_input=True,
                    extra_context={**settled, **private, "_wheel": str(wheel)},
                    output_dir=str(staging / "out"),
                    config_file=str(config_file) if config_file else None,
                    default_config=config_file is None,
                )
            )
        except FailedHookException:
            raise AnswersRefused() from None
        except CookiecutterException as exc:
            raise ScaffoldError("template", str(exc)) from None
        final = dest if dest is not None else parent / baked.name
        _refuse_destination(final)
        if final.is_dir():
            final.rmdir()
        baked.rename(final)
        return final
    finally:
        log.removeHandler(quiet)
        log.propagate = propagate
        shutil.rmtree(staging, ignore_errors=True)


__all__ = [
    "ALL_BLUEPRINTS",
    "ANSWER_KEYS",
    "BLUEPRINTS",
    "BOTH_TARGETS",
    "CHOICES",
    "TARGETS",
    "Answers",
    "AnswersRefused",
    "Question",
    "ScaffoldError",
    "ask_answers",
    "bake",
    "validate_answers",
    "write_project",
]
