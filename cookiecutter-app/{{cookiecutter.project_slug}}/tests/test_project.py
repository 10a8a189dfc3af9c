"""This project's own checks, no cloud account or Pulumi CLI needed: the app spec validates and
every stack in stacks/ plans offline (the very program `pulumi up` runs, under Pulumi's mock
runtime). Run them with `uv run pytest`; CI runs them on every merge request."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from blueprints.plan import list_stacks, plan_stack
from blueprints.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
STACKS = list_stacks(ROOT)


def test_app_spec_validates():
    app = load_spec(ROOT / "app.yaml")
    assert app.services, "app.yaml declares no services"


def test_the_project_has_stacks():
    assert STACKS, "stacks/ holds no Pulumi.<stack>.yaml"


@pytest.mark.parametrize("stack", STACKS)
def test_stack_plans_offline(stack):
    config = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]
    plan = plan_stack(stack, ROOT)
    machines = [r for r in plan.custom if r.type.endswith((":Server", ":Instance"))]
    assert machines, f"{stack} plans no server"
    # The plan ran this project's spec, not some other one.
    app = load_spec(ROOT / config.get("blueprints:spec", "app.yaml"))
    assert all(app.name in r.name for r in machines), [r.name for r in machines]
