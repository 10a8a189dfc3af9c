"""The Pulumi program: read stack settings and the app spec, build the chosen blueprint.

`pulumi up` runs this through blueprints/program.py (Pulumi.yaml `main`); the offline plan runs
the very same file under Pulumi's mock runtime.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime.config import CONFIG, get_config_env, is_config_secret

from blueprints.settings import (
    BACKUP_SECRET_KEY,
    NAMESPACE,
    StackFile,
    checked_settings,
    load_stack_file,
)
from blueprints.spec import AppSpec, SpecError, format_path, load_spec

SECRETS_KEY = "secrets"


# Blueprint name -> "module:Class" of its ComponentResource, imported only when a stack uses it.
BLUEPRINT_COMPONENTS = {
    "single-vm": "blueprints.single_vm:SingleVm",
    "compose": "blueprints.compose:Compose",
    "nomad": "blueprints.rungs.nomad.component:Nomad",
    "k8s": "blueprints.rungs.k8s.component:K8s",
}


def blueprint_class(name: str) -> type:
    module, _, cls = BLUEPRINT_COMPONENTS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def project_dir() -> Path:
    return Path(pulumi.get_root_directory() or os.getcwd())


def namespace_config() -> dict[str, Any]:
    """Every `blueprints:` key of the running stack, without the namespace (values as given)."""
    merged = {**get_config_env(), **CONFIG.get()}
    prefix = f"{NAMESPACE}:"
    return {k[len(prefix) :]: v for k, v in merged.items() if k.startswith(prefix)}


def stack_file(stack: str) -> StackFile | None:
    """The running stack's file as written (stackConfigDir/Pulumi.<stack>.yaml), with the line
    of each key; None when there is none (its config comes from elsewhere)."""
    from blueprints.plan import PlanError, read_project

    root = project_dir()
    try:
        _, stacks_dir, _ = read_project(root)
    except PlanError as exc:
        raise SpecError([str(exc)]) from None
    path = stacks_dir / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        return None
    shown = path.relative_to(root) if path.is_relative_to(root) else path
    return load_stack_file(path, str(shown))


def missing_secrets(
    app: AppSpec, given: dict[str, Any], source: str, file: StackFile | None = None
) -> list[str]:
    lines = []
    for name in app.secret_names():
        key = f"{NAMESPACE}:{SECRETS_KEY}.{name}"
        where = file.at(key) if file is not None else source
        if name not in given:
            lines.append(
                f"{source}: {key}: is not set; run pulumi config set --secret --path '{key}' VALUE"
            )
        elif not isinstance(given[name], str) or "\n" in given[name] or "\0" in given[name]:
            lines.append(
                f"{where}: {key}: must be a one-line string "
                "(docker env files hold one line per variable)"
            )
        elif any((ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F for ch in given[name]):
            lines.append(
                f"{where}: {key}: contains a control character; "
                "a secret reaches the app as an environment variable, which holds printable "
                "text and tabs only here"
            )
    return lines


def deploy() -> None:
    stack = pulumi.get_stack()
    raw = namespace_config()
    secret_raw = raw.pop(SECRETS_KEY, None)
    # Read by the component itself (pulumi.Config.get_secret), never part of the settings.
    snapshot_key = raw.pop(BACKUP_SECRET_KEY, None)
    try:
        file = stack_file(stack)
        source = file.shown if file is not None else f"stacks/Pulumi.{stack}.yaml"
        # The stack file first: keys nothing reads, settings and their server type and place.
        settings, warnings = checked_settings(raw, source, file)
        app = load_spec(project_dir() / settings.spec)
        secrets = json.loads(secret_raw) if isinstance(secret_raw, str) else (secret_raw or {})
        if not isinstance(secrets, dict):
            raise SpecError([f"{source}: {NAMESPACE}:{SECRETS_KEY}: must be a map of NAME: value"])
        blueprint = blueprint_class(settings.blueprint)
        spec_path = project_dir() / settings.spec
        problems = [
            f"{spec_path}: {format_path(path)}: {message}" for path, message in blueprint.check(app)
        ]
        check_settings = getattr(blueprint, "check_settings", None)
        if check_settings is not None:
            problems += [f"{source}: {line}" for line in check_settings(app, settings)]
        problems += missing_secrets(app, secrets, source, file)
        if snapshot_key and any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in str(snapshot_key)):
            problems.append(
                f"{source}: {NAMESPACE}:{BACKUP_SECRET_KEY}: contains a space or a control "
                "character, which no S3 secret key has; set it again with `pulumi config set "
                f"--secret {NAMESPACE}:{BACKUP_SECRET_KEY} VALUE`"
            )
        if settings.backup_bucket is not None and not snapshot_key:
            problems.append(
                f"{source}: {NAMESPACE}:{BACKUP_SECRET_KEY}: is not set, and "
                f"backupBucket needs it; run pulumi config set --secret "
                f"{NAMESPACE}:{BACKUP_SECRET_KEY} VALUE"
            )
        if problems:
            raise SpecError(problems)
    except SpecError as exc:
        # RunError ends the program with this message and no Python traceback.
        raise pulumi.RunError(str(exc)) from None

    for warning in warnings:
        pulumi.log.warn(warning)
    if secret_raw is not None and not is_config_secret(f"{NAMESPACE}:{SECRETS_KEY}"):
        pulumi.log.warn(
            f"{NAMESPACE}:{SECRETS_KEY} is stored in plain text in {source}; set each value "
            "with `pulumi config set --secret --path`"
        )
    if snapshot_key is not None and settings.backup_bucket is None:
        pulumi.log.warn(
            f"{NAMESPACE}:{BACKUP_SECRET_KEY} is set but {NAMESPACE}:backupBucket is not; the key "
            "is not used"
        )
    if snapshot_key is not None and not is_config_secret(f"{NAMESPACE}:{BACKUP_SECRET_KEY}"):
        pulumi.log.warn(
            f"{NAMESPACE}:{BACKUP_SECRET_KEY} is stored in plain text in {source}; set "
            "it with `pulumi config set --secret`"
        )
    wanted = {name: secrets[name] for name in app.secret_names()}
    component = blueprint(app.name, app, settings, pulumi.Output.secret(wanted), stack=stack)
    for key, value in component.outputs.items():
        pulumi.export(key, value)
