"""Record the active node in the stack config, so the next `pulumi up` keeps the failover."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

KEY = "blueprints:active"
_LINE = re.compile(r"^(?P<indent>[ \t]+)blueprints:active:[^\n]*$", re.MULTILINE)


def write_active_to_file(path: Path, node: str) -> bool:
    """Set `blueprints:active: <node>` in a stack file, keeping every other byte (comments
    included). Returns whether the file changed. Written atomically."""
    text = path.read_text(encoding="utf-8")
    if _LINE.search(text):
        new = _LINE.sub(lambda m: f"{m.group('indent')}{KEY}: {node}", text, count=1)
    else:
        m = re.search(r"^config:[ \t]*\n", text, re.MULTILINE)
        if not m:
            raise ValueError(f"{path}: has no `config:` section to record {KEY} in")
        new = text[: m.end()] + f"  {KEY}: {node}\n" + text[m.end() :]
    if new == text:
        return False
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new)
        shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def record_active(
    project_dir: Path, stack: str, stack_file: Path, node: str, use_pulumi: bool = True
) -> str:
    """Through Pulumi's Automation API when the CLI is installed, else by editing the file."""
    if use_pulumi and shutil.which("pulumi"):
        from pulumi import automation as auto

        ws = auto.LocalWorkspace(work_dir=str(project_dir))
        ws.set_config(stack, KEY, auto.ConfigValue(value=node))
        return (
            f"recorded {KEY}={node} in stack {stack} with the Pulumi CLI (commit the stack file; "
            "the next `pulumi up` keeps the volume and IP where the cloud has them)"
        )
    path = stack_file
    changed = write_active_to_file(path, node)
    shown = path.relative_to(project_dir) if path.is_relative_to(project_dir) else path
    state = "recorded" if changed else "already"
    return (
        f"{state} {KEY}: {node} in {shown}; commit it (until then every plan of {stack} warns "
        "that the file and the cloud disagree; `pulumi up` keeps the app where it runs)"
    )
