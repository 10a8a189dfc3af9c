"""The real apps of tests/apps: each hand translation validates, passes every blueprint's rules,
plans on every stack under Pulumi's mocks and renders what the nodes run.

Slow: one plan per app and stack (9 apps x 8 stacks, seconds each); each plan is made once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from blueprints.plan import list_stacks, plan_stack
from blueprints.render.unpack import stack_files
from blueprints.settings import BLUEPRINTS
from blueprints.spec import load_spec
from blueprints.stack import blueprint_class

ROOT = Path(__file__).resolve().parent.parent
APPS = sorted(p.parent.name for p in (ROOT / "tests/apps").glob("*/app.yaml"))
STACKS = list_stacks(ROOT)
RUNNER = ["203.0.113.7/32"]
# Apps that need more than the stacks' servers (2 vCPU, 4 GiB) plan on the size they need: the
# capacity check refuses them on the defaults (tests/test_capacity.py).
SERVER_TYPES = {"plausible": {"hcloud": "cx33", "localstack": "t3.xlarge"}}
_PLANS: dict[tuple[str, str], object] = {}


def spec_of(app: str) -> Path:
    return ROOT / "tests/apps" / app / "app.yaml"


def test_enough_real_apps():
    assert len(APPS) >= 8
    for app in APPS:
        readme = (ROOT / "tests/apps" / app / "README.md").read_text()
        assert "https://github.com/" in readme and "license" in readme.lower()


@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize("blueprint", BLUEPRINTS)
def test_app_fits_the_blueprint(app, blueprint):
    spec = load_spec(spec_of(app))
    assert blueprint_class(blueprint).check(spec) == []


def planned(app: str, stack: str):
    key = (app, stack)
    if key not in _PLANS:
        # The apps name no admin network: the release channel (SSH) is opened to a runner.
        overrides = {"blueprints:spec": str(spec_of(app)), "blueprints:deployerNetworks": RUNNER}
        size = SERVER_TYPES.get(app, {}).get(stack.rsplit("-", 1)[1])
        if size is not None:
            overrides["blueprints:serverType"] = size
        _PLANS[key] = plan_stack(stack, ROOT, overrides)
    return _PLANS[key]


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("app", APPS)
def test_app_plans_and_renders(app, stack):
    plan = planned(app, stack)
    assert plan.resources
    files = stack_files(plan)
    assert files
    spec = load_spec(spec_of(app))
    text = "\n".join(files.values())
    # Rendered files show placeholders, never a secret value; the images are the spec's.
    for name, svc in spec.services.items():
        assert svc.image in text or name in text, (name, svc.image)
