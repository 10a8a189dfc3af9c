"""The cookiecutter scaffold: answers checked once, a team's own project written from them.

`blueprints new` and the template's hooks (cookiecutter-app/hooks/) call these functions; the
hooks run them in a fresh process, so everything here is importable and free of cookiecutter
state. Bad answers raise `ScaffoldError` with one sentence naming the answer and what is allowed.

What the baked project contains beyond the template's static files is produced here from the
package's own knowledge: the stack files from `StackSettings` (its defaults and descriptions), the
app spec from the example with the answers applied, Pulumi.yaml, pyproject.toml (pinned to this
package's version) and `.gitlab-ci.yml`, all through serializers and checked by parsing them back.
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import json
import logging
import os
import re
import shutil
import tempfile
import textwrap
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from blueprints.render.common import dump_yaml
from blueprints.settings import (
    BLUEPRINT_ONLY,
    DEFAULT_SERVER_TYPE,
    HCLOUD_LOCATIONS,
    LOCALSTACK_ENDPOINT,
    NAMESPACE,
    StackSettings,
    config_key,
    parse_settings,
)
from blueprints.spec import DNS_LABEL, EMAIL, HOSTNAME, SSH_KEY, parse_spec

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
    if v not in HCLOUD_LOCATIONS:
        raise ScaffoldError(
            "hcloud_location",
            f"{v!r} is not a Hetzner Cloud location; allowed: {', '.join(HCLOUD_LOCATIONS)}",
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


def validate_answers(answers: Mapping[str, Any], base: Path | None = None) -> Answers:
    """All answers (cookiecutter's context; private `_` keys ignored), or the first problem."""
    missing = [k for k in ANSWER_KEYS if k not in answers]
    if missing:
        raise ScaffoldError(missing[0], "is missing")
    given = check_given({k: answers[k] for k in ANSWER_KEYS})
    path, key = read_ssh_key(given["ssh_public_key"], base)
    return Answers(**{**given, "ssh_public_key": str(path)}, ssh_key=key)


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


def _set_top_level(text: str, key: str, value: Any) -> str:
    """Replace the block of a top-level key (its line and the indented lines below it) with
    the serialized value, keeping every other line (and comment) of the file."""
    block = dump_yaml({key: value})
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if re.match(rf"{re.escape(key)}\s*:", line):
            end = i + 1
            while end < len(lines) and lines[end].startswith((" ", "\t", "- ")):
                end += 1
            return "".join(lines[:i]) + block + "".join(lines[end:])
    return text + ("" if text.endswith("\n") else "\n") + block


def app_spec_text(example: str, answers: Answers) -> str:
    """The example app spec with the answers applied; checked with the spec's own rules."""
    text = example
    admin = {"ssh_keys": [answers.ssh_key], "cidrs": [answers.admin_cidr]}
    for key, value in (
        ("name", answers.project_slug),
        ("domain", answers.domain),
        ("acme_email", answers.acme_email),
        ("admin", admin),
    ):
        text = _set_top_level(text, key, value)
    head = _comment(
        f"{answers.project_name}: the app spec (what the app needs), started from the blueprints "
        "example. Replace the services with your own; check it with `blueprints validate "
        f"{SPEC_FILE}`."
    )
    text = head + text
    data = yaml.safe_load(text)
    app = parse_spec(data, SPEC_FILE)
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


def pyproject_text(answers: Answers, version: str) -> str:
    def q(s: str) -> str:  # a TOML basic string (JSON's escapes are TOML's)
        return json.dumps(s, ensure_ascii=True)

    text = f"""\
# {answers.project_slug}: the app's infrastructure, deployed by the blueprints package.
# Install: uv sync (then commit uv.lock, so CI and every machine install the same versions).

[project]
name = {q(answers.project_slug)}
version = "0.1.0"
description = {q(f"{answers.project_name}: infrastructure (Pulumi, blueprints)")}
requires-python = ">=3.11"
dependencies = [
    # Pinned to the version that generated this project: a newer blueprints may change what
    # `pulumi up` deploys, so upgrade on purpose and read `pulumi preview` first.
    {q(f"blueprints=={version}")},
]
# blueprints not on your package index? Install it from its git repository instead, either by
# replacing the line above with
#     "blueprints @ git+https://gitlab.example.com/you/blueprints.git@v{version}",
# or by keeping it and telling uv where it lives:
#     [tool.uv.sources]
#     blueprints = {{ git = "https://gitlab.example.com/you/blueprints.git", tag = "v{version}" }}

[dependency-groups]
dev = ["pytest>=8"]

[tool.uv]
package = false  # a Pulumi project, not a library

[tool.pytest.ini_options]
testpaths = ["tests"]
addopts = "-ra"
filterwarnings = ["ignore::DeprecationWarning:pulumi_aws.*"]
"""
    parsed = tomllib.loads(text)
    assert parsed["project"]["dependencies"] == [f"blueprints=={version}"]
    return text


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


def write_project(project_dir: Path, answers: Answers) -> list[str]:
    """Write the answer-dependent files into a baked project (the post-generation hook)."""
    example = example_spec_path().read_text(encoding="utf-8")
    spec_text = app_spec_text(example, answers)
    secret_names = parse_spec(yaml.safe_load(spec_text), SPEC_FILE).secret_names()
    files = {
        SPEC_FILE: spec_text,
        "Pulumi.yaml": pulumi_yaml_text(answers),
        "pyproject.toml": pyproject_text(answers, package_version()),
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
    for rel, content in files.items():
        path = project_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    return sorted(files)


# ---------------------------------------------------------------------------------------------
# Baking (the `blueprints new` command)


class AnswersRefused(Exception):
    """A hook refused an answer typed at a prompt; it has printed its sentence already."""


def resolve_answers(given: Mapping[str, str], template: Path) -> dict[str, Any]:
    """Every answer as cookiecutter would settle it without prompting (defaults rendered)."""
    from cookiecutter.generate import generate_context
    from cookiecutter.prompt import prompt_for_config

    context = generate_context(
        context_file=str(template / "cookiecutter.json"), extra_context=dict(given)
    )
    return dict(prompt_for_config(context, no_input=True))


def _refuse_destination(dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise ScaffoldError("directory", f"{dest}: exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()):
        raise ScaffoldError("directory", f"{dest}: is not empty; choose a new or empty directory")


def bake(
    dest: Path | None,
    given: Mapping[str, str],
    *,
    no_input: bool,
    cwd: Path | None = None,
    config_file: Path | None = None,
) -> Path:
    """Bake a project into `dest` (default ./<slug>): all of it or nothing.

    The project is generated in a temporary directory beside the destination and moved into
    place only when cookiecutter and both hooks succeeded.
    """
    from cookiecutter.exceptions import CookiecutterException, FailedHookException
    from cookiecutter.main import cookiecutter

    cwd = cwd or Path.cwd()
    answers = check_given(given)
    if "ssh_public_key" in answers:  # relative to where the command runs, not the hook's dir
        answers["ssh_public_key"] = str(read_ssh_key(answers["ssh_public_key"], cwd)[0])
    template = template_dir()
    if dest is not None:
        dest = dest if dest.is_absolute() else cwd / dest
        _refuse_destination(dest)
    if no_input:
        try:
            validate_answers(resolve_answers(answers, template), cwd)
        except CookiecutterException as exc:
            raise ScaffoldError("template", str(exc)) from None
    parent = dest.parent if dest is not None else cwd
    if not parent.is_dir():
        raise ScaffoldError("directory", f"{parent}: no such directory")

    staging = Path(tempfile.mkdtemp(prefix=".blueprints-new-", dir=parent))
    # Cookiecutter logs a refused hook with a traceback; the hook has said why in one line.
    log = logging.getLogger("cookiecutter")
    quiet = logging.NullHandler()
    log.addHandler(quiet)
    propagate, log.propagate = log.propagate, False
    try:
        try:
            baked = Path(
                cookiecutter(
                    str(template),
                    no_input=no_input,
                    extra_context={**answers, "_cwd": str(cwd)},
                    output_dir=str(staging),
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
    "TARGETS",
    "Answers",
    "AnswersRefused",
    "ScaffoldError",
    "bake",
    "validate_answers",
    "write_project",
]
