"""Both compose stacks evaluated offline under Pulumi's mock runtime (blueprints.plan)."""

from __future__ import annotations

import json

import pytest
import yaml
from test_plan_single_vm import (
    ASSIGN,
    ATTACH,
    FIP,
    PLACEMENT,
    ROOT,
    SERVER,
    UD_FIELD,
    VOLUME,
    cloud_of,
    only,
    release_command,
    text_of,
)

from blueprints.plan import PlanError, is_secret, list_stacks, plan_stack
from blueprints.release.bundle import parse_release
from blueprints.render.unpack import user_data_files

STACKS = ["compose-hcloud", "compose-localstack"]
DLM = "aws:dlm/lifecyclePolicy:LifecyclePolicy"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"


@pytest.fixture(scope="module")
def plans():
    return {s: plan_stack(s, ROOT) for s in STACKS}


def test_both_compose_stacks_exist():
    assert set(STACKS) <= set(list_stacks(ROOT))


@pytest.mark.parametrize("stack", STACKS)
def test_one_server_in_the_private_network_with_the_volume_attached(plans, stack):
    plan, cloud = plans[stack], cloud_of(stack)
    server = only(plan, SERVER[cloud])
    assert server.name == f"shop-{stack}-vm"
    assert plan.of_type(PLACEMENT[cloud]) == []  # one VM: nothing to spread
    volume = only(plan, VOLUME[cloud])
    attachment = only(plan, ATTACH[cloud])
    inputs = attachment.plain_inputs()
    if cloud == "hcloud":
        assert inputs["serverId"] == int(server.id) and inputs["volumeId"] == int(volume.id)
        assert server.plain_inputs()["networks"][0]["ip"] == "10.0.1.10"
    else:
        assert inputs["instanceId"] == server.id and inputs["volumeId"] == volume.id
        assert server.plain_inputs()["privateIp"] == "10.0.1.10"
    assert volume.plain_inputs()["size"] == 21  # pgdata 20 GB + 1 GB for the proxy's state
    assert volume.protect
    assert attachment.deleted_with == server.name


@pytest.mark.parametrize("stack", STACKS)
def test_floating_ip_by_default_and_optional(plans, stack):
    plan, cloud = plans[stack], cloud_of(stack)
    fip = only(plan, FIP[cloud])
    assert fip.protect
    assign = only(plan, ASSIGN[cloud])
    assert assign.delete_before_replace
    out = plan.public_outputs()
    without = plan_stack(stack, ROOT, {"blueprints:floatingIp": False})
    assert without.of_type(FIP[cloud]) == [] and without.of_type(ASSIGN[cloud]) == []
    server = only(without, SERVER[cloud])
    assert without.public_outputs()["address"] != out["address"]
    assert (
        without.public_outputs()["sshCommand"]
        == f"ssh deploy@{without.public_outputs()['address']}"
    )
    assert server.name == f"shop-{stack}-vm"


def test_hcloud_firewall_rules_exactly(plans):
    fw = only(plans["compose-hcloud"], "hcloud:index/firewall:Firewall")
    rules = [
        (r["direction"], r["protocol"], r["port"], tuple(r["sourceIps"]))
        for r in fw.plain_inputs()["rules"]
    ]
    everyone = ("0.0.0.0/0", "::/0")
    assert rules == [
        ("in", "tcp", "22", ("203.0.113.0/24",)),
        ("in", "tcp", "80", everyone),
        ("in", "tcp", "443", everyone),
    ]


def test_aws_security_group_rules_exactly(plans):
    sg = only(plans["compose-localstack"], "aws:ec2/securityGroup:SecurityGroup")
    ingress = sorted(
        (r["protocol"], r["fromPort"], tuple(r.get("cidrBlocks", [])))
        for r in sg.plain_inputs()["ingress"]
    )
    assert ingress == [
        ("-1", 0, ("10.0.0.0/16",)),
        ("tcp", 22, ("203.0.113.0/24",)),
        ("tcp", 80, ("0.0.0.0/0",)),
        ("tcp", 443, ("0.0.0.0/0",)),
    ]


def test_aws_snapshot_policy_targets_the_volume_and_keeps_the_spec_count(plans):
    plan = plans["compose-localstack"]
    policy = only(plan, DLM).plain_inputs()
    volume_tags = only(plan, VOLUME["aws"]).plain_inputs()["tags"]
    details = policy["policyDetails"]
    assert details["resourceTypes"] == ["VOLUME"]
    assert details["targetTags"] == {"backup-policy": "shop-compose-localstack-data"}
    assert volume_tags["backup-policy"] == "shop-compose-localstack-data"
    [schedule] = details["schedules"]
    assert schedule["createRule"] == {"interval": 24, "intervalUnit": "HOURS", "times": "03:00"}
    assert schedule["retainRule"] == {"count": 7}
    assert policy["state"] == "ENABLED"
    role = only(plan, ROLE)
    trust = json.loads(role.plain_inputs()["assumeRolePolicy"])
    assert trust["Statement"][0]["Principal"] == {"Service": "dlm.amazonaws.com"}
    attached = only(plan, ROLE_POLICY).plain_inputs()
    assert attached["policyArn"].endswith("service-role/AWSDataLifecycleManagerServiceRole")
    # The machine has no backup of its own: the release brings restic's (test_backup_vm.py).
    files = user_data_files(text_of(only(plan, SERVER["aws"])))
    assert not [f for f in files if "backup" in f]


@pytest.mark.parametrize(
    ("backups", "rule"),
    [
        ({"schedule": "hourly", "keep": 48}, {"interval": 1, "intervalUnit": "HOURS"}),
        (
            {"schedule": "weekly", "at": "22:30", "keep": 4},
            {"cronExpression": "cron(30 22 ? * SUN *)"},
        ),
    ],
)
def test_aws_snapshot_schedule_follows_the_spec(tmp_path, backups, rule):
    data = yaml.safe_load((ROOT / "examples/app.yaml").read_text())
    data["backups"] = backups
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(data))
    plan = plan_stack("compose-localstack", ROOT, {"blueprints:spec": str(path)})
    [schedule] = only(plan, DLM).plain_inputs()["policyDetails"]["schedules"]
    assert schedule["createRule"] == rule
    assert schedule["retainRule"] == {"count": backups["keep"]}


def test_hcloud_without_a_bucket_takes_no_backups_and_says_what_to_set(plans):
    plan = plans["compose-hcloud"]
    # no server backups, no archive on the server's disk, no volume snapshots on Hetzner
    assert only(plan, SERVER["hcloud"]).plain_inputs().get("backups") in (None, False)
    assert plan.of_type(DLM) == []
    release = parse_release(release_command(plan, "release").plain_inputs()["stdin"])
    assert not [path for path in release["files"] if "backup" in path]
    assert release["units"] == ["app-autoheal.timer"]
    assert plan.public_outputs()["backups"] == (
        "none: the stack sets no backup storage (blueprints:backupBucket)"
    )
    assert any("blueprints:backupEndpoint" in n and "backupSecretKey" in n for n in plan.notes)


@pytest.mark.parametrize("stack", STACKS)
def test_backups_off_means_no_policy_and_a_note(tmp_path, stack):
    data = yaml.safe_load((ROOT / "examples/app.yaml").read_text())
    data["backups"] = {"enabled": False}
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(data))
    plan = plan_stack(stack, ROOT, {"blueprints:spec": str(path)})
    cloud = cloud_of(stack)
    assert plan.of_type(DLM) == []
    server = only(plan, SERVER[cloud]).plain_inputs()
    assert server.get("backups") in (None, False)
    assert "backup-policy" not in (only(plan, VOLUME[cloud]).plain_inputs().get("labels") or {})
    assert any("nothing backs up the app's data" in n for n in plan.notes)
    release = parse_release(release_command(plan, "release").plain_inputs()["stdin"])
    assert not [path for path in release["files"] if "backup" in path]


def test_localstack_endpoints_include_dlm_and_iam(plans):
    provider = only(plans["compose-localstack"], "pulumi:providers:aws").plain_inputs()
    endpoints = json.loads(provider["endpoints"])[0]
    for service in ("dlm", "ec2", "iam", "sts"):
        assert endpoints[service] == "http://localhost:4566"
    assert provider["accessKey"] == "test"


@pytest.mark.parametrize("stack", STACKS)
def test_the_release_holds_the_compose_project_and_user_data_no_secret(plans, stack):
    plan, cloud = plans[stack], cloud_of(stack)
    server = only(plan, SERVER[cloud])
    assert not is_secret(server.inputs[UD_FIELD[cloud]])
    assert "etc/blueprints/compose/compose.yaml" not in user_data_files(text_of(server))
    release = parse_release(release_command(plan, "release").plain_inputs()["stdin"])
    compose = yaml.safe_load(release["files"]["/etc/blueprints/compose/compose.yaml"]["text"])
    assert set(compose["services"]) == {"web", "worker", "postgres", "redis", "blueprints_proxy"}
    sent = release_command(plan, "release-secrets")
    assert is_secret(sent.inputs["stdin"])
    secrets = yaml.safe_load(sent.plain_inputs()["stdin"])["files"]
    assert (
        "DATABASE_PASSWORD=<secret:DATABASE_PASSWORD>\n"
        in secrets["/etc/blueprints/secrets/app.env"]["text"]
    )
    assert "<secret:" not in release["files"]["/etc/blueprints/compose/compose.yaml"]["text"]


def test_data_device_follows_the_volume_id(plans):
    for stack in STACKS:
        plan, cloud = plans[stack], cloud_of(stack)
        volume_id = only(plan, VOLUME[cloud]).id
        files = user_data_files(text_of(only(plan, SERVER[cloud])))
        mount = files["etc/systemd/system/srv-data.mount"]
        assert volume_id.replace("-", "") in mount


def test_planning_is_deterministic(plans):
    again = plan_stack("compose-hcloud", ROOT)
    first = plans["compose-hcloud"]
    assert [r.plain_inputs() for r in again.resources] == [
        r.plain_inputs() for r in first.resources
    ]


def test_single_vm_keys_are_refused_on_a_compose_stack():
    with pytest.raises(PlanError) as exc:
        plan_stack("compose-hcloud", ROOT, {"blueprints:active": "spare"})
    assert str(exc.value) == (
        "stacks/Pulumi.compose-hcloud.yaml: blueprints:active: applies to the single-vm "
        "blueprint only, not to compose; remove it from the stack file"
    )


@pytest.mark.parametrize("stack", STACKS)
def test_outputs(plans, stack):
    out = plans[stack].public_outputs()
    assert out["url"] == "https://shop.example.com"
    assert out["dnsRecord"] == f"shop.example.com. A {out['address']}"
    assert out["sshCommand"] == f"ssh deploy@{out['address']}"
