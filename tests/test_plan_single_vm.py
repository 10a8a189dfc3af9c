"""Both single-vm stacks evaluated offline under Pulumi's mock runtime (blueprints.plan)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from blueprints.plan import PlanError, is_secret, list_stacks, plan_stack
from blueprints.render.unpack import server_user_data

ROOT = Path(__file__).resolve().parent.parent
STACKS = ["single-vm-hcloud", "single-vm-localstack"]

SERVER = {"hcloud": "hcloud:index/server:Server", "aws": "aws:ec2/instance:Instance"}
VOLUME = {"hcloud": "hcloud:index/volume:Volume", "aws": "aws:ebs/volume:Volume"}
ATTACH = {
    "hcloud": "hcloud:index/volumeAttachment:VolumeAttachment",
    "aws": "aws:ec2/volumeAttachment:VolumeAttachment",
}
FIP = {"hcloud": "hcloud:index/floatingIp:FloatingIp", "aws": "aws:ec2/eip:Eip"}
ASSIGN = {
    "hcloud": "hcloud:index/floatingIpAssignment:FloatingIpAssignment",
    "aws": "aws:ec2/eipAssociation:EipAssociation",
}
PLACEMENT = {
    "hcloud": "hcloud:index/placementGroup:PlacementGroup",
    "aws": "aws:ec2/placementGroup:PlacementGroup",
}
POWER = "aws:ec2transitgateway/instanceState:InstanceState"


def cloud_of(stack: str) -> str:
    return "hcloud" if stack.endswith("hcloud") else "aws"


@pytest.fixture(scope="module")
def plans():
    return {s: plan_stack(s, ROOT) for s in STACKS}


@pytest.fixture(scope="module")
def flipped():
    return {s: plan_stack(s, ROOT, {"blueprints:active": "spare"}) for s in STACKS}


def servers(plan, cloud):
    return {r.name.rsplit("-", 1)[-1]: r for r in plan.of_type(SERVER[cloud])}


def only(plan, type_):
    found = plan.of_type(type_)
    assert len(found) == 1, f"expected one {type_}, got {[r.name for r in found]}"
    return found[0]


def text_of(resource) -> str:
    text = server_user_data(resource)
    assert text is not None and text.startswith("#cloud-config\n")
    return text


def user_data(resource) -> dict:
    return yaml.safe_load(text_of(resource))


# The field each cloud takes user data in (aws: base64, so it can be compressed).
UD_FIELD = {"hcloud": "userData", "aws": "userDataBase64"}
COMMAND = "command:remote:Command"


def release_command(plan, suffix: str):
    """The release channel's command of a plan whose name ends in -<suffix>."""
    [found] = [r for r in plan.of_type(COMMAND) if r.name.endswith(f"-{suffix}")]
    return found


def test_every_stack_file_is_planned_by_this_suite():
    assert set(list_stacks(ROOT)) >= set(STACKS)


@pytest.mark.parametrize("stack", STACKS)
def test_two_servers_in_one_spread_group(plans, stack):
    plan, cloud = plans[stack], cloud_of(stack)
    nodes = servers(plan, cloud)
    assert sorted(nodes) == ["primary", "spare"]
    group = only(plan, PLACEMENT[cloud])
    assert group.inputs["type" if cloud == "hcloud" else "strategy"] == "spread"
    key = "placementGroupId" if cloud == "hcloud" else "placementGroup"
    wanted = int(group.id) if cloud == "hcloud" else group.id
    assert {n: s.inputs[key] for n, s in nodes.items()} == {"primary": wanted, "spare": wanted}


@pytest.mark.parametrize("stack", STACKS)
def test_volume_and_ip_belong_to_the_active_node_only(plans, stack):
    plan, cloud = plans[stack], cloud_of(stack)
    nodes = servers(plan, cloud)
    attachment, assignment = only(plan, ATTACH[cloud]), only(plan, ASSIGN[cloud])
    key = "serverId" if cloud == "hcloud" else "instanceId"
    primary_id = int(nodes["primary"].id) if cloud == "hcloud" else nodes["primary"].id
    assert attachment.inputs[key] == primary_id
    assert assignment.inputs[key] == primary_id
    volume = only(plan, VOLUME[cloud])
    vol_key = "volumeId"
    assert attachment.inputs[vol_key] == (int(volume.id) if cloud == "hcloud" else volume.id)
    # One volume: all named volumes plus 1 GB for TLS state (examples/app.yaml: pgdata 20 GB).
    assert volume.inputs["size"] == 21
    # Moving them must detach before attaching: never two holders at once.
    assert attachment.delete_before_replace and assignment.delete_before_replace
    assert plan.public_outputs()["activeNode"] == "primary"


@pytest.mark.parametrize("stack", STACKS)
def test_data_and_address_are_protected(plans, stack):
    plan, cloud = plans[stack], cloud_of(stack)
    volume, fip = only(plan, VOLUME[cloud]), only(plan, FIP[cloud])
    assert volume.protect and fip.protect
    if cloud == "hcloud":
        assert volume.inputs["deleteProtection"] is True
        assert fip.inputs["deleteProtection"] is True
    # (and the backups: the bucket the aws stack creates, which holds what a lost volume comes
    # back from, and the repository password, without which no snapshot opens)
    stateful = {
        VOLUME[cloud],
        FIP[cloud],
        "aws:s3/bucket:Bucket",
        "random:index/randomPassword:RandomPassword",
    }
    assert {r.type for r in plan.custom if r.protect} - stateful == set()


def test_protection_can_be_switched_off():
    plan = plan_stack("single-vm-hcloud", ROOT, {"blueprints:protectData": False})
    assert not any(r.protect for r in plan.resources)
    assert only(plan, VOLUME["hcloud"]).inputs["deleteProtection"] is False


def test_hcloud_firewall_rules_exactly(plans):
    fw = only(plans["single-vm-hcloud"], "hcloud:index/firewall:Firewall")
    rules = [
        (r["direction"], r["protocol"], r["port"], tuple(r["sourceIps"]))
        for r in fw.inputs["rules"]
    ]
    assert rules == [
        ("in", "tcp", "22", ("203.0.113.0/24",)),
        ("in", "tcp", "80", ("0.0.0.0/0", "::/0")),
        ("in", "tcp", "443", ("0.0.0.0/0", "::/0")),
    ]
    fw_id = int(fw.id)
    for server in servers(plans["single-vm-hcloud"], "hcloud").values():
        assert server.inputs["firewallIds"] == [fw_id]


def test_aws_security_group_rules_exactly(plans):
    plan = plans["single-vm-localstack"]
    sg = only(plan, "aws:ec2/securityGroup:SecurityGroup")
    ingress = sorted(
        (
            r["protocol"],
            r["fromPort"],
            r["toPort"],
            tuple(r.get("cidrBlocks", [])),
            tuple(r.get("ipv6CidrBlocks", [])),
        )
        for r in sg.inputs["ingress"]
    )
    assert ingress == [
        ("-1", 0, 0, ("10.0.0.0/16",), ()),  # the private network only
        ("tcp", 22, 22, ("203.0.113.0/24",), ()),
        ("tcp", 80, 80, ("0.0.0.0/0",), ("::/0",)),
        ("tcp", 443, 443, ("0.0.0.0/0",), ("::/0",)),
    ]
    for server in servers(plan, "aws").values():
        assert server.inputs["vpcSecurityGroupIds"] == [sg.id]


def test_ssh_is_open_to_admin_and_deployer_networks_only(tmp_path):
    project = _copy_project(tmp_path)
    spec = yaml.safe_load((project / "examples/app.yaml").read_text())
    spec["admin"]["cidrs"] = []
    (project / "examples/app.yaml").write_text(yaml.safe_dump(spec))
    # the release travels over SSH: with no network allowed to reach it, the stack is refused
    with pytest.raises(PlanError) as exc:
        plan_stack("single-vm-hcloud", project)
    assert "set blueprints:deployerNetworks" in str(exc.value)
    deployers = {"blueprints:deployerNetworks": '["198.51.100.7/32"]'}
    fw = only(plan_stack("single-vm-hcloud", project, deployers), "hcloud:index/firewall:Firewall")
    [ssh] = [r for r in fw.inputs["rules"] if r["port"] == "22"]
    assert ssh["sourceIps"] == ["198.51.100.7/32"]
    # by default, the deployers are the admin networks
    fw = only(plan_stack("single-vm-hcloud", ROOT), "hcloud:index/firewall:Firewall")
    [ssh] = [r for r in fw.inputs["rules"] if r["port"] == "22"]
    assert ssh["sourceIps"] == ["203.0.113.0/24"]


def test_hcloud_nodes_park_themselves_without_the_volume(plans):
    nodes = servers(plans["single-vm-hcloud"], "hcloud")
    spare, primary = user_data(nodes["spare"]), user_data(nodes["primary"])
    # Identical user data: the spare parks because it boots without the volume, and a replaced
    # active node (which has the volume) stays up.
    assert spare == primary
    state = spare["power_state"]
    assert state["mode"] == "poweroff"
    volume = only(plans["single-vm-hcloud"], VOLUME["hcloud"])
    assert f"/dev/disk/by-id/scsi-0HC_Volume_{volume.id}" in state["condition"]
    assert "bills powered-off servers" in plans["single-vm-hcloud"].outputs["spareBilling"]


def test_aws_spare_is_stopped_by_instance_state(plans):
    plan = plans["single-vm-localstack"]
    nodes = servers(plan, "aws")
    states = {r.inputs["instanceId"]: r.inputs["state"] for r in plan.of_type(POWER)}
    assert states == {nodes["primary"].id: "running", nodes["spare"].id: "stopped"}
    # On AWS the spare does not power itself off: both user data are the same.
    assert user_data(nodes["spare"]) == user_data(nodes["primary"])
    assert "power_state" not in user_data(nodes["spare"])


def test_localstack_endpoints_and_test_credentials(plans):
    plan = plans["single-vm-localstack"]
    provider = only(plan, "pulumi:providers:aws")
    inputs = provider.plain_inputs()
    endpoints = inputs["endpoints"]
    if isinstance(endpoints, str):  # providers receive nested config as JSON
        import json

        endpoints = json.loads(endpoints)
    assert endpoints[0]["ec2"] == "http://localhost:4566"
    assert endpoints[0]["sts"] == "http://localhost:4566"
    for flag in ("skipCredentialsValidation", "skipRequestingAccountId", "skipMetadataApiCheck"):
        assert inputs[flag] in (True, "true")
    assert inputs["accessKey"] == "test"
    aws_resources = [r for r in plan.custom if r.type.startswith("aws:")]
    assert aws_resources and {r.provider for r in aws_resources} == {provider.name}
    # A fixed AMI on LocalStack; no lookup.
    assert {s.inputs["ami"] for s in servers(plan, "aws").values()} == {"ami-df5de72bdb3b"}


def test_localstack_endpoint_is_configurable():
    plan = plan_stack(
        "single-vm-localstack", ROOT, {"blueprints:localstackEndpoint": "http://127.0.0.1:4599/"}
    )
    inputs = only(plan, "pulumi:providers:aws").plain_inputs()
    assert "http://127.0.0.1:4599" in str(inputs["endpoints"])
    assert "4599/" not in str(inputs["endpoints"])


def test_real_aws_looks_up_ubuntu_and_uses_default_credentials(tmp_path):
    project = _copy_project(tmp_path)
    stack = project / "stacks/Pulumi.single-vm-aws.yaml"
    stack.write_text(
        "config:\n  blueprints:blueprint: single-vm\n  blueprints:target: aws\n"
        "  blueprints:region: eu-west-1\n"
    )
    plan = plan_stack("single-vm-aws", project)
    provider = only(plan, "pulumi:providers:aws").plain_inputs()
    assert "endpoints" not in provider and "accessKey" not in provider
    assert provider["region"] == "eu-west-1"
    assert {s.inputs["ami"] for s in servers(plan, "aws").values()} == {"ami-0offline0ubuntu2404"}
    assert only(plan, VOLUME["aws"]).inputs["availabilityZone"] == "eu-west-1a"
    # The looked-up AMI is kept once an instance exists: a newer Ubuntu image is no replacement.
    assert {tuple(s.ignore_changes) for s in servers(plan, "aws").values()} == {("ami",)}


def test_a_pinned_ami_is_the_users_choice_and_changes_replace(tmp_path):
    project = _copy_project(tmp_path)
    (project / "stacks/Pulumi.single-vm-aws.yaml").write_text(
        "config:\n  blueprints:blueprint: single-vm\n  blueprints:target: aws\n"
        "  blueprints:ami: ami-0123456789abcdef0\n"
    )
    plan = plan_stack("single-vm-aws", project)
    for server in servers(plan, "aws").values():
        assert server.inputs["ami"] == "ami-0123456789abcdef0"
        assert server.ignore_changes == []


def _diff(before, after) -> set[str]:
    a = {r.name: (r.type, r.inputs) for r in before.resources}
    b = {r.name: (r.type, r.inputs) for r in after.resources}
    assert a.keys() == b.keys()
    return {name for name in a if a[name] != b[name]}


@pytest.mark.parametrize("stack", STACKS)
def test_failover_in_config_moves_only_volume_ip_and_power(plans, flipped, stack):
    before, after, cloud = plans[stack], flipped[stack], cloud_of(stack)
    changed = _diff(before, after)
    expected = {f"shop-{stack}-data-attachment", f"shop-{stack}-ip-assignment"}
    if cloud == "aws":
        expected |= {f"shop-{stack}-primary-power", f"shop-{stack}-spare-power"}
    assert changed == expected
    nodes = servers(after, cloud)
    key = "serverId" if cloud == "hcloud" else "instanceId"
    spare_id = int(nodes["spare"].id) if cloud == "hcloud" else nodes["spare"].id
    assert only(after, ATTACH[cloud]).inputs[key] == spare_id
    assert only(after, ASSIGN[cloud]).inputs[key] == spare_id
    assert after.public_outputs()["activeNode"] == "spare"
    if cloud == "aws":
        states = {r.name: r.inputs["state"] for r in after.of_type(POWER)}
        assert states == {
            f"shop-{stack}-primary-power": "stopped",
            f"shop-{stack}-spare-power": "running",
        }


@pytest.mark.parametrize("stack", STACKS)
def test_user_data_holds_no_secret_and_secrets_are_placeholders(plans, stack):
    plan, cloud = plans[stack], cloud_of(stack)
    for server in servers(plan, cloud).values():
        # the bootstrap: no app secret in it, so nothing to hide
        assert not is_secret(server.inputs[UD_FIELD[cloud]])
        assert "<secret:" not in text_of(server)
    # the secrets travel in their own command, as a secret
    sent = release_command(plan, "release-secrets")
    assert is_secret(sent.inputs["stdin"]) and sent.public_inputs()["stdin"] == "[secret]"
    assert "DATABASE_PASSWORD=<secret:DATABASE_PASSWORD>" in sent.plain_inputs()["stdin"]
    assert "<secret:" not in release_command(plan, "release").plain_inputs()["stdin"]
    assert any("DATABASE_PASSWORD" in n for n in plan.notes)


@pytest.mark.parametrize("stack", STACKS)
def test_outputs(plans, stack):
    out = plans[stack].public_outputs()
    assert out["url"] == "https://shop.example.com"
    assert out["sshCommand"] == f"ssh deploy@{out['floatingIp']}"
    assert sorted(out["serverIps"]) == ["primary", "spare"]
    assert out["floatingIp"].startswith("203.0.113.")


@pytest.mark.parametrize("stack", STACKS)
def test_user_data_fits_the_cloud_limit(plans, stack):
    import base64

    cloud = cloud_of(stack)
    for server in servers(plans[stack], cloud).values():
        sent = server.plain_inputs()[UD_FIELD[cloud]]
        size = len(sent) if cloud == "hcloud" else len(base64.b64decode(sent))
        assert size <= {"hcloud": 32 * 1024, "aws": 16 * 1024}[cloud]


def test_hcloud_floating_ip_is_configured_in_the_os_and_aws_is_not(plans):
    hc = text_of(servers(plans["single-vm-hcloud"], "hcloud")["primary"])
    aws = text_of(servers(plans["single-vm-localstack"], "aws")["primary"])
    hc_ip = plans["single-vm-hcloud"].outputs["floatingIp"]
    aws_ip = plans["single-vm-localstack"].outputs["floatingIp"]
    assert f"{hc_ip}/32" in hc
    assert aws_ip not in aws


def test_data_device_follows_the_volume_id(plans):
    hc = plans["single-vm-hcloud"]
    vol = only(hc, VOLUME["hcloud"])
    assert f"/dev/disk/by-id/scsi-0HC_Volume_{vol.id}" in text_of(servers(hc, "hcloud")["primary"])
    aws = plans["single-vm-localstack"]
    vol = only(aws, VOLUME["aws"])
    device = f"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{vol.id.replace('-', '')}"
    assert device in text_of(servers(aws, "aws")["primary"])


def test_planning_is_deterministic(plans):
    again = plan_stack("single-vm-localstack", ROOT)
    first = plans["single-vm-localstack"]
    assert [r.as_json() for r in again.resources] == [r.as_json() for r in first.resources]
    assert [r.plain_inputs() for r in again.resources] == [
        r.plain_inputs() for r in first.resources
    ]


# --- bad stack settings: one line naming file and key, as `pulumi up` would show ----------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"blueprints:active": "secondary"},
            "stacks/Pulumi.single-vm-hcloud.yaml: blueprints:active: must be 'primary' or "
            "'spare' (got 'secondary')",
        ),
        (
            {"blueprints:location": "mars1"},
            "stacks/Pulumi.single-vm-hcloud.yaml: blueprints:location: unknown hcloud location "
            "'mars1'; allowed: fsn1, nbg1, hel1, ash, hil, sin",
        ),
        (
            {"blueprints:region": "eu-west-1"},
            "stacks/Pulumi.single-vm-hcloud.yaml: blueprints:region: does not apply to target "
            "hcloud; remove it from the stack file",
        ),
        (
            {"blueprints:serverTyp": "cx33"},
            "stacks/Pulumi.single-vm-hcloud.yaml: blueprints:serverTyp: unknown key; allowed keys "
            "here: active, backupAccessKey, backupBucket, backupEndpoint, backupRegion, "
            "blueprint, deployerNetworks, hcloudSshKey, healthUrl, image, location, networkCidr, "
            "probeTimeout, promoteTimeout, protectData, serverType, spec, subnetCidr, "
            "target, watchFailures, watchInterval",
        ),
        (
            {"blueprints:floatingIp": False},
            "stacks/Pulumi.single-vm-hcloud.yaml: blueprints:floatingIp: applies to the compose "
            "blueprint only, not to single-vm; remove it from the stack file",
        ),
        (
            {"blueprints:spec": "examples/missing.yaml"},
            f"{ROOT}/examples/missing.yaml: no such file",
        ),
        (
            {"blueprints:subnetCidr": "10.0.1.0/29"},
            "stacks/Pulumi.single-vm-hcloud.yaml: blueprints:subnetCidr: 10.0.1.0/29 is too "
            "small; the servers use host addresses .10 and up, so use a /28 or larger",
        ),
        (
            {"blueprints:serverType": "cx23\nrm"},
            "stacks/Pulumi.single-vm-hcloud.yaml: blueprints:serverType: must be a server or "
            "instance type like cx23 or t3.small (got 'cx23\\nrm')",
        ),
        (
            {"blueprints:secrets": "hunter2"},
            "stacks/Pulumi.single-vm-hcloud.yaml: blueprints:secrets: must be a map of NAME: value",
        ),
        (
            {"blueprints:subnetCidr": "10.9.0.0/24"},
            "stacks/Pulumi.single-vm-hcloud.yaml: blueprints:subnetCidr: 10.9.0.0/24 is not "
            "inside networkCidr 10.0.0.0/16",
        ),
        (
            {"blueprints:deployerNetworks": "runner"},
            "stacks/Pulumi.single-vm-hcloud.yaml: blueprints:deployerNetworks: must be a list of "
            "networks like ['198.51.100.7/32'] (got 'runner')",
        ),
        (
            {"blueprints:deployerNetworks": '["198.51.100.300/32"]'},
            "stacks/Pulumi.single-vm-hcloud.yaml: blueprints:deployerNetworks: "
            "'198.51.100.300/32' is not a network like 198.51.100.7/32 or 2001:db8::/48",
        ),
    ],
)
def test_bad_stack_settings_give_one_clear_line(overrides, message):
    with pytest.raises(PlanError) as exc:
        plan_stack("single-vm-hcloud", ROOT, overrides)
    assert str(exc.value) == message


def test_unknown_stack_names_the_known_ones():
    with pytest.raises(PlanError) as exc:
        plan_stack("single-vm-gcp", ROOT)
    assert str(exc.value).startswith("stacks/Pulumi.single-vm-gcp.yaml: no such stack file;")
    assert "single-vm-hcloud" in str(exc.value)


def test_encrypted_secret_becomes_a_placeholder(tmp_path):
    project = _copy_project(tmp_path)
    stack = project / "stacks/Pulumi.single-vm-hcloud.yaml"
    data = yaml.safe_load(stack.read_text())
    data["config"]["blueprints:secrets"] = {"DATABASE_PASSWORD": {"secure": "v1:AAAA"}}
    stack.write_text(yaml.safe_dump(data))
    plan = plan_stack("single-vm-hcloud", project)
    text = release_command(plan, "release-secrets").plain_inputs()["stdin"]
    assert "v1:AAAA" not in text
    assert "<secret:DATABASE_PASSWORD>" in text
    assert any("encrypted" in n for n in plan.notes)


def _copy_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "Pulumi.yaml", project)
    for folder in ("stacks", "examples"):
        shutil.copytree(ROOT / folder, project / folder)
    (project / "blueprints").mkdir()
    shutil.copy(ROOT / "blueprints/program.py", project / "blueprints/program.py")
    return project


@pytest.mark.parametrize("stack", STACKS)
def test_replacements_are_safe_for_the_data(plans, stack):
    """A replaced server goes first (its name is reused; on AWS a new instance is the only way a
    changed user data is applied), and the volume attachment is not detached on its own while
    the server still runs: it goes with the server, which shuts down cleanly first."""
    plan, cloud = plans[stack], cloud_of(stack)
    nodes = servers(plan, cloud)
    assert all(s.delete_before_replace for s in nodes.values())
    attachment = only(plan, ATTACH[cloud])
    assert attachment.deleted_with == nodes["primary"].name
    if cloud == "hcloud":
        assert all(s.inputs["shutdownBeforeDeletion"] is True for s in nodes.values())
    else:
        for s in nodes.values():
            assert s.inputs["userDataReplaceOnChange"] is True
            assert s.inputs["metadataOptions"]["httpPutResponseHopLimit"] == 1
            assert s.inputs["metadataOptions"]["httpTokens"] == "required"
        assert attachment.inputs["stopInstanceBeforeDetaching"] is True


@pytest.mark.parametrize("stack", STACKS)
def test_cloud_names_and_labels_carry_the_stack(plans, stack):
    cloud = cloud_of(stack)
    for server in servers(plans[stack], cloud).values():
        labels = server.inputs["labels" if cloud == "hcloud" else "tags"]
        assert labels["stack"] == stack and labels["app"] == "shop"
        name = server.inputs["name"] if cloud == "hcloud" else labels["Name"]
        assert name.startswith(f"shop-{stack}-")


def test_existing_hcloud_ssh_key_is_referenced_not_uploaded():
    plan = plan_stack("single-vm-hcloud", ROOT, {"blueprints:hcloudSshKey": "ops-laptop"})
    assert plan.of_type("hcloud:index/sshKey:SshKey") == []
    assert {tuple(s.inputs["sshKeys"]) for s in servers(plan, "hcloud").values()} == {
        ("ops-laptop",)
    }


def test_plain_text_secrets_are_flagged(tmp_path):
    project = _copy_project(tmp_path)
    stack = project / "stacks/Pulumi.single-vm-hcloud.yaml"
    data = yaml.safe_load(stack.read_text())
    data["config"]["blueprints:secrets"] = {
        "DATABASE_PASSWORD": "plain",
        "DJANGO_SECRET_KEY": {"secure": "v1:AAAA"},
    }
    stack.write_text(yaml.safe_dump(data))
    notes = plan_stack("single-vm-hcloud", project).notes
    assert any(
        n.startswith("stored in plain text") and "secrets.DATABASE_PASSWORD" in n for n in notes
    )
    assert not any("plain text" in n and "DJANGO_SECRET_KEY" in n for n in notes)


def test_program_warnings_become_plan_notes(plans):
    assert any("has no backup storage" in n for n in plans["single-vm-hcloud"].notes)


def test_blueprint_rules_are_reported_before_any_resource(tmp_path):
    project = _copy_project(tmp_path)
    spec = yaml.safe_load((project / "examples/app.yaml").read_text())
    spec["volumes"]["caddy"] = {"size_gb": 1}
    spec["services"]["redis"]["ports"] = [{"port": 6379, "expose": "tcp", "public_port": 16379}]
    spec["services"]["redis"]["replicas"] = 2
    (project / "examples/app.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(PlanError) as exc:
        plan_stack("single-vm-hcloud", project)
    lines = str(exc.value).splitlines()
    spec_path = project / "examples/app.yaml"
    assert lines[0] == (
        f"{spec_path}: volumes.caddy: is reserved by the single-vm blueprint for the reverse "
        "proxy's TLS state (/srv/data/caddy); rename the volume"
    )
    assert lines[1].startswith(f"{spec_path}: services.redis.replicas: must be 1 for a service")
    assert len(lines) == 2
