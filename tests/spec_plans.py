"""Plans of this repository's stacks with a changed copy of the example spec, for the tests
that compare what an app change touches (the release) with what it leaves alone."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from blueprints.plan import Plan, plan_stack

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE: dict[str, Any] = yaml.safe_load((ROOT / "examples/app.yaml").read_text())


def copy_project(tmp_path: Path) -> Path:
    """A copy of this project's stacks, example spec and program in tmp_path/project, to plan
    with changed stack files or spec."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "Pulumi.yaml", project)
    for folder in ("stacks", "examples"):
        shutil.copytree(ROOT / folder, project / folder)
    (project / "blueprints").mkdir()
    shutil.copy(ROOT / "blueprints/program.py", project / "blueprints/program.py")
    return project


def plan_with_spec(
    stack: str,
    tmp_path: Path,
    change: Callable[[dict], None] | None = None,
    **overrides: Any,
) -> Plan:
    """The stack planned with the example spec after `change` (and these config overrides)."""
    data = copy.deepcopy(EXAMPLE)
    if change is not None:
        change(data)
    spec = tmp_path / f"{stack}-{change.__name__ if change else 'base'}.yaml"
    spec.write_text(yaml.safe_dump(data))
    return plan_stack(stack, ROOT, {"blueprints:spec": str(spec), **overrides})


def inputs_of(plan: Plan) -> dict[str, Any]:
    """Resource name -> its inputs, secrets unwrapped."""
    return {r.name: r.plain_inputs() for r in plan.resources}
