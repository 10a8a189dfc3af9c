"""Principle 9 on the plans of the single-machine rungs: an app change is a release (an update of
the release command) and never touches a machine; a machine change never touches the release."""

from __future__ import annotations

from pathlib import Path

import pytest
from spec_plans import inputs_of, plan_with_spec

from blueprints.plan import Plan
from blueprints.release.bundle import parse_release

ROOT = Path(__file__).resolve().parent.parent
STACKS = ["single-vm-hcloud", "single-vm-localstack", "compose-hcloud", "compose-localstack"]
COMMAND = "command:remote:Command"
NEW_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBn7Yz2c9q0kJx4mA8rVtW3pLsE6uHdN1fGiKoQ2bR5y new@x"


def _image_bump(data: dict) -> None:
    data["services"]["web"]["image"] = "ghcr.io/example/shop-web:1.4.3"


def _admin_key(data: dict) -> None:
    data["admin"]["ssh_keys"].append(NEW_KEY)


def _env_value(data: dict) -> None:
    data["services"]["web"].setdefault("env", {})["LOG_LEVEL"] = "debug"


def _replicas(data: dict) -> None:
    # Down, not up: a third web replica would not fit the example's servers (blueprints.capacity).
    data["services"]["web"]["replicas"] = 1


APP_CHANGES = {
    "image bump": _image_bump,
    "admin key": _admin_key,
    "env value": _env_value,
    "replicas": _replicas,
}


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Plan]:
    tmp = tmp_path_factory.mktemp("base")
    return {stack: plan_with_spec(stack, tmp) for stack in STACKS}


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("change", sorted(APP_CHANGES))
def test_an_app_change_is_a_release_and_touches_no_machine(bases, tmp_path, stack, change):
    before, after = bases[stack], plan_with_spec(stack, tmp_path, APP_CHANGES[change])
    old, new = inputs_of(before), inputs_of(after)
    assert set(old) == set(new)
    # what Pulumi would update: inputs it does not ignore (a cold spare's first-boot command
    # keeps the image list it was created with)
    ignored = {r.name: set(r.ignore_changes) for r in after.resources}
    changed = sorted(
        name
        for name in old
        if {k: v for k, v in old[name].items() if k not in ignored.get(name, ())}
        != {k: v for k, v in new[name].items() if k not in ignored.get(name, ())}
    )
    # only the release document changes: no server, key, volume, firewall or IP; a new image
    # is pulled on the warm standby too (an SSH command, nothing replaced)
    expected = [f"shop-{stack}-release"]
    if change == "image bump" and stack == "single-vm-hcloud":
        expected.append(f"shop-{stack}-standby-images")
    assert changed == sorted(expected)
    old_doc = parse_release(old[f"shop-{stack}-release"]["stdin"])
    new_doc = parse_release(new[f"shop-{stack}-release"]["stdin"])
    assert old_doc["release"] != new_doc["release"]
    if change == "image bump":
        [web] = [s for s in new_doc["services"] if s["name"] == "web"]
        assert web["image"] == "ghcr.io/example/shop-web:1.4.3"
    if change == "admin key":
        assert NEW_KEY in new_doc["files"]["/etc/blueprints/admin-keys/deploy"]["text"]
    if change == "replicas":
        # a replica count alone keeps the container definition: nothing is restarted for it
        [old_web] = [s for s in old_doc["services"] if s["name"] == "web"]
        [new_web] = [s for s in new_doc["services"] if s["name"] == "web"]
        assert new_web["replicas"] == 1 and new_web["digest"] == old_web["digest"]


@pytest.mark.parametrize("stack", STACKS)
def test_a_machine_change_touches_only_the_servers(bases, tmp_path, stack):
    size = "cx33" if "hcloud" in stack else "t3.large"
    after = plan_with_spec(stack, tmp_path, None, **{"blueprints:serverType": size})
    old, new = inputs_of(bases[stack]), inputs_of(after)
    changed = {name for name in old if old[name] != new[name]}
    servers = {r.name for r in after.resources if r.type.endswith((":Server", ":Instance"))}
    assert changed == servers
    for name in servers:
        diff = {k for k in old[name] if old[name][k] != new[name].get(k)}
        assert diff == {"serverType" if "hcloud" in stack else "instanceType"}


@pytest.mark.parametrize("stack", STACKS)
def test_the_release_goes_to_the_active_node_after_its_agent_and_secrets(bases, stack):
    plan = bases[stack]
    commands = {
        r.name.removeprefix(f"shop-{stack}-"): r
        for r in plan.of_type(COMMAND)
        if "-release" in r.name  # not the standby's image pulls
    }
    assert set(commands) == {"release-agent", "release-secrets", "release"}
    release = commands["release"]
    assert f"shop-{stack}-release-agent" in release.depends_on
    assert f"shop-{stack}-release-secrets" in release.depends_on
    for command in commands.values():
        inputs = command.plain_inputs()
        # updated in place when the stdin changes, never replaced
        assert inputs["update"] == inputs["create"]
        assert inputs["connection"]["user"] == "deploy"
    # to the floating IP, which always points at the node holding the volume and the release
    outputs = plan.public_outputs()
    host = release.plain_inputs()["connection"]["host"]
    assert host == outputs.get("floatingIp", outputs.get("address"))
    # the deploy key never shows: Pulumi keeps the whole connection secret
    masked = release.public_inputs()["connection"]
    assert masked == "[secret]" or masked["privateKey"] == "[secret]"


def test_same_spec_same_release_bytes(tmp_path):
    first = plan_with_spec("single-vm-hcloud", tmp_path)
    second = plan_with_spec("single-vm-hcloud", tmp_path)
    assert inputs_of(first) == inputs_of(second)
