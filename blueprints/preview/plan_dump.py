"""Plan stacks of one project tree and write them as JSON (run by `blueprints diff`).

`blueprints diff` runs this file's source with `python -c` in a subprocess whose cwd is a
project tree (the base ref's extracted copy, or the working tree). It must therefore stand on
its own: it imports nothing from blueprints.preview (older refs do not have it), only the
`blueprints.plan` of whichever `blueprints` package that tree provides (its own, or the installed
one for a baked project), and tolerates older PlannedResource versions (getattr with defaults).

Usage: python -c "$(cat plan_dump.py)" OUT.json PROJECT_DIR [STACK...]
The key for secret digests comes from the environment (BLUEPRINTS_DIFF_KEY, hex); an app spec
to plan instead of each stack's own from BLUEPRINTS_DIFF_SPEC (an absolute path, `--spec`).
Before each stack it prints "blueprints-diff: planning STACK" on stdout (progress).
Each stack is planned on its own: one that cannot be planned is listed under "errors".

Secrets: a secret value is never written. It is replaced by an HMAC-SHA256 digest under a
random key that `blueprints diff` makes for one run and never stores, so the two sides can be
compared (a changed secret is a changed property) without anything readable leaving memory.
"""

import gc
import hashlib
import hmac
import json
import os
import sys
from pathlib import Path

SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
KEY_VARIABLE = "BLUEPRINTS_DIFF_KEY"
SPEC_VARIABLE = "BLUEPRINTS_DIFF_SPEC"
PROGRESS_PREFIX = "blueprints-diff: planning "


def seal(value, key):
    """The value with every secret replaced by {SIG_KEY: SECRET_SIG, "digest": hmac}."""
    if isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG:
        plain = json.dumps(value.get("value"), sort_keys=True, default=str).encode()
        return {SIG_KEY: SECRET_SIG, "digest": hmac.new(key, plain, hashlib.sha256).hexdigest()}
    if isinstance(value, dict):
        return {str(k): seal(v, key) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [seal(v, key) for v in value]
    return value


def resource_json(r, key):
    return {
        "type": r.type,
        "name": r.name,
        "parent": r.parent,
        "custom": bool(getattr(r, "custom", True)),
        "id": getattr(r, "id", "") or "",
        "protect": bool(getattr(r, "protect", False)),
        "deleteBeforeReplace": bool(getattr(r, "delete_before_replace", False)),
        "replaceOnChanges": list(getattr(r, "replace_on_changes", []) or []),
        "ignoreChanges": list(getattr(r, "ignore_changes", []) or []),
        "provider": getattr(r, "provider", None),
        "dependsOn": list(getattr(r, "depends_on", []) or []),
        "deletedWith": getattr(r, "deleted_with", None),
        "inputs": seal(r.inputs, key),
    }


def main(argv):
    # A run of seconds that keeps nearly everything it builds (providers' SDKs, Pulumi's
    # resources, rendered documents) until it exits: the cyclic collector's passes cost a
    # quarter of the planning and free little (as `blueprints` itself, cli.main).
    gc.disable()
    out_path, project_dir, stacks = Path(argv[0]), Path(argv[1]).resolve(), argv[2:]
    key = bytes.fromhex(os.environ.pop(KEY_VARIABLE, "") or os.urandom(32).hex())
    spec = os.environ.pop(SPEC_VARIABLE, "")
    # The spec as a config override: plan_stack(..., overrides) exists in every version.
    overrides = {"blueprints:spec": spec} if spec else None
    result = {"project": None, "stacks": [], "plans": {}, "errors": {}}
    try:
        from blueprints import plan as bp
    except Exception as exc:  # an old or broken tree: say so, do not crash
        result["fatal"] = f"cannot import blueprints.plan ({exc.__class__.__name__}: {exc})"
        out_path.write_text(json.dumps(result))
        return
    try:
        result["project"] = bp.read_project(project_dir)[0]
        known = bp.list_stacks(project_dir)
    except bp.PlanError as exc:
        result["fatal"] = str(exc)
        out_path.write_text(json.dumps(result))
        return
    result["stacks"] = known
    for stack in stacks or known:
        if stack not in known:
            continue
        sys.stdout.write(f"{PROGRESS_PREFIX}{stack}\n")
        sys.stdout.flush()
        try:
            plan = bp.plan_stack(stack, project_dir, overrides)
        except bp.PlanError as exc:
            result["errors"][stack] = str(exc)
            continue
        result["plans"][stack] = {
            "resources": [resource_json(r, key) for r in plan.resources],
            "outputs": seal(plan.outputs, key),
            "notes": list(plan.notes),
        }
    out_path.write_text(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1:])
