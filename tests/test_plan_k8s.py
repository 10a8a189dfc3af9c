"""Both k8s stacks evaluated offline under Pulumi's mock runtime (blueprints.plan)."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from spec_plans import copy_project

from blueprints.dns import APEX_NOTE
from blueprints.plan import PlanError, is_secret, list_stacks, plan_stack
from blueprints.render.unpack import server_user_data, user_data_files
from blueprints.spec import AppSpec

ROOT = Path(__file__).resolve().parent.parent
STACKS = ["k8s-hcloud", "k8s-localstack"]
SERVER = {"hcloud": "hcloud:index/server:Server", "aws": "aws:ec2/instance:Instance"}
PLACEMENT = {
    "hcloud": "hcloud:index/placementGroup:PlacementGroup",
    "aws": "aws:ec2/placementGroup:PlacementGroup",
}
UD_FIELD = {"hcloud": "userData", "aws": "userDataBase64"}
CONFIG = "etc/rancher/k3s/config.yaml"
NODE_JSON = "etc/blueprints/k3s/node.json"
NODES = ["cp-1", "cp-2", "cp-3", "worker-1", "worker-2", "worker-3"]
PUBLIC = ("0.0.0.0/0", "::/0")
ADMIN = ("203.0.113.0/24",)


def _pem(label: str, name: str) -> str:
    return f"-----BEGIN {label}-----\nOFFLINE-{name}\n-----END {label}-----\n"


def cloud_of(stack: str) -> str:
    return "hcloud" if stack.endswith("hcloud") else "aws"


@pytest.fixture(scope="module")
def plans():
    return {s: plan_stack(s, ROOT) for s in STACKS}


def only(plan, type_):
    found = plan.of_type(type_)
    assert len(found) == 1, f"expected one {type_}, got {[r.name for r in found]}"
    return found[0]


def servers(plan, cloud) -> dict[str, object]:
    """node suffix (cp-1 ... worker-3) -> server resource"""
    prefix = f"shop-{plan.stack}-"
    return {r.name.removeprefix(prefix): r for r in plan.of_type(SERVER[cloud])}


def files(server) -> dict[str, str]:
    return user_data_files(server_user_data(server))


def labels_of(server, cloud):
    return server.inputs["labels" if cloud == "hcloud" else "tags"]


def ready_stdin(plan, node: str) -> dict:
    """The secret document `<prefix>-<node>-ready` sends to k3s-node-ready."""
    command = plan.get(f"shop-{plan.stack}-{node}-ready")
    assert is_secret(command.inputs["stdin"])
    return json.loads(command.plain_inputs()["stdin"])


def kube_objects(plan) -> dict[tuple[str, str], dict]:
    """(kind, namespace/name) -> inputs of every object sent through the Kubernetes API."""
    out = {}
    for r in plan.resources:
        if r.type.startswith("kubernetes:") and "metadata" in r.inputs:
            inputs = r.plain_inputs()
            meta = inputs["metadata"]
            out[(inputs["kind"], f"{meta.get('namespace', '')}/{meta['name']}")] = inputs
    return out


def test_every_k8s_stack_file_is_planned_by_this_suite():
    assert {s for s in list_stacks(ROOT) if s.startswith("k8s-")} == set(STACKS)


@pytest.mark.parametrize("stack", STACKS)
def test_six_servers_three_control_planes_three_workers_in_one_spread_group(plans, stack):
    plan, cloud = plans[stack], cloud_of(stack)
    nodes = servers(plan, cloud)
    assert sorted(nodes) == ["cp-1", "cp-2", "cp-3", "worker-1", "worker-2", "worker-3"]
    roles = {n: labels_of(s, cloud)["role"] for n, s in nodes.items()}
    assert roles == {
        **{f"cp-{i}": "control-plane" for i in (1, 2, 3)},
        **{f"worker-{i}": "worker" for i in (1, 2, 3)},
    }
    group = only(plan, PLACEMENT[cloud])
    assert group.inputs["type" if cloud == "hcloud" else "strategy"] == "spread"
    key = "placementGroupId" if cloud == "hcloud" else "placementGroup"
    wanted = int(group.id) if cloud == "hcloud" else group.id
    assert {s.inputs[key] for s in nodes.values()} == {wanted}
    # fixed private addresses on the private network, in node order
    ips = {}
    for n, s in nodes.items():
        if cloud == "hcloud":
            [net] = s.inputs["networks"]
            network = only(plan, "hcloud:index/network:Network")
            assert net["networkId"] == int(network.id)
            ips[n] = net["ip"]
        else:
            assert s.inputs["subnetId"] == only(plan, "aws:ec2/subnet:Subnet").id
            ips[n] = s.inputs["privateIp"]
    assert ips == {
        "cp-1": "10.0.1.10",
        "cp-2": "10.0.1.11",
        "cp-3": "10.0.1.12",
        "worker-1": "10.0.1.13",
        "worker-2": "10.0.1.14",
        "worker-3": "10.0.1.15",
    }


@pytest.mark.parametrize("stack", STACKS)
def test_k3s_roles_and_how_each_node_joins(plans, stack):
    plan, cloud = plans[stack], cloud_of(stack)
    nodes = servers(plan, cloud)
    for name, server in nodes.items():
        node_files = files(server)
        config = yaml.safe_load(node_files[CONFIG])
        assert config["node-name"] == f"shop-{stack}-{name}"
        # decided at the first start by k3s-node-ready: join a peer that answers, or found
        assert "server" not in config and "cluster-init" not in config
        unit = "k3s.service" if name.startswith("cp") else "k3s-agent.service"
        assert f"etc/systemd/system/{unit}" in node_files
        assert not any(p.startswith("var/lib/rancher") for p in node_files)
        node = json.loads(node_files[NODE_JSON])
        assert node["first"] is (name == "cp-1")
        assert node["nodes"] == [f"shop-{stack}-{n}" for n in NODES]
        if name.startswith("cp"):
            assert config["kube-controller-manager-arg"] == ["node-monitor-grace-period=30s"]
            assert config["kube-apiserver-arg"] == [
                "default-not-ready-toleration-seconds=30",
                "default-unreachable-toleration-seconds=30",
            ]


@pytest.mark.parametrize("stack", STACKS)
def test_nodes_follow_each_other(plans, stack):
    """Each server waits for the previous node's ready command; only the last waits for all."""
    plan, cloud = plans[stack], cloud_of(stack)
    nodes = servers(plan, cloud)
    p = f"shop-{stack}"
    for before, node in zip([None, *NODES[:-1]], NODES, strict=True):
        deps = set(nodes[node].depends_on)
        if before is None:
            assert not any(d.endswith("-ready") for d in deps)
        else:
            assert {d for d in deps if d.endswith("-ready")} == {f"{p}-{before}-ready"}
        ready = plan.get(f"{p}-{node}-ready")
        command = ready.plain_inputs()["create"]
        assert command.endswith(
            "sudo /usr/local/lib/blueprints/k3s-node-ready"
            + (" --cluster" if node == NODES[-1] else "")
        )
        assert ready.plain_inputs()["update"] == command
        # before the old machine goes, it is drained through the API (budgets honoured)
        assert (
            ready.plain_inputs()["delete"]
            == "sudo /usr/local/lib/blueprints/k3s-node-ready --drain"
        )
        # a new server is a new node: its ready command runs again
        assert ready.plain_inputs()["triggers"] == [nodes[node].id]


def test_hcloud_ingress_load_balancer_targets_the_workers(plans):
    plan = plans["k8s-hcloud"]
    nodes = servers(plan, "hcloud")
    lb = only(plan, "hcloud:index/loadBalancer:LoadBalancer")
    assert lb.inputs["name"] == "shop-k8s-hcloud-ingress"
    targets = plan.of_type("hcloud:index/loadBalancerTarget:LoadBalancerTarget")
    assert sorted(t.inputs["serverId"] for t in targets) == sorted(
        int(nodes[f"worker-{i}"].id) for i in (1, 2, 3)
    )
    assert all(t.inputs["usePrivateIp"] is True for t in targets)
    assert all(t.inputs["loadBalancerId"] == int(lb.id) for t in targets)
    services = plan.of_type("hcloud:index/loadBalancerService:LoadBalancerService")
    assert sorted(
        (s.inputs["protocol"], s.inputs["listenPort"], s.inputs["destinationPort"])
        for s in services
    ) == [
        ("tcp", 80, 80),
        ("tcp", 443, 443),
    ]
    net = only(plan, "hcloud:index/loadBalancerNetwork:LoadBalancerNetwork")
    assert net.inputs["networkId"] == int(only(plan, "hcloud:index/network:Network").id)


def test_hcloud_firewall_rules_exactly(plans):
    """No API load balancer on Hetzner (it cannot filter sources): the API is on the control
    planes' public addresses, for the admin networks only; workers take SSH only."""
    plan = plans["k8s-hcloud"]
    fws = {f.inputs["name"]: f for f in plan.of_type("hcloud:index/firewall:Firewall")}
    assert sorted(fws) == ["shop-k8s-hcloud-cp-fw", "shop-k8s-hcloud-worker-fw"]

    def rules(fw):
        return [
            (r["direction"], r["protocol"], r["port"], tuple(r["sourceIps"]))
            for r in fw.inputs["rules"]
        ]

    assert rules(fws["shop-k8s-hcloud-cp-fw"]) == [
        ("in", "tcp", "22", ADMIN),
        ("in", "tcp", "6443", ADMIN),
    ]
    assert rules(fws["shop-k8s-hcloud-worker-fw"]) == [("in", "tcp", "22", ADMIN)]
    nodes = servers(plan, "hcloud")
    for name, server in nodes.items():
        fw = fws["shop-k8s-hcloud-cp-fw" if name.startswith("cp") else "shop-k8s-hcloud-worker-fw"]
        assert server.inputs["firewallIds"] == [int(fw.id)]
    assert (
        plan.public_outputs()["apiEndpoint"]
        == f"https://{plan.outputs['controlPlaneIps']['shop-k8s-hcloud-cp-1']}:6443"
    )


def _ingress_rules(sg):
    return sorted(
        (
            r["protocol"],
            r["fromPort"],
            r["toPort"],
            tuple(r.get("cidrBlocks", [])),
            tuple(r.get("ipv6CidrBlocks", [])),
        )
        for r in sg.inputs.get("ingress", [])
    )


def test_aws_security_groups_exactly(plans):
    plan = plans["k8s-localstack"]
    sgs = {s.inputs["name"]: s for s in plan.of_type("aws:ec2/securityGroup:SecurityGroup")}
    assert sorted(sgs) == [
        "shop-k8s-localstack-api-lb",
        "shop-k8s-localstack-cp-fw",
        "shop-k8s-localstack-ingress-lb",
        "shop-k8s-localstack-worker-fw",
    ]
    private = ("-1", 0, 0, ("10.0.0.0/16",), ())
    ssh = ("tcp", 22, 22, ADMIN, ())
    # nodes: SSH from the admins and the private network; nothing public, not even 80/443
    assert _ingress_rules(sgs["shop-k8s-localstack-cp-fw"]) == [private, ssh]
    assert _ingress_rules(sgs["shop-k8s-localstack-worker-fw"]) == [private, ssh]
    # the load balancers: the API for the admins only, the web for everyone
    assert _ingress_rules(sgs["shop-k8s-localstack-api-lb"]) == [("tcp", 6443, 6443, ADMIN, ())]
    assert _ingress_rules(sgs["shop-k8s-localstack-ingress-lb"]) == [
        ("tcp", 80, 80, ("0.0.0.0/0",), ("::/0",)),
        ("tcp", 443, 443, ("0.0.0.0/0",), ("::/0",)),
    ]
    for name in ("api-lb", "ingress-lb"):
        [egress] = sgs[f"shop-k8s-localstack-{name}"].inputs["egress"]
        assert egress["cidrBlocks"] == ["10.0.0.0/16"]


def test_aws_load_balancers_targets_and_listeners(plans):
    plan = plans["k8s-localstack"]
    nodes = servers(plan, "aws")
    sgs = {s.inputs["name"]: s.id for s in plan.of_type("aws:ec2/securityGroup:SecurityGroup")}
    lbs = {lb.inputs["name"]: lb for lb in plan.of_type("aws:lb/loadBalancer:LoadBalancer")}
    assert sorted(lbs) == ["shop-k8s-localstack-api", "shop-k8s-localstack-ingress"]
    for name, lb in lbs.items():
        assert lb.inputs["loadBalancerType"] == "network"
        assert lb.inputs["securityGroups"] == [sgs[f"{name}-lb"]]
    groups = {g.name: g for g in plan.of_type("aws:lb/targetGroup:TargetGroup")}
    assert sorted(groups) == [
        "shop-k8s-localstack-api-6443",
        "shop-k8s-localstack-ingress-443",
        "shop-k8s-localstack-ingress-80",
    ]
    # the balancers reach the nodes from their private address (admitted by the node rules)
    assert {g.inputs["preserveClientIp"] for g in groups.values()} == {"false"}
    listeners = sorted(
        (li.inputs["port"], li.inputs["protocol"])
        for li in plan.of_type("aws:lb/listener:Listener")
    )
    assert listeners == [(80, "TCP"), (443, "TCP"), (6443, "TCP")]
    attached: dict[str, set[str]] = {}
    for a in plan.of_type("aws:lb/targetGroupAttachment:TargetGroupAttachment"):
        group = next(g for g in groups.values() if a.inputs["targetGroupArn"].endswith(g.id))
        attached.setdefault(group.name, set()).add(a.inputs["targetId"])
    cps = {nodes[f"cp-{i}"].id for i in (1, 2, 3)}
    workers = {nodes[f"worker-{i}"].id for i in (1, 2, 3)}
    assert attached == {
        "shop-k8s-localstack-api-6443": cps,
        "shop-k8s-localstack-ingress-443": workers,
        "shop-k8s-localstack-ingress-80": workers,
    }
    out = plan.public_outputs()
    assert out["apiEndpoint"] == "https://shop-k8s-localstack-api.elb.offline:6443"
    assert out["dnsRecord"] == (
        f"shop.example.com. CNAME shop-k8s-localstack-ingress.elb.offline.\n{APEX_NOTE}"
    )


@pytest.mark.parametrize("stack", STACKS)
def test_token_and_admin_keys_reach_every_node_over_ssh(plans, stack):
    plan, cloud = plans[stack], cloud_of(stack)
    token = plan.get(f"shop-{stack}-k3s-token")
    assert token.inputs["length"] == 48 and token.inputs["special"] is False
    value = f"offline-{token.name}"
    admin = yaml.safe_load((ROOT / "examples/app.yaml").read_text())["admin"]["ssh_keys"]
    for name, server in servers(plan, cloud).items():
        # the user data holds no secret: a preview shows its diff
        assert not is_secret(server.inputs[UD_FIELD[cloud]])
        text = server_user_data(server)
        assert value not in text and "PRIVATE KEY" not in text
        assert not any(key.split()[1] in text for key in admin)
        node_files = files(server)
        assert "etc/rancher/k3s/token" not in node_files
        assert yaml.safe_load(node_files[CONFIG])["token-file"] == "/etc/rancher/k3s/token"
        doc = ready_stdin(plan, name)
        # k3s's secure format: a joining node checks the server CA against the digest
        ca = _pem("CERTIFICATE", f"shop-{stack}-server-ca")
        digest = hashlib.sha256(ca.encode()).hexdigest()
        assert doc["token"] == f"K10{digest}::server:{value}"
        assert doc["admin_keys"].splitlines() == [k.strip() for k in admin]
        assert doc["ca"] == _pem("CERTIFICATE", f"shop-{stack}-server-ca")
        assert f"OFFLINE-shop-{stack}-admin" in doc["client_cert"]
        if name.startswith("worker"):
            assert doc["etcd_s3"] is None
        elif stack == "k8s-localstack":  # it names a bucket; k8s-hcloud does not
            assert doc["etcd_s3"]["etcd-s3"] is True
            assert doc["etcd_s3"]["etcd-s3-bucket"] == "shop-backups"
        else:
            assert doc["etcd_s3"] is None


@pytest.mark.parametrize("stack", STACKS)
def test_kubeconfig_is_a_secret_output_signed_by_the_client_ca(plans, stack):
    plan = plans[stack]
    assert is_secret(plan.outputs["kubeconfig"])
    assert plan.public_outputs()["kubeconfig"] == "[secret]"
    config = yaml.safe_load(plan.outputs["kubeconfig"]["value"])
    [cluster] = config["clusters"]
    assert cluster["cluster"]["server"] == plan.outputs["apiEndpoint"]
    assert cluster["cluster"]["tls-server-name"] == "kubernetes"
    ca = base64.b64decode(cluster["cluster"]["certificate-authority-data"]).decode()
    assert ca == _pem("CERTIFICATE", f"shop-{stack}-server-ca")
    [user] = config["users"]
    cert = base64.b64decode(user["user"]["client-certificate-data"]).decode()
    assert f"OFFLINE-shop-{stack}-admin" in cert
    request = only(plan, "tls:index/certRequest:CertRequest")
    assert request.inputs["subject"]["organization"] == "system:masters"
    signed = only(plan, "tls:index/locallySignedCert:LocallySignedCert")
    assert "client_auth" in signed.inputs["allowedUses"]
    assert signed.plain_inputs()["caCertPem"] == _pem("CERTIFICATE", f"shop-{stack}-client-ca")
    assert signed.plain_inputs()["caPrivateKeyPem"] == _pem(
        "PRIVATE KEY", f"shop-{stack}-client-ca-key"
    )


@pytest.mark.parametrize("stack", STACKS)
def test_only_the_first_ready_command_carries_the_cluster_cas(plans, stack):
    plan = plans[stack]
    cas = {r.name: r for r in plan.of_type("tls:index/selfSignedCert:SelfSignedCert")}
    assert sorted(cas) == sorted(
        f"shop-{stack}-{n}"
        for n in ("client-ca", "etcd-peer-ca", "etcd-server-ca", "request-header-ca", "server-ca")
    )
    assert all(c.inputs["isCaCertificate"] is True for c in cas.values())
    pki = ready_stdin(plan, "cp-1")["pki"]
    assert sorted(pki) == sorted(
        [
            "client-ca.crt",
            "client-ca.key",
            "etcd/peer-ca.crt",
            "etcd/peer-ca.key",
            "etcd/server-ca.crt",
            "etcd/server-ca.key",
            "request-header-ca.crt",
            "request-header-ca.key",
            "server-ca.crt",
            "server-ca.key",
            "service.key",
        ]
    )
    assert pki["server-ca.crt"] == _pem("CERTIFICATE", f"shop-{stack}-server-ca")
    assert f"OFFLINE-shop-{stack}-etcd-peer-ca-key" in pki["etcd/peer-ca.key"]
    assert f"OFFLINE-shop-{stack}-service-account-key" in pki["service.key"]
    for node in NODES[1:]:
        assert ready_stdin(plan, node)["pki"] is None
    service_key = plan.get(f"shop-{stack}-service-account-key")
    assert service_key.inputs["algorithm"] == "RSA"


@pytest.mark.parametrize("stack", STACKS)
def test_cluster_identity_and_data_are_protected_and_nothing_else(plans, stack):
    plan = plans[stack]
    protected = {r.type for r in plan.resources if r.protect}
    expected = {
        "random:index/randomPassword:RandomPassword",
        "tls:index/privateKey:PrivateKey",
        "tls:index/selfSignedCert:SelfSignedCert",
        # deleting the app's namespace would delete its volume claims
        "kubernetes:core/v1:Namespace",
    }
    if stack == "k8s-localstack":
        expected.add("aws:s3/bucket:Bucket")  # the etcd snapshots
    assert protected == expected
    # the admin credentials are renewable, not protected
    admin = [r for r in plan.resources if "-admin" in r.name and r.type.startswith("tls:")]
    assert len(admin) == 3 and not any(r.protect for r in admin)


def test_protection_can_be_switched_off():
    plan = plan_stack("k8s-localstack", ROOT, {"blueprints:protectData": False})
    assert not any(r.protect for r in plan.resources)


def test_hcloud_cloud_controller_gets_the_network_and_a_token_placeholder(plans):
    plan = plans["k8s-hcloud"]
    secret = kube_objects(plan)[("Secret", "kube-system/hcloud")]
    network = only(plan, "hcloud:index/network:Network")
    assert secret["stringData"] == {"token": "<secret:token>", "network": network.id}
    assert is_secret(plan.get("shop-k8s-hcloud-secret-kube-system-hcloud").inputs["stringData"])
    assert any("hcloud:token is not set" in n for n in plan.notes)
    releases = {r.plain_inputs()["name"]: r for r in plan.of_type("kubernetes:helm.sh/v3:Release")}
    assert sorted(releases) == ["cert-manager", "hcloud-cloud-controller-manager", "hcloud-csi"]
    # the controllers read the Secret: installed after it, the others after the controller
    ccm = releases["hcloud-cloud-controller-manager"]
    assert "shop-k8s-hcloud-secret-kube-system-hcloud" in ccm.depends_on
    for other in ("hcloud-csi", "cert-manager"):
        assert ccm.name in releases[other].depends_on


def test_hcloud_token_from_config_reaches_the_cluster_secret():
    plan = plan_stack("k8s-hcloud", ROOT, {"hcloud:token": {"secure": "v1:AAAA"}})
    secret = kube_objects(plan)[("Secret", "kube-system/hcloud")]
    # an encrypted value plans as a placeholder; it is never decrypted here
    assert secret["stringData"]["token"] == "<secret:token>"
    assert not any("hcloud:token is not set" in n for n in plan.notes)


def test_aws_cluster_gets_local_path_storage_and_no_hetzner_addons(plans):
    plan = plans["k8s-localstack"]
    objects = kube_objects(plan)
    assert not any("hcloud" in name for _, name in objects)
    storage = objects[("StorageClass", "/blueprints-local")]
    assert storage["provisioner"] == "rancher.io/local-path"
    releases = [r.plain_inputs()["name"] for r in plan.of_type("kubernetes:helm.sh/v3:Release")]
    assert releases == ["cert-manager"]
    config = yaml.safe_load(files(servers(plan, "aws")["cp-1"])[CONFIG])
    assert "disable-cloud-controller" not in config


@pytest.mark.parametrize("stack", STACKS)
def test_the_app_goes_through_the_kubernetes_api_once_the_cluster_is_ready(plans, stack):
    plan = plans[stack]
    p = f"shop-{stack}"
    [provider] = plan.of_type("pulumi:providers:kubernetes")
    inputs = provider.plain_inputs()
    assert inputs["kubeconfig"] == plan.outputs["kubeconfig"]["value"]
    # a new API address (a replaced first control plane) updates the provider, never replaces
    assert inputs["clusterIdentifier"] == p
    assert inputs["enableSecretMutable"] in (True, "true")
    objects = kube_objects(plan)
    kinds = {kind for kind, _ in objects}
    assert {"Namespace", "Deployment", "StatefulSet", "Service", "Secret", "Ingress"} <= kinds
    # the provider too: it gives up on a cluster it cannot reach when it is configured
    assert f"{p}-worker-3-ready" in provider.depends_on
    assert "deleteUnreachable" not in inputs  # a refresh while the API is down drops nothing
    for r in plan.resources:
        if r.type.startswith("kubernetes:"):
            assert r.provider == provider.name, r.name
            assert f"{p}-worker-3-ready" in r.depends_on, r.name
    web = objects[("Deployment", "shop/web")]
    assert web["spec"]["template"]["spec"]["containers"][0]["image"].startswith("ghcr.io/")
    # secret values only in the Secrets, which are Pulumi secrets
    for r in plan.resources:
        if r.type == "kubernetes:core/v1:Secret":
            assert is_secret(r.inputs["stringData"]), r.name
        elif r.type.startswith("kubernetes:"):
            assert "<secret:DATABASE_PASSWORD>" not in json.dumps(r.plain_inputs()), r.name


def test_localstack_endpoints_and_providers(plans):
    plan = plans["k8s-localstack"]
    provider = only(plan, "pulumi:providers:aws")
    inputs = provider.plain_inputs()
    endpoints = inputs["endpoints"]
    if isinstance(endpoints, str):
        endpoints = json.loads(endpoints)
    assert endpoints[0]["ec2"] == endpoints[0]["elbv2"] == "http://localhost:4566"
    aws_resources = [r for r in plan.custom if r.type.startswith("aws:")]
    assert aws_resources and {r.provider for r in aws_resources} == {provider.name}
    assert {s.inputs["ami"] for s in servers(plan, "aws").values()} == {"ami-df5de72bdb3b"}
    assert {s.inputs["instanceType"] for s in servers(plan, "aws").values()} == {"t3.medium"}


@pytest.mark.parametrize("stack", STACKS)
def test_user_data_fits_the_cloud_limit(plans, stack):
    cloud = cloud_of(stack)
    for server in servers(plans[stack], cloud).values():
        sent = server.plain_inputs()[UD_FIELD[cloud]]
        size = len(sent) if cloud == "hcloud" else len(base64.b64decode(sent))
        assert size <= {"hcloud": 32 * 1024, "aws": 16 * 1024}[cloud]


@pytest.mark.parametrize("stack", STACKS)
def test_outputs(plans, stack):
    out = plans[stack].public_outputs()
    assert out["url"] == "https://shop.example.com"
    assert out["k3sVersion"] == "v1.34.9+k3s1"
    assert sorted(out["controlPlaneIps"]) == [f"shop-{stack}-cp-{i}" for i in (1, 2, 3)]
    assert sorted(out["workerIps"]) == [f"shop-{stack}-worker-{i}" for i in (1, 2, 3)]
    assert out["failureTiming"] == {
        "nodeMonitorGracePeriodSeconds": 30,
        "notReadyTolerationSeconds": 30,
        "unreachableTolerationSeconds": 30,
        "podEvictionAfterSeconds": 60,
    }
    assert out["sshCommand"] == f"ssh deploy@{out['controlPlaneIps'][f'shop-{stack}-cp-1']}"


def test_failure_timing_is_stack_config():
    plan = plan_stack(
        "k8s-hcloud",
        ROOT,
        {
            "blueprints:nodeMonitorGracePeriod": 40,
            "blueprints:notReadyTolerationSeconds": 300,
            "blueprints:unreachableTolerationSeconds": 120,
        },
    )
    assert plan.outputs["failureTiming"]["podEvictionAfterSeconds"] == 340
    for name, server in servers(plan, "hcloud").items():
        config = yaml.safe_load(files(server)[CONFIG])
        if name.startswith("cp"):
            assert config["kube-controller-manager-arg"] == ["node-monitor-grace-period=40s"]
            assert config["kube-apiserver-arg"] == [
                "default-not-ready-toleration-seconds=300",
                "default-unreachable-toleration-seconds=120",
            ]
        else:
            assert "kube-apiserver-arg" not in config


@pytest.mark.parametrize(
    ("stack", "overrides", "message"),
    [
        (
            "k8s-hcloud",
            {"blueprints:nodeMonitorGracePeriod": 5},
            "stacks/Pulumi.k8s-hcloud.yaml: blueprints:nodeMonitorGracePeriod: must be at least "
            "10 (got '5')",
        ),
        (
            "single-vm-hcloud",
            {"blueprints:unreachableTolerationSeconds": 10},
            "stacks/Pulumi.single-vm-hcloud.yaml: blueprints:unreachableTolerationSeconds: "
            "applies to the k8s blueprint only, not to single-vm; remove it from the stack file",
        ),
        (
            "k8s-hcloud",
            {"blueprints:active": "spare"},
            "stacks/Pulumi.k8s-hcloud.yaml: blueprints:active: applies to the single-vm blueprint "
            "only, not to k8s; remove it from the stack file",
        ),
        (
            "k8s-hcloud",
            {"blueprints:k3sVersion": "1.34"},
            "stacks/Pulumi.k8s-hcloud.yaml: blueprints:k3sVersion: must be a k3s release like "
            "v1.34.9+k3s1 (got '1.34')",
        ),
        (
            "k8s-hcloud",
            {"blueprints:backupBucket": "shop-backups", "blueprints:backupAccessKey": "AK"},
            "stacks/Pulumi.k8s-hcloud.yaml: blueprints:backupEndpoint: is required with "
            "backupBucket on hcloud: the Object Storage endpoint, like "
            "https://fsn1.your-objectstorage.com",
        ),
        (
            "k8s-hcloud",
            {
                "blueprints:backupBucket": "shop-backups",
                "blueprints:backupEndpoint": "https://fsn1.your-objectstorage.com",
            },
            "stacks/Pulumi.k8s-hcloud.yaml: blueprints:backupAccessKey: is required with "
            "backupBucket: the access key id of the bucket",
        ),
        (
            "k8s-localstack",
            {"blueprints:backupBucket": "Shop_Backups"},
            "stacks/Pulumi.k8s-localstack.yaml: blueprints:backupBucket: must be an S3 bucket "
            "name: 3 to 63 lower-case letters, digits, dots and hyphens (got 'Shop_Backups')",
        ),
        (
            # every blueprint backs up to the bucket now, and asks for its key the same way
            "compose-hcloud",
            {"blueprints:backupBucket": "shop-backups"},
            "stacks/Pulumi.compose-hcloud.yaml: blueprints:backupAccessKey: is required with "
            "backupBucket: the access key id of the bucket",
        ),
    ],
)
def test_bad_stack_settings_give_one_clear_line(stack, overrides, message):
    with pytest.raises(PlanError) as exc:
        plan_stack(stack, ROOT, overrides)
    assert str(exc.value) == message


def test_blueprint_rules_are_reported_before_any_resource(tmp_path):
    project = copy_project(tmp_path)
    spec = yaml.safe_load((project / "examples/app.yaml").read_text())
    spec["name"] = "default"
    (project / "examples/app.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(PlanError) as exc:
        plan_stack("k8s-localstack", project)
    assert str(exc.value) == (
        f"{project / 'examples/app.yaml'}: name: 'default' is the name of a namespace the cluster "
        "uses itself, and the app runs in a namespace named after it; choose another name"
    )


def test_a_spec_change_touches_only_the_kubernetes_objects(plans, tmp_path):
    project = copy_project(tmp_path)
    spec = yaml.safe_load((project / "examples/app.yaml").read_text())
    spec["services"]["web"]["replicas"] = 3
    (project / "examples/app.yaml").write_text(yaml.safe_dump(spec))
    after = plan_stack("k8s-hcloud", project)
    before = plans["k8s-hcloud"]
    a = {r.name: r.plain_inputs() for r in before.resources}
    b = {r.name: r.plain_inputs() for r in after.resources}
    assert a.keys() == b.keys()
    assert {n for n in a if a[n] != b[n]} == {"shop-k8s-hcloud-deployment-shop-web"}


def test_planning_is_deterministic(plans):
    again = plan_stack("k8s-localstack", ROOT)
    first = plans["k8s-localstack"]
    assert [r.as_json() for r in again.resources] == [r.as_json() for r in first.resources]
    assert [r.plain_inputs() for r in again.resources] == [
        r.plain_inputs() for r in first.resources
    ]
    assert again.outputs == first.outputs


@pytest.mark.parametrize("stack", STACKS)
def test_no_secret_and_no_private_key_in_any_user_data(tmp_path, stack):
    """Every secret value the stack has (app secrets, the token, the snapshot key, every
    generated private key) is looked for in every node's user data."""
    overrides = {
        "blueprints:secrets": {
            "DATABASE_PASSWORD": "db-Pa55-value",
            "DJANGO_SECRET_KEY": "django-k3y-value",
            "POSTGRES_PASSWORD": "pg-Pa55-value",
        },
        "blueprints:backupSecretKey": "s3-s3cret-value",
    }
    if stack == "k8s-hcloud":
        overrides |= {
            "blueprints:backupBucket": "shop-etcd",
            "blueprints:backupEndpoint": "https://fsn1.your-objectstorage.com",
            "blueprints:backupAccessKey": "AKIDEXAMPLE",
            "hcloud:token": "hcloud-t0ken-value",
        }
    plan = plan_stack(stack, ROOT, overrides)
    values = [v for k, v in overrides.items() if k != "blueprints:secrets" and "Secret" in k]
    values += list(overrides["blueprints:secrets"].values())
    values += [overrides["hcloud:token"]] if "hcloud:token" in overrides else []
    # the k3s token and the backup repository's password
    values += [
        f"offline-{r.name}" for r in plan.of_type("random:index/randomPassword:RandomPassword")
    ]
    keys = [r.name for r in plan.of_type("tls:index/privateKey:PrivateKey")]
    for name, server in servers(plan, cloud_of(stack)).items():
        text = server_user_data(server)
        for value in values:
            assert value not in text, (name, value)
        for key in keys:
            assert f"OFFLINE-{key}" not in text.replace(f"OFFLINE-{key}-", ""), (name, key)
        assert "PRIVATE KEY" not in text
        # the snapshot settings and their key reach the control planes over SSH instead
        s3 = ready_stdin(plan, name)["etcd_s3"]
        if name.startswith("cp"):
            assert s3["etcd-s3-secret-key"] == "s3-s3cret-value"
            assert s3["etcd-s3-bucket"] in ("shop-etcd", "shop-backups")
        else:
            assert s3 is None


def test_hetzner_load_balancer_refuses_a_restricted_port():
    """Hetzner load balancers cannot filter sources; a restricted port must not open silently."""
    from blueprints.settings import StackSettings
    from blueprints.targets.hcloud import HcloudTarget

    target = HcloudTarget(StackSettings(blueprint="k8s", target="hcloud"), None)  # type: ignore[arg-type]
    assert target.load_balancer_filters_sources is False
    with pytest.raises(ValueError, match=r"port 6443 is limited to 203\.0\.113\.0/24"):
        target.load_balancer("api", None, [], [6443], {}, sources={6443: ADMIN})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"limited to 0\.0\.0\.0/0"):  # IPv4 only is not everyone
        target.load_balancer("web", None, [], [80], {}, sources={80: ("0.0.0.0/0",)})  # type: ignore[arg-type]


@pytest.mark.parametrize("stack", STACKS)
def test_every_object_sent_through_the_api_is_one_the_renderer_validates(plans, stack):
    """The component sends what release.manifests renders (and the render tests validate):
    the same objects, each valid for the pinned Kubernetes in strict mode."""
    import kubernetes_validate

    from blueprints.backup.storage import Storage
    from blueprints.rungs.k8s import release

    plan = plans[stack]
    sent = kube_objects(plan)
    app = AppSpec.model_validate(yaml.safe_load((ROOT / "examples/app.yaml").read_text()))
    # k8s-localstack names a backup bucket, k8s-hcloud does not (only names matter here)
    storage = (
        Storage("shop-backups", "http://localhost:4566", "eu-central-1", "test", "restic/x")
        if "backupRepository" in plan.outputs
        else None
    )
    assert (storage is not None) == (stack == "k8s-localstack")
    rendered = [
        doc
        for text in release.manifests(
            app,
            cloud_of(stack),
            {n: f"<secret:{n}>" for n in app.secret_names()},
            backup=storage,
        ).values()
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    names = {
        (d["kind"], f"{d['metadata'].get('namespace', '')}/{d['metadata']['name']}")
        for d in rendered
    }
    assert set(sent) == names
    version = ".".join(release.KUBERNETES_VERSION.split(".")[:2]) + ".0"
    for (kind, _), obj in sent.items():
        if kind not in ("HelmChartConfig", "ClusterIssuer"):
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_first_control_plane_founds_a_cluster_only_once(monkeypatch):
    """The CAs (without which k3s-node-ready never founds a cluster) go to cp-1 only while the
    stack has not founded one: its own earlier `clusterFounded` output, read back, or
    blueprints:foundCluster for one `pulumi up` after losing every control plane."""
    import blueprints.plan as planning

    assert plan_stack("k8s-hcloud", ROOT).public_outputs()["clusterFounded"] is True
    assert ready_stdin(plan_stack("k8s-hcloud", ROOT), "cp-1")["pki"] is not None
    real = planning.fake_outputs

    def founded_before(type_, name, id_, inputs):
        state = real(type_, name, id_, inputs)
        if type_ == "pulumi:pulumi:StackReference":
            assert inputs["name"].endswith("/k8s-hcloud")  # the stack itself
            state["outputs"] = {"clusterFounded": True}
        return state

    monkeypatch.setattr(planning, "fake_outputs", founded_before)
    again = plan_stack("k8s-hcloud", ROOT)
    assert all(ready_stdin(again, node)["pki"] is None for node in NODES)
    allowed = plan_stack("k8s-hcloud", ROOT, {"blueprints:foundCluster": True})
    assert ready_stdin(allowed, "cp-1")["pki"] is not None


def test_every_new_field_is_planned_tasks_before_the_workloads(tmp_path):
    """tests/everything/app.yaml planned on k8s-hcloud: the tasks' Jobs one after another,
    after the services they need and before every other workload and the schedules; the
    Secrets (env, files, registry) Pulumi secrets; no secret value in any other input or note;
    the shared volume in the notes."""
    project = copy_project(tmp_path)
    shutil.copy(ROOT / "tests/everything/app.yaml", project / "examples/app.yaml")
    shutil.copytree(ROOT / "tests/everything/config", project / "examples/config")
    secrets = {
        "POSTGRES_PASSWORD": "pg-Dist1nct-value",
        "DJANGO_SECRET_KEY": "dj-Dist1nct-value",
        "GHCR_TOKEN": "ghcr-Dist1nct-value",
    }
    plan = plan_stack("k8s-hcloud", project, {"blueprints:secrets": secrets})
    p = "full-k8s-hcloud"
    by_name = {r.name: r for r in plan.resources}
    jobs = [r for r in plan.resources if r.type == "kubernetes:batch/v1:Job"]
    assert [r.plain_inputs()["metadata"]["name"].rsplit("-", 1)[0] for r in jobs] == [
        "task-migrate",
        "task-seed",
    ]
    migrate, seed = jobs
    assert migrate.name in seed.depends_on
    # the secrets' keyed digests are folded into the Jobs' pod template (new values, new run)
    for job in jobs:
        notes = job.plain_inputs()["spec"]["template"]["metadata"]["annotations"]
        assert len(notes["blueprints.dev/secrets-digest"]) == 16
    for needed in ("statefulset-full-postgres", "deployment-full-redis"):
        assert f"{p}-{needed}" in migrate.depends_on
    assert f"{p}-networkpolicy-full-runs-web" in migrate.depends_on
    for secret in ("web-secret-env", "web-secret-files", "registry-auth"):
        assert f"{p}-secret-full-{secret}" in migrate.depends_on
    for after in (
        "statefulset-full-web",
        "statefulset-full-worker",
        "cronjob-full-schedule-clear-sessions",
        "cronjob-full-schedule-report",
    ):
        assert seed.name in by_name[f"{p}-{after}"].depends_on, after
    assert migrate.name not in by_name[f"{p}-statefulset-full-postgres"].depends_on
    # the shared volume's claim is an object of its own, protected and kept if it leaves the
    # program; postgres' volume stays its StatefulSet's claim template
    claims = plan.of_type("kubernetes:core/v1:PersistentVolumeClaim")
    assert [r.plain_inputs()["metadata"]["name"] for r in claims] == ["uploads-shared"]
    assert all(r.protect and r.retain_on_delete for r in claims)
    postgres = by_name[f"{p}-statefulset-full-postgres"].plain_inputs()
    assert [t["metadata"]["name"] for t in postgres["spec"]["volumeClaimTemplates"]] == ["pgdata"]
    web = by_name[f"{p}-statefulset-full-web"]
    assert f"{p}-persistentvolumeclaim-full-uploads-shared" in web.depends_on
    assert f"{p}-persistentvolumeclaim-full-uploads-shared" in migrate.depends_on
    assert f"{p}-configmap-full-web-files" in web.depends_on
    # the Secrets are Pulumi secrets; no value anywhere else, nor in the notes
    secrets_seen = set()
    for r in plan.resources:
        text = json.dumps(r.plain_inputs())
        found = {v for v in secrets.values() if v in text}
        if r.type == "kubernetes:core/v1:Secret":
            assert is_secret(r.inputs["stringData"]), r.name
            secrets_seen |= found
        else:
            assert not found, r.name
        assert not any(v in json.dumps(r.public_inputs()) for v in secrets.values()), r.name
    assert secrets_seen == set(secrets.values())
    assert not any(v in note for note in plan.notes for v in secrets.values())
    assert any(
        "services web and worker share volume uploads, so they run on one node" in note
        for note in plan.notes
    )
    # the objects sent are the ones the renderer validates
    import kubernetes_validate

    from blueprints.rungs.k8s import release

    version = ".".join(release.KUBERNETES_VERSION.split(".")[:2]) + ".0"
    for (kind, _), obj in kube_objects(plan).items():
        if kind not in ("HelmChartConfig", "ClusterIssuer"):
            kubernetes_validate.validate(obj, version, strict=True)


def test_a_task_mounting_its_services_own_volume_mounts_a_claim_created_first(tmp_path):
    """uploads mounted by web alone, whose tasks and schedule mount it too: its claim
    uploads-web-0 is an object of its own (protected, kept), created before the tasks; web's
    StatefulSet keeps its claim template (it uses that claim) and rolls out after the tasks;
    the notes say how an existing stack imports the claim."""
    project = copy_project(tmp_path)
    data = yaml.safe_load((ROOT / "tests/everything/app.yaml").read_text())
    del data["services"]["worker"]["volumes"]
    (project / "examples/app.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    shutil.copytree(ROOT / "tests/everything/config", project / "examples/config")
    secrets = dict.fromkeys(("POSTGRES_PASSWORD", "DJANGO_SECRET_KEY", "GHCR_TOKEN"), "x")
    plan = plan_stack("k8s-hcloud", project, {"blueprints:secrets": secrets})
    p = "full-k8s-hcloud"
    by_name = {r.name: r for r in plan.resources}
    [claim] = plan.of_type("kubernetes:core/v1:PersistentVolumeClaim")
    assert claim.name == f"{p}-persistentvolumeclaim-full-uploads-web-0"
    assert claim.plain_inputs()["metadata"]["name"] == "uploads-web-0"
    assert claim.protect and claim.retain_on_delete
    assert claim.ignore_changes == ["spec.volumeMode", "spec.volumeName"]
    web = by_name[f"{p}-statefulset-full-web"]
    templates = web.plain_inputs()["spec"]["volumeClaimTemplates"]
    assert [t["metadata"]["name"] for t in templates] == ["uploads"]
    assert claim.name in web.depends_on
    jobs = plan.of_type("kubernetes:batch/v1:Job")
    assert len(jobs) == 2
    for job in jobs:
        # the claim first; the task before web's new version
        assert claim.name in job.depends_on
        assert web.name not in job.depends_on
        assert job.plain_inputs()["metadata"]["annotations"] == {
            "pulumi.com/replaceUnready": "true"
        }
        assert "ttlSecondsAfterFinished" not in job.plain_inputs()["spec"]
    assert jobs[-1].name in web.depends_on
    schedule = by_name[f"{p}-cronjob-full-schedule-clear-sessions"]
    assert claim.name in schedule.depends_on
    assert web.name not in schedule.depends_on
    assert any(
        "so its claim uploads-web-0 (the one web's StatefulSet names) is an object of its own"
        in note
        and f"pulumi import kubernetes:core/v1:PersistentVolumeClaim {claim.name} "
        "full/uploads-web-0"
        in note
        and "urn:pulumi:k8s-hcloud::blueprints::blueprints:index:K8s::full" in note
        for note in plan.notes
    )
