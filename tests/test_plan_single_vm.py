"""Both single-vm stacks evaluated offline under Pulumi's mock runtime (blueprints.plan)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from spec_plans import copy_project

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
POWER = {
    "hcloud": "pulumi-python:dynamic/blueprints:ServerPower",
    "aws": "aws:ec2transitgateway/instanceState:InstanceState",
}
# How each cloud's power resource says "running" and "off".
POWER_STATES = {"hcloud": ("running", "off"), "aws": ("running", "stopped")}


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
    project = copy_project(tmp_path)
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


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("mode", ["warm", "cold"])
def test_user_data_is_identical_and_never_parks_the_node(stack, mode):
    """No node powers itself off (no cloud-init power_state): the program keeps their power
    through the cloud's API, so a node meant to be active never ends up off after its first
    boot. Role and spare mode change no byte of either node's user data."""
    plan, cloud = plan_stack(stack, ROOT, {"blueprints:spareMode": mode}), cloud_of(stack)
    nodes = servers(plan, cloud)
    assert text_of(nodes["primary"]) == text_of(nodes["spare"])
    assert "power_state" not in user_data(nodes["primary"])
    assert "poweroff" not in text_of(nodes["primary"])
    default = servers(plan_stack(stack, ROOT), cloud)
    flipped = servers(plan_stack(stack, ROOT, {"blueprints:active": "spare"}), cloud)
    assert {text_of(s) for s in (*default.values(), *flipped.values())} == {
        text_of(nodes["primary"])
    }


def power_of(plan, cloud) -> dict[str, str]:
    """node -> the state its power resource keeps it in."""
    nodes = {s.id: n for n, s in servers(plan, cloud).items()}
    key = "serverId" if cloud == "hcloud" else "instanceId"
    return {nodes[str(r.inputs[key])]: r.inputs["state"] for r in plan.of_type(POWER[cloud])}


def standby_images(plan):
    found = [r for r in plan.of_type(COMMAND) if r.name.endswith("-standby-images")]
    assert len(found) <= 1
    return found[0] if found else None


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("mode", ["warm", "cold"])
def test_spare_modes(stack, mode):
    """warm: both nodes run and the standby keeps the release's images pulled; cold: the
    standby is powered off (hcloud: a power resource of the program's; aws: InstanceState)."""
    plan, cloud = plan_stack(stack, ROOT, {"blueprints:spareMode": mode}), cloud_of(stack)
    on, off = POWER_STATES[cloud]
    assert power_of(plan, cloud) == {"primary": on, "spare": on if mode == "warm" else off}
    out = plan.public_outputs()
    assert out["spareMode"] == mode and out["activeNode"] == "primary"
    billing = out["spareBilling"]
    assert {
        ("hcloud", "warm"): "warm spare runs" in billing and "Hetzner bills it" in billing,
        ("hcloud", "cold"): "powered off" in billing
        and "bills powered-off servers in full" in billing,
        ("aws", "warm"): "warm spare runs" in billing and "bills its compute" in billing,
        ("aws", "cold"): "stopped" in billing and "no compute" in billing,
    }[cloud, mode], billing
    pull = standby_images(plan)
    if mode == "cold":
        assert pull is None
        return
    # the images of the release (and the proxy's), on stdin of a fixed command
    from blueprints.render.single_vm import PULL_IMAGES_COMMAND
    from blueprints.spec import load_spec

    app = load_spec(ROOT / "examples/app.yaml")
    inputs = pull.plain_inputs()
    assert inputs["create"] == inputs["update"] == PULL_IMAGES_COMMAND
    assert inputs["stdin"].splitlines() == sorted(
        {svc.image for svc in app.services.values()} | {"caddy:2.8.4"}
    )
    assert "triggers" not in inputs
    # to the standby itself, as the deploy user, after its power resource
    assert inputs["connection"]["host"] == out["serverIps"]["spare"]
    assert inputs["connection"]["user"] == "deploy"
    assert f"shop-{stack}-spare-power" in pull.depends_on
    assert f"shop-{stack}-spare" in pull.depends_on


def test_hcloud_power_resource_inputs(plans):
    plan = plans["single-vm-hcloud"]
    nodes = servers(plan, "hcloud")
    for node, server in nodes.items():
        power = plan.get(f"shop-single-vm-hcloud-{node}-power")
        assert power.type == POWER["hcloud"]
        inputs = power.public_inputs()
        assert inputs["serverId"] == server.id and inputs["state"] == "running"
        # the API token is a secret input (and so is the provider's serialized code)
        assert inputs["token"] == "[secret]" and inputs["__provider"] == "[secret]"
        assert power.plain_inputs()["token"] == "<secret:token>"
        assert inputs["timeout"] == 10 and "endpoint" not in inputs
        assert power.deleted_with == server.name
    assert any("hcloud:token is not set" in n for n in plan.notes)


def test_hcloud_power_takes_the_token_and_the_endpoint(monkeypatch):
    monkeypatch.setenv("HCLOUD_ENDPOINT", "http://127.0.0.1:4000/v1")
    plan = plan_stack(
        "single-vm-hcloud", ROOT, {"hcloud:token": "tok-123", "blueprints:apiTimeout": 4}
    )
    power = plan.get("shop-single-vm-hcloud-spare-power").plain_inputs()
    assert power["token"] == "tok-123"
    assert power["endpoint"] == "http://127.0.0.1:4000/v1" and power["timeout"] == 4
    assert not any("hcloud:token is not set" in n for n in plan.notes)


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
    project = copy_project(tmp_path)
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
    project = copy_project(tmp_path)
    (project / "stacks/Pulumi.single-vm-aws.yaml").write_text(
        "config:\n  blueprints:blueprint: single-vm\n  blueprints:target: aws\n"
        "  blueprints:ami: ami-0123456789abcdef0\n"
    )
    plan = plan_stack("single-vm-aws", project)
    for server in servers(plan, "aws").values():
        assert server.inputs["ami"] == "ami-0123456789abcdef0"
        assert server.ignore_changes == []


def _diff(before, after) -> set[str]:
    """Names of the resources changed, added or removed."""
    a = {r.name: (r.type, r.inputs) for r in before.resources}
    b = {r.name: (r.type, r.inputs) for r in after.resources}
    return {name for name in a.keys() | b.keys() if a.get(name) != b.get(name)}


@pytest.mark.parametrize("stack", STACKS)
def test_a_first_deploy_places_on_the_configured_node(plans, flipped, stack):
    """Where the cloud holds nothing yet, blueprints:active says where the volume and the IP go;
    flipping it changes only them, the power states and the standby's image pulls."""
    before, after, cloud = plans[stack], flipped[stack], cloud_of(stack)
    changed = _diff(before, after)
    expected = {f"shop-{stack}-data-attachment", f"shop-{stack}-ip-assignment"}
    if cloud == "aws":  # cold by default: the standby is the one stopped, after its first boot
        expected |= {f"shop-{stack}-primary-power", f"shop-{stack}-spare-power"}
        expected |= {f"shop-{stack}-primary-first-boot", f"shop-{stack}-spare-first-boot"}
    else:  # warm by default: the images go to the other node
        expected |= {f"shop-{stack}-standby-images"}
    assert changed == expected
    nodes = servers(after, cloud)
    key = "serverId" if cloud == "hcloud" else "instanceId"
    spare_id = int(nodes["spare"].id) if cloud == "hcloud" else nodes["spare"].id
    assert only(after, ATTACH[cloud]).inputs[key] == spare_id
    assert only(after, ASSIGN[cloud]).inputs[key] == spare_id
    assert after.public_outputs()["activeNode"] == "spare"
    on, off = POWER_STATES[cloud]
    assert power_of(after, cloud) == {"primary": off if cloud == "aws" else on, "spare": on}
    # nothing was found, so nothing to warn about
    assert not [n for n in before.notes + after.notes if n.startswith("single-vm:")]


# --- the cloud is the truth: what the program finds before it places anything ----------------


def cloud_says(
    cloud: str,
    *,
    volume: str | None = "absent",
    address: str | None = "absent",
    status: dict[str, str] | None = None,
):
    """A look-up answerer (blueprints.plan.Lookup) for a stack whose volume is attached to
    `volume` (a node, None for no server, "absent" for no volume yet), whose floating IP points
    at `address` (likewise) and whose nodes have `status` (default: both exist and run)."""
    status = {"primary": "running", "spare": "running"} if status is None else status
    ids = {"primary": 501, "spare": 502}
    if cloud == "hcloud":
        labels = {"app": "shop", "blueprint": "single-vm", "stack": "single-vm-hcloud"}
        labels["managed-by"] = "blueprints"

        def answer(token: str, args: dict):
            if token == "hcloud:index/getVolumes:getVolumes":
                other = {"id": 700, "name": "someone-elses", "labels": labels, "serverId": 501}
                if volume == "absent":
                    return {"volumes": [other]}
                mine = {"id": 701, "name": "shop-single-vm-hcloud-data", "labels": labels}
                if volume is not None:
                    mine["serverId"] = ids[volume]
                return {"volumes": [other, mine]}
            if token == "hcloud:index/getFloatingIps:getFloatingIps":
                if address == "absent":
                    return {"floatingIps": []}
                ip = {"id": 801, "name": "shop-single-vm-hcloud-ip", "labels": labels}
                if address is not None:
                    ip["serverId"] = ids[address]
                return {"floatingIps": [ip]}
            if token == "hcloud:index/getServers:getServers":
                return {
                    "servers": [
                        {"id": ids[n], "status": s, "labels": {**labels, "node": n}}
                        for n, s in status.items()
                    ]
                }
            return None

        return answer

    volume_id, address_ip = "vol-0data", "198.51.100.9"

    def answer_aws(token: str, args: dict):
        if token == "aws:ebs/getEbsVolumes:getEbsVolumes":
            return {"ids": [] if volume == "absent" else [volume_id]}
        if token == "aws:ec2/getEips:getEips":
            return {"publicIps": [] if address == "absent" else [address_ip]}
        if token == "aws:ec2/getInstances:getInstances":
            node = args["instanceTags"]["node"]
            if node not in status:
                return {"ids": []}
            state = {"running": "running", "off": "stopped"}[status[node]]
            match = state in args["instanceStateNames"]
            for where in args.get("filters") or []:
                if where["name"] == "block-device-mapping.volume-id":
                    match = match and volume == node and where["values"] == [volume_id]
                elif where["name"] == "network-interface.association.public-ip":
                    match = match and address == node and where["values"] == [address_ip]
                else:
                    raise AssertionError(f"unexpected filter {where}")
            return {"ids": [f"i-{ids[node]}"] if match else []}
        return None

    return answer_aws


def placed_on(plan, cloud) -> tuple[str, str]:
    """(node the volume is attached to, node the floating IP is assigned to)."""
    nodes = {s.id: n for n, s in servers(plan, cloud).items()}
    key = "serverId" if cloud == "hcloud" else "instanceId"
    return (
        nodes[str(only(plan, ATTACH[cloud]).inputs[key])],
        nodes[str(only(plan, ASSIGN[cloud]).inputs[key])],
    )


# What the power warnings say each cloud's update does to a node found off.
POWERS_ON = {
    "hcloud": "this update powers it on.",
    # Pulumi.yaml: `options: refresh: always`
    "aws": "this update powers it on (Pulumi.yaml has Pulumi refresh its state first, which "
    "reads the power state; `pulumi up --refresh=false` would not see it).",
}


def warnings_of(plan) -> list[str]:
    return [n for n in plan.notes if n.startswith("single-vm:")]


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("mode", ["warm", "cold"])
def test_an_unrecorded_promotion_keeps_the_volume_where_it_is(stack, mode):
    """The cloud has the volume and the IP on the spare (`blueprints promote` ran, nobody
    committed the stack file), the stack file still says primary: the update keeps both on the
    spare, the app's node keeps running, and a warning says what to do."""
    cloud = cloud_of(stack)
    status = {"primary": "off", "spare": "running"}  # the promotion fenced the primary
    lookup = cloud_says(cloud, volume="spare", address="spare", status=status)
    plan = plan_stack(stack, ROOT, {"blueprints:spareMode": mode}, lookup)
    assert placed_on(plan, cloud) == ("spare", "spare")
    assert plan.public_outputs()["activeNode"] == "spare"
    on, off = POWER_STATES[cloud]
    assert power_of(plan, cloud) == {"primary": on if mode == "warm" else off, "spare": on}
    [warning, *power] = warnings_of(plan)
    assert warning == (
        "single-vm: the cloud has the data volume attached to spare, but blueprints:active "
        "says primary (a promotion not recorded in the stack file?); keeping the volume, the "
        "floating IP and the app on spare. Record it with `pulumi config set "
        "blueprints:active spare`, or move the app with `blueprints promote --to primary`."
    )
    if mode == "warm":
        # the fenced primary is now the warm standby: powered on, then given the images
        word = "off" if cloud == "hcloud" else "stopped"
        assert power == [
            f"single-vm: primary is {word} in the cloud but is meant to run; {POWERS_ON[cloud]}"
        ]
        pull = standby_images(plan)
        assert pull.depends_on.count(f"shop-{stack}-primary-power") == 1
        host = pull.plain_inputs()["connection"]["host"]
        assert host == plan.public_outputs()["serverIps"]["primary"]
    else:
        assert power == [] and standby_images(plan) is None
    # the stack file agreeing with the cloud: the same placement, no warning about it
    agreed = plan_stack(
        stack, ROOT, {"blueprints:spareMode": mode, "blueprints:active": "spare"}, lookup
    )
    assert placed_on(agreed, cloud) == ("spare", "spare")
    assert not [w for w in warnings_of(agreed) if "blueprints:active" in w]
    assert [r.as_json() for r in agreed.resources] == [r.as_json() for r in plan.resources]


@pytest.mark.parametrize("stack", STACKS)
def test_the_holder_is_looked_up_by_the_stacks_labels(stack):
    cloud = cloud_of(stack)
    plan = plan_stack(stack, ROOT, None, cloud_says(cloud, volume="primary", address="primary"))
    tokens = [t for t, _, _ in plan.lookups]
    labels = {"app": "shop", "blueprint": "single-vm", "stack": stack, "managed-by": "blueprints"}
    if cloud == "hcloud":
        selector = "app=shop,blueprint=single-vm,managed-by=blueprints,stack=single-vm-hcloud"
        assert plan.lookups == [
            ("hcloud:index/getPlacementGroups:getPlacementGroups", {}, None),
            ("hcloud:index/getVolumes:getVolumes", {"withSelector": selector}, None),
            ("hcloud:index/getFloatingIps:getFloatingIps", {"withSelector": selector}, None),
            ("hcloud:index/getServers:getServers", {"withSelector": selector}, None),
        ]
        return
    assert tokens[:3] == [
        "aws:ec2/getKeyPair:getKeyPair",
        "aws:ebs/getEbsVolumes:getEbsVolumes",
        "aws:ec2/getEips:getEips",
    ]
    lock = {"name": "key-name", "values": [f"blueprints-lock-shop-{stack}"]}
    assert plan.lookups[0][1] == {"filters": [lock]}
    assert plan.lookups[1][1]["tags"] == {**labels, "Name": f"shop-{stack}-data"}
    assert plan.lookups[2][1]["tags"] == {**labels, "Name": f"shop-{stack}-ip"}
    holders = [a for t, a, _ in plan.lookups if t.endswith("getInstances") and a["filters"]]
    assert holders and all(a["instanceTags"]["node"] in ("primary", "spare") for a in holders)
    # every look-up goes to the stack's own (LocalStack) provider, not a default one
    assert {p for _, _, p in plan.lookups} == {"localstack"}


@pytest.mark.parametrize("stack", STACKS)
def test_a_volume_on_no_server_goes_where_the_address_is_else_to_the_configured_node(stack):
    cloud = cloud_of(stack)
    warm = {"blueprints:spareMode": "warm"}  # both nodes run, as the cloud says
    plan = plan_stack(stack, ROOT, warm, cloud_says(cloud, volume=None, address=None))
    assert placed_on(plan, cloud) == ("primary", "primary")
    assert warnings_of(plan) == [
        "single-vm: the data volume exists but is attached to no server (an interrupted "
        "promotion?); blueprints:active says primary, so this update attaches it to primary. "
        "To put it elsewhere, run `blueprints promote --to <node>` instead."
    ]
    plan = plan_stack(stack, ROOT, warm, cloud_says(cloud, volume=None, address="spare"))
    assert placed_on(plan, cloud) == ("spare", "spare")
    assert plan.public_outputs()["activeNode"] == "spare"
    assert (
        "the floating IP points at spare, so this update attaches it to spare"
        in (warnings_of(plan)[0])
    )


@pytest.mark.parametrize("stack", STACKS)
def test_the_address_follows_the_volume(stack):
    """A promotion interrupted after moving the volume: the IP still on the old node moves to
    the node holding the volume."""
    cloud = cloud_of(stack)
    plan = plan_stack(
        stack,
        ROOT,
        {"blueprints:active": "spare", "blueprints:spareMode": "warm"},
        cloud_says(cloud, volume="spare", address="primary"),
    )
    assert placed_on(plan, cloud) == ("spare", "spare")
    assert warnings_of(plan) == [
        "single-vm: the floating IP points at primary, not at spare, which holds the data "
        "volume; this update moves it to spare."
    ]


@pytest.mark.parametrize("stack", STACKS)
def test_the_holder_found_off_is_powered_on_and_the_preview_says_so(stack):
    """The node holding the volume is off (it parked itself under an older version, or was
    stopped by hand): its power resource wants it running, and the plan says what happens."""
    cloud = cloud_of(stack)
    lookup = cloud_says(
        cloud, volume="primary", address="primary", status={"primary": "off", "spare": "off"}
    )
    plan = plan_stack(stack, ROOT, {"blueprints:spareMode": "cold"}, lookup)
    on, off = POWER_STATES[cloud]
    assert power_of(plan, cloud) == {"primary": on, "spare": off}
    word = "off" if cloud == "hcloud" else "stopped"
    assert warnings_of(plan) == [
        f"single-vm: primary is {word} in the cloud but is meant to run; {POWERS_ON[cloud]}"
    ]
    # a cold spare found running is powered off again, and that is said too
    lookup = cloud_says(cloud, volume="primary", address="primary")
    notes = warnings_of(plan_stack(stack, ROOT, {"blueprints:spareMode": "cold"}, lookup))
    assert len(notes) == 1
    assert notes[0].startswith(
        "single-vm: spare is running in the cloud but is the cold spare, meant to be off; "
    )


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
            "'mars1'; allowed: fsn1, nbg1, hel1",
        ),
        (
            {"blueprints:region": "eu-west-1"},
            "stacks/Pulumi.single-vm-hcloud.yaml: blueprints:region: does not apply to target "
            "hcloud; remove it from the stack file",
        ),
        (
            {"blueprints:serverTyp": "cx33"},
            "stacks/Pulumi.single-vm-hcloud.yaml: blueprints:serverTyp: unknown key; did you "
            "mean blueprints:serverType? allowed keys here: active, apiTimeout, backupAccessKey, "
            "backupBucket, backupEndpoint, "
            "backupRegion, blueprint, deployerNetworks, hcloudSshKey, healthUrl, image, "
            "location, lockTtl, networkCidr, overcommit, probeTimeout, promoteTimeout, "
            "protectData, serverType, spareMode, spec, subnetCidr, target, watchFailures, "
            "watchInterval",
        ),
        (
            {"blueprints:spareMode": "hot"},
            "stacks/Pulumi.single-vm-hcloud.yaml: blueprints:spareMode: must be 'warm' or 'cold' "
            "(got 'hot')",
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
    project = copy_project(tmp_path)
    stack = project / "stacks/Pulumi.single-vm-hcloud.yaml"
    data = yaml.safe_load(stack.read_text())
    data["config"]["blueprints:secrets"] = {"DATABASE_PASSWORD": {"secure": "v1:AAAA"}}
    stack.write_text(yaml.safe_dump(data))
    plan = plan_stack("single-vm-hcloud", project)
    text = release_command(plan, "release-secrets").plain_inputs()["stdin"]
    assert "v1:AAAA" not in text
    assert "<secret:DATABASE_PASSWORD>" in text
    assert any("encrypted" in n for n in plan.notes)


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
    project = copy_project(tmp_path)
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
    project = copy_project(tmp_path)
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


# --- a promotion in progress stops the program --------------------------------------------------

# A promotion's lock record (blueprints.failover.lock): its labels on Hetzner, tags on AWS.
# beat: 2026-01-01 00:00:00 UTC, by the cloud's clock.
RUNNING_LOCK = {
    "target": "spare",
    "owner": "ci-runner-0123456789ab",
    "beat": "1767225600",
    "state": "running",
    "action": "promote",
}


def with_lock(cloud: str, stack: str, fields: dict | None, error: str | None = None, base=None):
    """A look-up answerer: `base`'s answers (default: the cloud holds nothing) and the stack's
    promotion lock with these labels (tags); `error`: the key pair look-up fails so (aws)."""
    name = f"blueprints-lock-shop-{stack}"
    labels = {"app": "shop", "blueprint": "single-vm", "stack": stack, **(fields or {})}

    def answer(token: str, args: dict):
        if token == "hcloud:index/getPlacementGroups:getPlacementGroups":
            spread = {"id": 1, "name": f"shop-{stack}-spread", "labels": {}, "type": "spread"}
            lock = {"id": 9, "name": name, "labels": labels, "servers": [], "type": "spread"}
            return {"placementGroups": [spread, lock]}
        if token == "aws:ec2/getKeyPair:getKeyPair":
            assert args["filters"] == [{"name": "key-name", "values": [name]}]
            if error is not None:
                return {}, [("", error)]
            return {"id": "key-0lock", "keyName": name, "keyPairId": "key-0lock", "tags": labels}
        return base(token, args) if base is not None else None

    return answer


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("action", ["promote", "park"])
def test_a_running_promotion_stops_the_program(stack, action):
    """While `blueprints promote` (or park) holds the lock, an update could power the node it
    fenced back on or put the volume back: the program stops with one sentence. It cannot read
    the cloud's clock, so it stops at any running lock, however old its heartbeat."""
    fields = {**RUNNING_LOCK, "action": action}
    with pytest.raises(PlanError) as exc:
        plan_stack(stack, ROOT, None, with_lock(cloud_of(stack), stack, fields))
    takeover = " (at once with --takeover)" if action == "promote" else ""
    assert str(exc.value) == (
        f"single-vm: `blueprints {action}` is running on this stack (lock "
        f"blueprints-lock-shop-{stack}, owner ci-runner-0123456789ab, target spare, last "
        "heartbeat 2026-01-01 00:00:00 UTC by the cloud's clock) and this update would undo "
        "what it does, so it stops here; run `pulumi up` again once that run has ended, and if "
        f"it died, `blueprints {action} {stack}` takes the lock over once it has had no "
        f"heartbeat for lockTtl{takeover} and finishes what it started"
    )


@pytest.mark.parametrize("stack", STACKS)
def test_a_failed_promotions_record_is_said_and_an_unreadable_lock_stops(stack):
    cloud = cloud_of(stack)
    base = cloud_says(cloud, volume="spare", address="spare")
    failed = with_lock(cloud, stack, {**RUNNING_LOCK, "state": "failed"}, base=base)
    plan = plan_stack(stack, ROOT, {"blueprints:active": "spare"}, failed)
    assert placed_on(plan, cloud) == ("spare", "spare")
    assert warnings_of(plan)[0] == (
        f"single-vm: the lock blueprints-lock-shop-{stack} records a failed `blueprints "
        "promote` toward spare (owner ci-runner-0123456789ab); this update goes by what the "
        f"cloud holds now, and `blueprints promote {stack}` resumes it."
    )
    with pytest.raises(PlanError) as exc:
        plan_stack(stack, ROOT, None, with_lock(cloud, stack, {"state": "running"}))
    assert str(exc.value).startswith(
        f"single-vm: the promotion lock blueprints-lock-shop-{stack} exists but holds no record "
        "this version can read"
    )
    # no lock: nothing said about one
    assert not [n for n in plan_stack(stack, ROOT).notes if "lock" in n]


def test_an_aws_lock_look_up_that_fails_otherwise_stops_the_program():
    stack = "single-vm-localstack"
    denied = "UnauthorizedOperation: You are not authorized to perform: ec2:DescribeKeyPairs"
    with pytest.raises(PlanError) as exc:
        plan_stack(stack, ROOT, None, with_lock("aws", stack, None, error=denied))
    assert str(exc.value).startswith(
        "single-vm: could not look up the promotion lock (the key pair "
        f"blueprints-lock-shop-{stack}): invoke of aws:ec2/getKeyPair:getKeyPair failed: {denied}"
    )


# --- a cold standby's first boot ----------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_a_cold_standby_is_powered_off_after_its_first_boot(stack):
    """A power-off right after the server is created would cut its first boot short: the cold
    standby's power resource waits for a command on it that waits for cloud-init and pulls the
    release's images. Only while the cloud does not have the node off: an off node booted
    before, and a release never runs the command again."""
    from blueprints.render.single_vm import PULL_IMAGES_COMMAND, standby_images_text
    from blueprints.spec import load_spec

    cloud, cold = cloud_of(stack), {"blueprints:spareMode": "cold"}
    plan = plan_stack(stack, ROOT, cold)  # a first deploy: the cloud has no server yet
    boot = plan.get(f"shop-{stack}-spare-first-boot")
    assert boot.type == COMMAND and boot.parent == "shop"
    inputs = boot.plain_inputs()
    assert inputs["create"] == PULL_IMAGES_COMMAND and "update" not in inputs
    assert inputs["stdin"] == standby_images_text(load_spec(ROOT / "examples/app.yaml"))
    assert boot.ignore_changes == ["stdin"]
    assert inputs["connection"]["host"] == plan.public_outputs()["serverIps"]["spare"]
    assert inputs["connection"]["user"] == "deploy"
    assert f"shop-{stack}-spare" in boot.depends_on
    assert boot.name in plan.get(f"shop-{stack}-spare-power").depends_on
    # the active node is never powered off: nothing to wait for there
    assert [r.name for r in plan.resources if r.name.endswith("-first-boot")] == [boot.name]
    assert not [d for d in plan.get(f"shop-{stack}-primary-power").depends_on if "boot" in d]
    # the cloud has the spare running (an interrupted first deploy): waited for too
    running = plan_stack(stack, ROOT, cold, cloud_says(cloud, volume="primary", address="primary"))
    assert boot.name in running.get(f"shop-{stack}-spare-power").depends_on
    # the cloud has it off: it booted before it was first powered off; nothing to reach
    off = cloud_says(
        cloud, volume="primary", address="primary", status={"primary": "running", "spare": "off"}
    )
    parked = plan_stack(stack, ROOT, cold, off)
    assert not [r for r in parked.resources if r.name.endswith("-first-boot")]
    assert not [d for d in parked.get(f"shop-{stack}-spare-power").depends_on if "boot" in d]
    # warm: the standby runs; its image pull waits for cloud-init itself
    warm = plan_stack(stack, ROOT, {"blueprints:spareMode": "warm"})
    assert not [r for r in warm.resources if r.name.endswith("-first-boot")]


# --- links the program never takes back -----------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_the_volume_and_address_links_are_retained_on_delete(plans, stack):
    """Deleting a stale attachment (replaced without a refresh after `blueprints promote` moved
    the volume) would detach by volume on Hetzner, from the node running the app now: the
    links are retained on delete. A replaced server's attachment still goes with the server."""
    plan, cloud = plans[stack], cloud_of(stack)
    attachment, assignment = only(plan, ATTACH[cloud]), only(plan, ASSIGN[cloud])
    assert attachment.retain_on_delete and assignment.retain_on_delete
    assert attachment.delete_before_replace and assignment.delete_before_replace
    assert attachment.deleted_with == servers(plan, cloud)["primary"].name
    if cloud == "aws":
        # the old association is no longer removed first: the new one may take the address
        assert assignment.inputs["allowReassociation"] is True
    # other rungs keep the plain links
    compose = plan_stack(stack.replace("single-vm", "compose"), ROOT)
    assert not only(compose, ATTACH[cloud]).retain_on_delete


def _plan_json(plan) -> dict:
    """A plan as `blueprints diff` hands it to build_document (blueprints/preview/plan_dump)."""
    return {
        "resources": [
            {
                "type": r.type,
                "name": r.name,
                "parent": r.parent,
                "custom": r.custom,
                "id": r.id,
                "protect": r.protect,
                "deleteBeforeReplace": r.delete_before_replace,
                "replaceOnChanges": r.replace_on_changes,
                "ignoreChanges": r.ignore_changes,
                "provider": r.provider,
                "dependsOn": r.depends_on,
                "deletedWith": r.deleted_with,
                "inputs": r.inputs,
            }
            for r in plan.resources
        ]
    }


def test_a_replaced_server_gets_the_volume_and_address_again():
    """A new OS image replaces both servers: the attachment and the assignment of the active
    node are replaced with it (new server id), so they are created for the new server; being
    retained only means the old link's deletion sends nothing (the old server's deletion
    detaches the volume). A first deploy creates them as before."""
    from blueprints.preview.offline import UNKNOWN, build_document

    stack = "single-vm-hcloud"
    before = plan_stack(stack, ROOT)
    after = plan_stack(stack, ROOT, {"blueprints:image": "ubuntu-26.04"})
    doc = build_document(
        stack,
        _plan_json(before),
        _plan_json(after),
        old_project="blueprints",
        new_project="blueprints",
        base_label="HEAD",
    )
    steps = {s["urn"].rsplit("::", 1)[-1]: s for s in doc["steps"]}
    for node in ("primary", "spare"):
        assert steps[f"shop-{stack}-{node}"]["op"] == "replace"
    for link in ("data-attachment", "ip-assignment"):
        step = steps[f"shop-{stack}-{link}"]
        assert step["op"] == "replace" and "serverId" in step["replaceReasons"], step
        assert step["newState"]["inputs"]["serverId"] == UNKNOWN
    first = build_document(
        stack,
        None,
        _plan_json(before),
        old_project=None,
        new_project="blueprints",
        base_label="HEAD",
    )
    ops = {s["urn"].rsplit("::", 1)[-1]: s["op"] for s in first["steps"]}
    assert ops[f"shop-{stack}-data-attachment"] == ops[f"shop-{stack}-ip-assignment"] == "create"


# --- the warm standby on AWS: its address now -----------------------------------------------------


def test_the_aws_warm_standby_is_reached_at_its_current_address(monkeypatch):
    """A stopped EC2 instance gets a new public address when it starts (the warm standby after
    a fence, say): the image pull asks EC2 for it once the standby's power resource is done,
    with the stack's provider, instead of using the address Pulumi recorded."""
    from blueprints.targets import aws

    seen = []
    real = aws._invoke_output

    def spy(token, args, opts):
        if token == "aws:ec2/getInstance:getInstance":
            seen.append({"args": args, "opts": opts})
        return real(token, args, opts)

    monkeypatch.setattr(aws, "_invoke_output", spy)

    def answer(token: str, args: dict):
        if token == "aws:ec2/getInstance:getInstance":
            return {"id": args["instanceId"], "publicIp": "198.51.100.77"}
        return None

    stack = "single-vm-localstack"
    plan = plan_stack(stack, ROOT, {"blueprints:spareMode": "warm"}, answer)
    assert standby_images(plan).plain_inputs()["connection"]["host"] == "198.51.100.77"
    [call] = seen
    assert [r._name for r in call["opts"].depends_on] == [f"shop-{stack}-spare-power"]
    assert call["opts"].provider._name == "localstack"
    [(args, provider)] = [(a, p) for t, a, p in plan.lookups if t.endswith("getInstance")]
    assert args == {"instanceId": servers(plan, "aws")["spare"].id} and provider == "localstack"
