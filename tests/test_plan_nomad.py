"""Both nomad stacks evaluated offline under Pulumi's mock runtime (blueprints.plan)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml

from blueprints.dns import APEX_NOTE
from blueprints.plan import PlanError, is_secret, list_stacks, plan_stack
from blueprints.render.unpack import server_user_data, stack_files, user_data_files
from blueprints.rungs.nomad import bootstrap as r

ROOT = Path(__file__).resolve().parent.parent
# Paths as user_data_files() gives them (no leading slash).
GOSSIP_CONFIG, KEY_FILE, TOKEN_FILE = (
    p.lstrip("/") for p in (r.GOSSIP_CONFIG, r.KEY_FILE, r.TOKEN_FILE)
)
JOB = "nomad:index/job:Job"
VARIABLE = "nomad:index/variable:Variable"
COMMAND = "command:remote:Command"
STACKS = ["nomad-hcloud", "nomad-localstack"]
SERVER = {"hcloud": "hcloud:index/server:Server", "aws": "aws:ec2/instance:Instance"}
VOLUME = {"hcloud": "hcloud:index/volume:Volume", "aws": "aws:ebs/volume:Volume"}
ATTACH = {
    "hcloud": "hcloud:index/volumeAttachment:VolumeAttachment",
    "aws": "aws:ec2/volumeAttachment:VolumeAttachment",
}
PLACEMENT = {
    "hcloud": "hcloud:index/placementGroup:PlacementGroup",
    "aws": "aws:ec2/placementGroup:PlacementGroup",
}
UD_FIELD = {"hcloud": "userData", "aws": "userDataBase64"}
NODES = ["node-1", "node-2", "node-3"]
PRIVATE_IPS = {"node-1": "10.0.1.10", "node-2": "10.0.1.11", "node-3": "10.0.1.12"}


def cloud_of(stack: str) -> str:
    return "hcloud" if stack.endswith("hcloud") else "aws"


@pytest.fixture(scope="module")
def plans():
    return {s: plan_stack(s, ROOT) for s in STACKS}


def only(plan, type_):
    found = plan.of_type(type_)
    assert len(found) == 1, f"expected one {type_}, got {[r.name for r in found]}"
    return found[0]


def servers(plan, cloud):
    return {r.name.split("-", 3)[-1]: r for r in plan.of_type(SERVER[cloud])}


def rid(resource, cloud):
    """A resource's id as another resource's input refers to it (hcloud: an integer)."""
    return int(resource.id) if cloud == "hcloud" else resource.id


def node_files(server) -> dict[str, str]:
    text = server_user_data(server)
    assert text is not None and text.startswith("#cloud-config\n")
    return user_data_files(text)


def test_every_nomad_stack_file_is_planned_by_this_suite():
    assert {s for s in list_stacks(ROOT) if s.startswith("nomad-")} == set(STACKS)


@pytest.mark.parametrize("stack", STACKS)
def test_three_servers_in_one_spread_group_on_the_private_network(plans, stack):
    plan, cloud = plans[stack], cloud_of(stack)
    nodes = servers(plan, cloud)
    assert sorted(nodes) == NODES
    group = only(plan, PLACEMENT[cloud])
    assert group.inputs["type" if cloud == "hcloud" else "strategy"] == "spread"
    key = "placementGroupId" if cloud == "hcloud" else "placementGroup"
    assert {s.inputs[key] for s in nodes.values()} == {rid(group, cloud)}
    if cloud == "hcloud":
        network = only(plan, "hcloud:index/network:Network")
        for name, s in nodes.items():
            [net] = s.inputs["networks"]
            assert net == {"networkId": rid(network, cloud), "ip": PRIVATE_IPS[name]}
    else:
        subnet = only(plan, "aws:ec2/subnet:Subnet")
        for name, s in nodes.items():
            assert s.inputs["privateIp"] == PRIVATE_IPS[name]
            assert s.inputs["subnetId"] == subnet.id


def test_hcloud_load_balancer_targets_and_services(plans):
    plan = plans["nomad-hcloud"]
    lb = only(plan, "hcloud:index/loadBalancer:LoadBalancer")
    nodes = servers(plan, "hcloud")
    targets = plan.of_type("hcloud:index/loadBalancerTarget:LoadBalancerTarget")
    assert sorted(t.inputs["serverId"] for t in targets) == sorted(
        rid(s, "hcloud") for s in nodes.values()
    )
    assert all(t.inputs["usePrivateIp"] is True for t in targets)
    assert {t.inputs["loadBalancerId"] for t in targets} == {rid(lb, "hcloud")}
    services = plan.of_type("hcloud:index/loadBalancerService:LoadBalancerService")
    assert sorted(
        (s.inputs["protocol"], s.inputs["listenPort"], s.inputs["destinationPort"])
        for s in services
    ) == [("tcp", 80, 80), ("tcp", 443, 443)]
    only(plan, "hcloud:index/loadBalancerNetwork:LoadBalancerNetwork")


def test_aws_load_balancer_listeners_and_targets(plans):
    plan = plans["nomad-localstack"]
    lb = only(plan, "aws:lb/loadBalancer:LoadBalancer")
    assert lb.inputs["loadBalancerType"] == "network"
    listeners = plan.of_type("aws:lb/listener:Listener")
    assert sorted(x.inputs["port"] for x in listeners) == [80, 443]
    groups = plan.of_type("aws:lb/targetGroup:TargetGroup")
    assert sorted(g.inputs["port"] for g in groups) == [80, 443]
    # the nodes see the balancer's private address, so they need no public 80/443 rule
    assert {str(g.inputs.get("preserveClientIp")).lower() for g in groups} == {"false"}
    nodes = servers(plan, "aws")
    attachments = plan.of_type("aws:lb/targetGroupAttachment:TargetGroupAttachment")
    assert sorted((a.inputs["port"], a.inputs["targetId"]) for a in attachments) == sorted(
        (port, s.id) for port in (80, 443) for s in nodes.values()
    )


def test_hcloud_firewall_rules_exactly(plans):
    plan = plans["nomad-hcloud"]
    fw = only(plan, "hcloud:index/firewall:Firewall")
    rules = sorted(
        (r["direction"], r["protocol"], r["port"], tuple(r["sourceIps"]))
        for r in fw.inputs["rules"]
    )
    # Hetzner firewalls do not filter the private network: RPC/Serf stay there, 80/443 arrive
    # from the load balancer's private address.
    assert rules == [
        ("in", "tcp", "22", ("203.0.113.0/24",)),
        ("in", "tcp", "4646", ("203.0.113.0/24",)),
    ]
    for s in servers(plan, "hcloud").values():
        assert s.inputs["firewallIds"] == [rid(fw, "hcloud")]


def test_aws_security_group_rules_exactly(plans):
    plan = plans["nomad-localstack"]
    nodes = servers(plan, "aws")
    [node_group] = {g for s in nodes.values() for g in s.inputs["vpcSecurityGroupIds"]}
    sg = next(r for r in plan.of_type("aws:ec2/securityGroup:SecurityGroup") if r.id == node_group)
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
        ("-1", 0, 0, ("10.0.0.0/16",), ()),  # the private network: RPC, Serf, the balancer
        ("tcp", 22, 22, ("203.0.113.0/24",), ()),
        ("tcp", 4646, 4646, ("203.0.113.0/24",), ()),
    ]


@pytest.mark.parametrize("stack", STACKS)
def test_volume_attached_to_the_data_node_only(plans, stack):
    plan, cloud = plans[stack], cloud_of(stack)
    nodes = servers(plan, cloud)
    volume, attachment = only(plan, VOLUME[cloud]), only(plan, ATTACH[cloud])
    assert attachment.inputs["serverId" if cloud == "hcloud" else "instanceId"] == rid(
        nodes["node-1"], cloud
    )
    assert attachment.inputs["volumeId"] == rid(volume, cloud)
    assert volume.protect and attachment.delete_before_replace
    assert attachment.deleted_with == nodes["node-1"].name
    assert volume.inputs["size"] == 21  # pgdata 20 GB + 1 GB for the ingress's TLS state
    device = (
        f"/dev/disk/by-id/scsi-0HC_Volume_{volume.id}"
        if cloud == "hcloud"
        else f"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{volume.id.replace('-', '')}"
    )
    assert device in node_files(nodes["node-1"])["etc/systemd/system/srv-data.mount"]
    for name in ("node-2", "node-3"):
        assert "etc/systemd/system/srv-data.mount" not in node_files(nodes[name])


@pytest.mark.parametrize("stack", STACKS)
def test_secrets_are_marked_secret(plans, stack):
    plan, cloud = plans[stack], cloud_of(stack)
    assert is_secret(plan.outputs["nomadToken"])
    assert plan.public_outputs()["nomadToken"] == "[secret]"
    token = f"<secret:shop-{stack}-acl-bootstrap>"
    gossip = f"<secret:shop-{stack}-gossip>"
    assert plan.outputs["nomadToken"]["value"] == token
    # the user data holds no secret (so a preview shows its diff): no token, key or gossip key
    for s in servers(plan, cloud).values():
        assert not is_secret(s.inputs[UD_FIELD[cloud]])
        files = node_files(s)
        assert not {TOKEN_FILE, GOSSIP_CONFIG, KEY_FILE} & set(files)
        text = server_user_data(s)
        assert token not in text and gossip not in text and "OFFLINE-" not in text
    # they travel as the secret stdin of each node's ready command, with the node's own key
    readies = [c for c in plan.of_type(COMMAND) if c.name.endswith("-ready")]
    assert len(readies) == 3
    for ready in readies:
        assert is_secret(ready.inputs["stdin"])
        node = ready.name.removeprefix(f"shop-{stack}-").removesuffix("-ready")
        document = json.loads(ready.plain_inputs()["stdin"])
        assert f"OFFLINE-shop-{stack}-{node}-key" in document["key"]
        assert (document["token"], document["gossip_key"]) == (token, gossip)
    for variable in plan.of_type(VARIABLE):
        assert is_secret(variable.inputs["items"])
        if "-secrets-backup" in variable.name:  # the backup's (test_backup_nomad)
            continue
        assert all(v.startswith("<secret:") for v in variable.plain_inputs()["items"].values())
    # nothing secret in any resource's public inputs, nor in the public outputs
    public = yaml.safe_dump([r.public_inputs() for r in plan.resources])
    public += yaml.safe_dump(plan.public_outputs())
    key = f"OFFLINE-shop-{stack}-node-1-key"
    backup = (f"offline-shop-{stack}-backup-password", "<secret:backupSecretKey>")
    for secret in (token, gossip, "<secret:DATABASE_PASSWORD>", key, *backup):
        assert secret not in public


@pytest.mark.parametrize("stack", STACKS)
def test_node_files_differ_only_where_they_must(plans, stack):
    """Every node has its own address; only node-1 has the volume and the ACL bootstrap."""
    nodes = servers(plans[stack], cloud_of(stack))
    files = {n: node_files(s) for n, s in nodes.items()}
    assert set(files["node-2"]) == set(files["node-3"])
    acl = "usr/local/lib/blueprints/nomad-acl-bootstrap"
    assert acl in files["node-1"] and acl not in files["node-2"]
    for name, ip in PRIVATE_IPS.items():
        assert f'rpc  = "{ip}"' in files[name]["etc/nomad.d/blueprints.hcl"]


@pytest.mark.parametrize("stack", STACKS)
def test_outputs(plans, stack):
    out = plans[stack].public_outputs()
    nodes = servers(plans[stack], cloud_of(stack))
    assert out["url"] == "https://shop.example.com"
    assert out["dataNode"] == "node-1"
    assert sorted(out["serverIps"]) == NODES
    ip = out["serverIps"]["node-1"]
    assert out["nomadAddress"] == f"https://{ip}:4646"
    assert out["nomadTunnel"] == f"ssh -N -L 4646:127.0.0.1:4646 deploy@{ip}"
    assert out["nomadCaCert"].startswith("-----BEGIN CERTIFICATE-----")
    address = out["loadBalancer"]
    record = f"shop.example.com. A {address}" if stack.endswith("hcloud") else None
    assert out["dnsRecord"] == (record or f"shop.example.com. CNAME {address}.\n{APEX_NOTE}")
    assert len(nodes) == 3


@pytest.mark.parametrize("stack", STACKS)
def test_user_data_fits_the_cloud_limit(plans, stack):
    cloud = cloud_of(stack)
    for s in servers(plans[stack], cloud).values():
        sent = s.plain_inputs()[UD_FIELD[cloud]]
        size = len(sent) if cloud == "hcloud" else len(base64.b64decode(sent))
        assert size <= {"hcloud": 32 * 1024, "aws": 16 * 1024}[cloud]


def test_render_to_disk_holds_placeholders_only(plans):
    files = stack_files(plans["nomad-hcloud"])
    variables = {p: t for p, t in files.items() if p.startswith("release/variables/")}
    assert sorted(variables) == [
        f"release/variables/nomad/jobs/shop-{s}/{s}/{s}.json" for s in ("postgres", "web", "worker")
    ]
    assert all("<secret:" in t for t in variables.values())
    jobs = sorted(p for p in files if p.startswith("release/jobs/"))
    assert jobs == [
        f"release/jobs/{j}.nomad.hcl"
        for j in ("blueprints_ingress", "shop-postgres", "shop-redis", "shop-web", "shop-worker")
    ]


def test_planning_is_deterministic(plans):
    again = plan_stack("nomad-localstack", ROOT)
    first = plans["nomad-localstack"]
    assert [r.as_json() for r in again.resources] == [r.as_json() for r in first.resources]
    assert [r.plain_inputs() for r in again.resources] == [
        r.plain_inputs() for r in first.resources
    ]


def test_timing_settings_reach_agent_and_job():
    plan = plan_stack(
        "nomad-hcloud",
        ROOT,
        {
            "blueprints:heartbeatGrace": 25,
            "blueprints:minHeartbeatTtl": 15,
            "blueprints:lostAfter": 120,
            "blueprints:rescheduleDelay": 5,
        },
    )
    files = node_files(servers(plan, "hcloud")["node-1"])
    agent = files["etc/nomad.d/blueprints.hcl"]
    assert 'heartbeat_grace   = "25s"' in agent and 'min_heartbeat_ttl = "15s"' in agent
    for job in plan.of_type(JOB):
        spec = job.plain_inputs()["jobspec"]
        assert spec.count('delay          = "5s"') == 1, job.name
        if job.name != "shop-nomad-hcloud-job-ingress":
            assert spec.count('lost_after = "120s"') == 1, job.name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"blueprints:nomadVersion": "latest"},
            "stacks/Pulumi.nomad-hcloud.yaml: blueprints:nomadVersion: must be a Nomad release "
            "like 1.10.5 (got 'latest')",
        ),
        (
            {"blueprints:heartbeatGrace": 0},
            "stacks/Pulumi.nomad-hcloud.yaml: blueprints:heartbeatGrace: must be at least 1 "
            "(got '0')",
        ),
        (
            {"blueprints:active": "spare"},
            "stacks/Pulumi.nomad-hcloud.yaml: blueprints:active: applies to the single-vm "
            "blueprint only, not to nomad; remove it from the stack file",
        ),
    ],
)
def test_bad_stack_settings_give_one_clear_line(overrides, message):
    with pytest.raises(PlanError) as exc:
        plan_stack("nomad-hcloud", ROOT, overrides)
    assert str(exc.value) == message


def test_nomad_keys_do_not_apply_to_single_vm():
    with pytest.raises(PlanError) as exc:
        plan_stack("single-vm-hcloud", ROOT, {"blueprints:lostAfter": 60})
    assert str(exc.value) == (
        "stacks/Pulumi.single-vm-hcloud.yaml: blueprints:lostAfter: applies to the nomad "
        "blueprint only, not to single-vm; remove it from the stack file"
    )


EVERYTHING = ROOT / "tests" / "everything" / "app.yaml"
DISTINCTIVE = "Zq9-plan-distinctive"


def test_tasks_and_schedules_are_jobs_the_services_wait_for():
    """Each task: a registered job and a run on the data node per release, in the order written,
    after the jobs of what its service depends on; web and worker wait for every run; the
    schedules are periodic jobs. No secret value in any public input."""
    stack = "nomad-hcloud"
    secrets = {
        n: f"{DISTINCTIVE}-{n}" for n in ("GHCR_TOKEN", "POSTGRES_PASSWORD", "DJANGO_SECRET_KEY")
    }
    plan = plan_stack(
        stack, ROOT, {"blueprints:spec": str(EVERYTHING), "blueprints:secrets": secrets}
    )
    p = f"full-{stack}"
    by_name = {r.name: r for r in plan.resources}
    jobs = {r.name.removeprefix(f"{p}-job-"): r for r in plan.of_type(JOB)}
    assert {"task-migrate", "task-seed", "schedule-clear-sessions", "schedule-report"} <= set(jobs)
    runs = [by_name[f"{p}-task-{t}"] for t in ("migrate", "seed")]
    assert all(r.type == COMMAND for r in runs)
    assert f"{p}-job-task-migrate" in runs[0].depends_on
    assert {f"{p}-job-task-seed", f"{p}-task-migrate"} <= set(runs[1].depends_on)
    assert f"{p}-task-migrate" in jobs["task-seed"].depends_on
    # the migration's service depends on postgres and redis: their jobs first
    assert {f"{p}-job-postgres", f"{p}-job-redis"} <= set(jobs["task-migrate"].depends_on)
    for service in ("web", "worker"):
        assert {f"{p}-task-migrate", f"{p}-task-seed"} <= set(jobs[service].depends_on)
    for name in ("postgres", "redis"):
        assert not any("-task-" in d for d in jobs[name].depends_on)
    for name in ("schedule-clear-sessions", "schedule-report"):
        assert jobs[name].plain_inputs()["detach"] is True
        assert "periodic {" in jobs[name].plain_inputs()["jobspec"]
    assert jobs["task-migrate"].plain_inputs()["detach"] is True
    assert "parameterized {" in jobs["task-migrate"].plain_inputs()["jobspec"]
    run = runs[0].plain_inputs()
    assert "nomad job dispatch -detach -meta blueprints_release=" in run["create"]
    assert is_secret(runs[0].inputs["stdin"])
    variables = {r.name.removeprefix(f"{p}-secrets-") for r in plan.of_type(VARIABLE)}
    assert {"web", "worker", "postgres", "task-migrate", "schedule-report"} <= variables
    public = yaml.safe_dump([r.public_inputs() for r in plan.resources])
    public += yaml.safe_dump(plan.public_outputs())
    assert DISTINCTIVE not in public
    web = by_name[f"{p}-secrets-web"].plain_inputs()["items"]
    assert web["registry-password"] == f"{DISTINCTIVE}-GHCR_TOKEN"
    # services sharing a volume: the plan says where they run
    assert any(
        "services web, worker share volume uploads, so they run on one node" in n
        for n in plan.notes
    )
    # the registry's pull token reaches the pulling tasks' environment: the plan warns
    assert any(
        "pull token of ghcr.io is visible in the environment" in n
        and "hashicorp/nomad#15384" in n
        and "read-only pull token" in n
        for n in plan.notes
    )


def test_no_registry_no_registry_warning(plans):
    for plan in plans.values():
        assert not any("pull token" in n for n in plan.notes)
