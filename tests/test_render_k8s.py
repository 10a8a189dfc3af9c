"""The k8s renderer: strict Kubernetes schema validation, the spec walked into the manifests,
real validators for cloud-init/shell/systemd, injection round trips, determinism, goldens."""

from __future__ import annotations

import base64
import copy
import gzip
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import validators
import yaml
from golden_files import check_golden, check_no_stale_sets
from hypothesis import given, settings
from hypothesis import strategies as st

from blueprints.render import k8s as r
from blueprints.render.common import dump_yaml
from blueprints.spec import AppSpec

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "k8s"
EXAMPLE_DATA: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "app.yaml").read_text())
# kubernetes-validate ships schemas per minor version; the pinned k3s runs this one.
SCHEMA_VERSION = ".".join(r.KUBERNETES_VERSION.split(".")[:2]) + ".0"
SERVER_IPS = ("10.0.1.10", "10.0.1.11", "10.0.1.12")
FIRST = r.K8sNode("shop-k8s-cp-1", "server", "10.0.1.10")
JOINING = r.K8sNode("shop-k8s-cp-2", "server", "10.0.1.11")
AGENT = r.K8sNode("shop-k8s-worker-1", "agent", "10.0.1.13")
NODES = {"first": FIRST, "joining": JOINING, "agent": AGENT}
SCRIPTS = r.SCRIPTS + "/"
UNITS = r.UNITS + "/"
MANIFESTS = r.MANIFESTS + "/"
CRD_KINDS = {"HelmChart", "HelmChartConfig", "ClusterIssuer"}


def fake_pki(tag: str = "test") -> r.K3sPki:
    fields = r.K3sPki.__dataclass_fields__
    return r.K3sPki(**{f: f"-----BEGIN X-----\n{tag}-{f}\n-----END X-----\n" for f in fields})


def spec(data: Mapping[str, Any] | None = None) -> AppSpec:
    return AppSpec.model_validate(copy.deepcopy(dict(data or EXAMPLE_DATA)))


def context(
    app: AppSpec | None = None,
    cloud: r.Cloud = "hcloud",
    *,
    secrets: Mapping[str, str] | None = None,
    timing: r.Timing | None = None,
    pki: r.K3sPki | None = None,
) -> r.ClusterContext:
    app = app or spec()
    return r.ClusterContext(
        app=app,
        cloud=cloud,
        server_ips=SERVER_IPS,
        token="TOKEN-PLACEHOLDER",
        timing=timing or r.Timing(),
        secrets={n: f"PLACEHOLDER-{n}" for n in app.secret_names()} if secrets is None else secrets,
        pki=pki or fake_pki(),
        cloud_token="HCLOUD-TOKEN-PLACEHOLDER" if cloud == "hcloud" else None,
        network_id="4711" if cloud == "hcloud" else None,
    )


def files_of(ctx: r.ClusterContext, node: r.K8sNode) -> dict[str, str]:
    return {p: f.content for p, f in r.render_node_files(ctx, node).items()}


def documents(ctx: r.ClusterContext) -> list[dict[str, Any]]:
    return [
        doc for text in r.render_manifests(ctx).values() for doc in yaml.safe_load_all(text) if doc
    ]


def objects(ctx: r.ClusterContext, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents(ctx) if d["kind"] == kind}


def k8s_expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion (third_party/forked/golang/expansion) for round trips."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(env.get(name, f"$({name})"))
                    i = end + 1
                    continue
            out.append("$" + nxt)
            i += 2
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def with_service(data: dict[str, Any], name: str, **fields: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    data["services"][name] = {**data["services"].get(name, {}), **fields}
    return data


SHAPES = with_service(
    with_service(
        with_service(
            EXAMPLE_DATA, "redis", ports=[{"port": 6379, "expose": "tcp", "public_port": 16379}]
        ),
        "web",
        ports=[{"port": 8000, "expose": "http"}, {"port": 8001, "expose": "http", "path": "/api"}],
        health={"type": "tcp"},
    ),
    "redis",
    health={"type": "command", "command": ["redis-cli", "ping"]},
)
MINIMAL = {
    "name": "tiny",
    "domain": "tiny.example.com",
    "acme_email": "ops@example.com",
    "services": {"job": {"image": "busybox:1.36", "command": ["sleep", "infinity"]}},
}


# --- every manifest passes the Kubernetes schema, strictly ------------------------------------


@pytest.mark.parametrize("cloud", ["hcloud", "aws"])
@pytest.mark.parametrize(
    "data", [EXAMPLE_DATA, SHAPES, MINIMAL], ids=["example", "shapes", "minimal"]
)
def test_every_manifest_passes_kubernetes_validate_strict(cloud: r.Cloud, data: dict[str, Any]):
    docs = documents(context(spec(data), cloud))
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        if doc["kind"] in CRD_KINDS:
            continue  # custom resources: their structure is asserted below
        kubernetes_validate.validate(doc, SCHEMA_VERSION, strict=True)
    assert {"Namespace", "NetworkPolicy", "StorageClass", "HelmChart"} <= kinds


def test_strict_validation_rejects_an_unknown_field():
    """The harness itself: a misspelt field must fail strict validation."""
    deployment = objects(context(), "Deployment")["web"]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, SCHEMA_VERSION, strict=True)


def test_schema_version_is_shipped_and_matches_k3s():
    assert r.K3S_VERSION.startswith("v" + r.KUBERNETES_VERSION + "+k3s")
    assert SCHEMA_VERSION in kubernetes_validate.utils.all_versions()


@pytest.mark.parametrize("cloud", ["hcloud", "aws"])
def test_custom_resources_are_pinned_and_well_formed(cloud: r.Cloud):
    ctx = context(cloud=cloud)
    charts = objects(ctx, "HelmChart")
    expected = {"cert-manager": r.CERT_MANAGER}
    if cloud == "hcloud":
        expected |= {"hcloud-cloud-controller-manager": r.HCLOUD_CCM, "hcloud-csi": r.HCLOUD_CSI}
    assert set(charts) == set(expected)
    for name, chart in charts.items():
        assert chart["apiVersion"] == "helm.cattle.io/v1"
        assert chart["metadata"]["namespace"] == "kube-system"
        spec_ = chart["spec"]
        # only the cloud controller is a bootstrap chart: the nodes wait for it
        bootstrap = {"bootstrap"} if name == "hcloud-cloud-controller-manager" else set()
        assert set(spec_) == {
            "repo",
            "chart",
            "version",
            "targetNamespace",
            "createNamespace",
            "valuesContent",
            *bootstrap,
        }
        assert spec_.get("bootstrap", False) is bool(bootstrap)
        for key in ("repo", "chart", "version"):
            assert spec_[key] == expected[name][key]
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", spec_["version"])  # pinned, no ranges
        assert isinstance(yaml.safe_load(spec_["valuesContent"]), dict)
    assert yaml.safe_load(charts["cert-manager"]["spec"]["valuesContent"]) == {
        "crds": {"enabled": True}
    }
    [issuer] = objects(ctx, "ClusterIssuer").values()
    acme = issuer["spec"]["acme"]
    assert acme["email"] == "ops@example.com"
    assert acme["server"] == "https://acme-v02.api.letsencrypt.org/directory"
    assert acme["solvers"] == [{"http01": {"ingress": {"ingressClassName": "traefik"}}}]
    [traefik] = objects(ctx, "HelmChartConfig").values()
    values = yaml.safe_load(traefik["spec"]["valuesContent"])
    assert values["ports"]["web"]["redirections"]["entryPoint"]["to"] == "websecure"


def test_hcloud_addons_get_the_token_and_network():
    ctx = context(cloud="hcloud")
    secret = objects(ctx, "Secret")["hcloud"]
    assert secret["metadata"]["namespace"] == "kube-system"
    assert secret["stringData"] == {"token": "HCLOUD-TOKEN-PLACEHOLDER", "network": "4711"}
    ccm = yaml.safe_load(
        objects(ctx, "HelmChart")["hcloud-cloud-controller-manager"]["spec"]["valuesContent"]
    )
    assert ccm["networking"] == {"enabled": True, "clusterCIDR": r.CLUSTER_CIDR}
    assert ccm["env"]["HCLOUD_NETWORK_ROUTES_ENABLED"] == {"value": "false"}
    # the stack's own load balancer fronts ServiceLB: the controller makes none of its own
    assert ccm["env"]["HCLOUD_LOAD_BALANCERS_ENABLED"] == {"value": "false"}
    config = yaml.safe_load(files_of(ctx, FIRST)[r.K3S_CONFIG])
    assert "servicelb" not in config.get("disable", [])
    aws = context(cloud="aws")
    assert "hcloud" not in objects(aws, "Secret")
    assert not any("hcloud" in name for name in r.render_manifests(aws))


@pytest.mark.parametrize(
    ("cloud", "provisioner"), [("hcloud", "csi.hetzner.cloud"), ("aws", "rancher.io/local-path")]
)
def test_storage_keeps_data_on_each_cloud(cloud: r.Cloud, provisioner: str):
    ctx = context(cloud=cloud)
    [storage] = objects(ctx, "StorageClass").values()
    assert storage["provisioner"] == provisioner
    assert storage["reclaimPolicy"] == "Retain"
    assert storage["volumeBindingMode"] == "WaitForFirstConsumer"
    pg = objects(ctx, "StatefulSet")["postgres"]
    [claim] = pg["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "pgdata"
    assert claim["spec"]["storageClassName"] == storage["metadata"]["name"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pg["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    # hcloud: claims are Hetzner volumes only, so k3s's node-local default class is off.
    config = r.k3s_config(ctx, FIRST)
    assert (config.get("disable") == ["local-storage"]) == (cloud == "hcloud")


# --- the spec walked into the manifests ---------------------------------------------------------


def _container(ctx: r.ClusterContext, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    svc = ctx.app.services[name]
    kind = "StatefulSet" if svc.stateful else "Deployment"
    workload = objects(ctx, kind)[name]
    [container] = workload["spec"]["template"]["spec"]["containers"]
    return workload, container


@pytest.mark.parametrize("data", [EXAMPLE_DATA, SHAPES], ids=["example", "shapes"])
def test_every_spec_field_reaches_the_manifests(data: dict[str, Any]):
    ctx = context(spec(data))
    app = ctx.app
    services = objects(ctx, "Service")
    policies = objects(ctx, "NetworkPolicy")
    secrets = objects(ctx, "Secret")
    for name, svc in app.sorted_services():
        workload, container = _container(ctx, name)
        assert workload["metadata"]["namespace"] == app.name
        assert workload["spec"]["replicas"] == svc.replicas
        assert container["image"] == svc.image
        assert container.get("args") == (list(svc.command) if svc.command else None)
        assert [p["containerPort"] for p in container.get("ports", [])] == [
            p.port for p in svc.ports
        ]
        cpu = f"{round(svc.cpu * 1000)}m"
        mem = f"{svc.memory}Mi"
        assert container["resources"] == {
            "limits": {"cpu": cpu, "memory": mem},
            "requests": {"cpu": cpu, "memory": mem},
        }
        env = {e["name"]: e for e in container.get("env", [])}
        assert set(env) == set(svc.env) | set(svc.secret_env)
        for var, value in svc.env.items():
            assert k8s_expand(env[var]["value"], {}) == value
        for var in svc.secret_env:
            ref = env[var]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": f"{name}-secret-env", "key": var}
            assert var in secrets[ref["name"]]["stringData"]
        mounts = [
            (m["name"], m["mountPath"], m.get("readOnly", False))
            for m in container.get("volumeMounts", [])
        ]
        assert mounts == [(m.volume, m.path, m.read_only) for m in svc.volumes]
        if svc.health is not None:
            probe = container["livenessProbe"]
            assert probe["periodSeconds"] == svc.health.interval
            assert probe["timeoutSeconds"] == svc.health.timeout
            assert probe["failureThreshold"] == svc.health.retries
            assert "startupProbe" in container and "readinessProbe" in container
        else:
            assert not {"livenessProbe", "readinessProbe", "startupProbe"} & set(container)
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("blueprints.dev/depends-on", "") == ",".join(sorted(svc.depends_on))
        if svc.ports:
            assert [p["port"] for p in services[name]["spec"]["ports"]] == [
                p.port for p in svc.ports
            ]
        # every declared dependency with ports is an allowed connection, both ways
        for dep in svc.depends_on:
            dep_ports = sorted(p.port for p in app.services[dep].ports)
            if not dep_ports:
                continue
            egress = policies[f"service-{name}"]["spec"]["egress"]
            assert {
                "to": [{"podSelector": {"matchLabels": r._selector(app, dep)}}],
                "ports": [{"port": p, "protocol": "TCP"} for p in dep_ports],
            } in egress
            sources = [
                peer
                for rule in policies[f"service-{dep}"]["spec"]["ingress"]
                for peer in rule["from"]
            ]
            assert {"podSelector": {"matchLabels": r._selector(app, name)}} in sources


@pytest.mark.parametrize(
    ("health", "handler"),
    [
        ({"type": "http", "path": "/healthz"}, {"httpGet": {"path": "/healthz", "port": 8000}}),
        ({"type": "http", "path": "/h", "port": 9000}, {"httpGet": {"path": "/h", "port": 9000}}),
        ({"type": "tcp"}, {"tcpSocket": {"port": 8000}}),
        (
            {"type": "command", "command": ["check", "--now"]},
            {"exec": {"command": ["check", "--now"]}},
        ),
    ],
)
def test_health_checks_become_probes(health: dict[str, Any], handler: dict[str, Any]):
    data = with_service(
        EXAMPLE_DATA,
        "web",
        health={**health, "interval": "10s", "timeout": "3s", "retries": 4, "start_period": "45s"},
    )
    _, container = _container(context(spec(data)), "web")
    timing = {"periodSeconds": 10, "timeoutSeconds": 3}
    assert container["livenessProbe"] == {**handler, **timing, "failureThreshold": 4}
    assert container["readinessProbe"] == {
        **handler,
        **timing,
        "failureThreshold": 1,
        "successThreshold": 1,
    }
    # 45 s of start period in 10 s steps, then the usual 4 retries
    assert container["startupProbe"] == {**handler, **timing, "failureThreshold": 5 + 4}


def test_replicated_services_spread_and_get_a_disruption_budget():
    ctx = context(spec(with_service(EXAMPLE_DATA, "redis", replicas=3)))
    pdbs = objects(ctx, "PodDisruptionBudget")
    assert sorted(pdbs) == ["redis", "web"]
    assert pdbs["web"]["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": r._selector(ctx.app, "web")},
    }
    for name in ctx.app.services:
        workload, _ = _container(ctx, name)
        [spread] = workload["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
        assert spread["topologyKey"] == "kubernetes.io/hostname"
        assert spread["labelSelector"]["matchLabels"] == workload["spec"]["selector"]["matchLabels"]


def test_pods_get_no_api_token_and_no_service_links():
    for kind in ("Deployment", "StatefulSet"):
        for workload in objects(context(), kind).values():
            pod = workload["spec"]["template"]["spec"]
            assert pod["automountServiceAccountToken"] is False
            assert pod["enableServiceLinks"] is False


def test_ingress_routes_every_public_http_port_with_tls():
    ctx = context(spec(SHAPES))
    [ingress] = objects(ctx, "Ingress").values()
    assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt"}
    assert ingress["spec"]["ingressClassName"] == "traefik"
    assert ingress["spec"]["tls"] == [{"hosts": ["shop.example.com"], "secretName": "shop-tls"}]
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == "shop.example.com"
    # the longer prefix first
    assert [
        (p["path"], p["backend"]["service"]["port"]["number"]) for p in rule["http"]["paths"]
    ] == [("/api", 8001), ("/", 8000)]
    assert all(p["pathType"] == "Prefix" for p in rule["http"]["paths"])
    assert "Ingress" not in {d["kind"] for d in documents(context(spec(MINIMAL)))}


def test_public_tcp_port_is_a_load_balancer_service():
    svc = objects(context(spec(SHAPES)), "Service")["redis-public"]
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["ports"] == [
        {"name": "tcp-16379", "port": 16379, "targetPort": 6379, "protocol": "TCP"}
    ]


def test_network_policies_default_deny_and_allow_only_what_is_declared():
    ctx = context()
    app = ctx.app
    policies = objects(ctx, "NetworkPolicy")
    assert policies["default-deny"]["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
    }
    dns = policies["allow-dns"]["spec"]["egress"]
    assert dns[0]["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    internet = policies["allow-internet"]["spec"]["egress"][0]["to"][0]["ipBlock"]
    assert internet["cidr"] == "0.0.0.0/0"
    assert "169.254.0.0/16" in internet["except"] and "10.0.0.0/8" in internet["except"]
    traefik = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "traefik"}},
    }
    web_in = policies["service-web"]["spec"]["ingress"]
    assert web_in == [{"from": [traefik], "ports": [{"port": 8000, "protocol": "TCP"}]}]
    pg_in = policies["service-postgres"]["spec"]["ingress"]
    assert pg_in == [
        {
            "from": [
                {"podSelector": {"matchLabels": r._selector(app, u)}} for u in ("web", "worker")
            ],
            "ports": [{"port": 5432, "protocol": "TCP"}],
        }
    ]
    # nothing reaches postgres from the ingress, nothing reaches web from other pods
    assert all(traefik not in rule["from"] for rule in pg_in)
    assert policies["allow-acme-http01"]["spec"]["podSelector"] == {
        "matchLabels": {"acme.cert-manager.io/http01-solver": "true"}
    }


# --- secrets -------------------------------------------------------------------------------


def test_secret_values_only_in_the_root_only_secret_manifest():
    app = spec()
    values = {n: f"s3cr3t-{n}" for n in app.secret_names()}
    ctx = context(app, secrets=values)
    files = r.render_node_files(ctx, FIRST)
    for path, f in files.items():
        holds = [v for v in values.values() if v in f.content]
        if path == MANIFESTS + "blueprints-app-secrets.yaml":
            assert sorted(holds) == sorted(values.values())
            assert f.permissions == "0600"
        else:
            assert not holds, path
    secrets = objects(ctx, "Secret")
    assert secrets["web-secret-env"]["stringData"] == {
        k: values[k] for k in ("DATABASE_PASSWORD", "DJANGO_SECRET_KEY")
    }
    assert secrets["postgres-secret-env"]["stringData"] == {
        "POSTGRES_PASSWORD": values["POSTGRES_PASSWORD"]
    }
    for node in (JOINING, AGENT):
        assert not any(v in t for v in values.values() for t in files_of(ctx, node).values())


def test_keys_token_and_config_are_root_only():
    files = r.render_node_files(context(), FIRST)
    for path, f in files.items():
        if (
            path.endswith(".key")
            or path.startswith("/etc/rancher/")
            or path.rsplit("/", 1)[-1] in r.SECRET_MANIFESTS
        ):
            assert f.permissions == "0600", path
        elif path.startswith(SCRIPTS):
            assert f.permissions == "0755", path
        else:
            assert f.permissions == "0644", path
    assert files[r.TOKEN_FILE].content == "TOKEN-PLACEHOLDER\n"


def test_missing_secret_is_named():
    app = spec()
    with pytest.raises(
        ValueError, match=r"secret POSTGRES_PASSWORD \(secret_env of service postgres\)"
    ):
        r.render_manifests(
            context(app, secrets={"DATABASE_PASSWORD": "a", "DJANGO_SECRET_KEY": "b"})
        )


# --- k3s on the nodes ---------------------------------------------------------------------------


def test_k3s_config_per_role():
    timing = r.Timing(
        node_monitor_grace_period=20, not_ready_toleration=15, unreachable_toleration=25
    )
    ctx = context(timing=timing)
    first = yaml.safe_load(files_of(ctx, FIRST)[r.K3S_CONFIG])
    assert "server" not in first and "cluster-init" not in first  # decided by k3s-bootstrap
    assert first["node-ip"] == first["advertise-address"] == "10.0.1.10"
    assert first["node-name"] == "shop-k8s-cp-1"
    assert first["token-file"] == r.TOKEN_FILE
    assert first["kube-controller-manager-arg"] == ["node-monitor-grace-period=20s"]
    assert first["kube-apiserver-arg"] == [
        "default-not-ready-toleration-seconds=15",
        "default-unreachable-toleration-seconds=25",
    ]
    assert first["node-taint"] == ["CriticalAddonsOnly=true:NoExecute"]
    assert first["secrets-encryption"] is True
    assert first["disable-cloud-controller"] is True and first["kubelet-arg"] == [
        "cloud-provider=external"
    ]
    joining = yaml.safe_load(files_of(ctx, JOINING)[r.K3S_CONFIG])
    assert joining["server"] == "https://10.0.1.10:6443"
    assert joining["kube-apiserver-arg"] == first["kube-apiserver-arg"]
    agent = yaml.safe_load(files_of(ctx, AGENT)[r.K3S_CONFIG])
    assert agent == {
        "node-name": "shop-k8s-worker-1",
        "node-ip": "10.0.1.13",
        "server": "https://10.0.1.10:6443",
        "token-file": r.TOKEN_FILE,
        "kubelet-arg": ["cloud-provider=external"],
    }
    aws_first = r.k3s_config(context(cloud="aws"), FIRST)
    assert not {"disable-cloud-controller", "kubelet-arg", "disable"} & set(aws_first)
    assert r.Timing(30, 30, 30).eviction_after == 60


def test_only_the_first_control_plane_carries_cas_and_manifests():
    ctx = context()
    first, joining, agent = (files_of(ctx, n) for n in (FIRST, JOINING, AGENT))
    assert {p for p in first if p.startswith(r.TLS_DIR)} == {
        f"{r.TLS_DIR}/{name}"
        for name in (
            "server-ca.crt",
            "server-ca.key",
            "client-ca.crt",
            "client-ca.key",
            "request-header-ca.crt",
            "request-header-ca.key",
            "etcd/peer-ca.crt",
            "etcd/peer-ca.key",
            "etcd/server-ca.crt",
            "etcd/server-ca.key",
            "service.key",
        )
    }
    assert any(p.startswith(MANIFESTS) for p in first)
    for other in (joining, agent):
        assert not [
            p for p in other if p.startswith(("/var/lib/rancher", SCRIPTS + "k3s-bootstrap"))
        ]
    assert UNITS + "k3s.service" in joining and UNITS + "k3s-agent.service" in agent


def test_other_nodes_do_not_depend_on_the_app_spec():
    """A spec change must touch the first control plane only."""
    a, b = context(), context(spec(SHAPES))
    for node in (JOINING, AGENT):
        assert r.render_cloud_init(a, node) == r.render_cloud_init(b, node)
    assert r.render_cloud_init(a, FIRST) != r.render_cloud_init(b, FIRST)


@pytest.mark.parametrize("cloud", ["hcloud", "aws"])
@pytest.mark.parametrize("node", sorted(NODES))
def test_cloud_init_schema_accepts_user_data(cloud: r.Cloud, node: str, tmp_path: Path):
    validators.cloud_init_schema(r.render_cloud_init(context(cloud=cloud), NODES[node]), tmp_path)


def test_cloud_init_contents():
    ctx = context()
    data = yaml.safe_load(r.render_cloud_init(ctx, FIRST))
    assert data["ssh_pwauth"] is False and data["disable_root"] is True
    [user] = data["users"]
    assert user["name"] == "deploy" and user["ssh_authorized_keys"] == list(ctx.app.admin.ssh_keys)
    files = r.render_node_files(ctx, FIRST)
    assert {f["path"]: f["content"] for f in data["write_files"]} == {
        p: f.content for p, f in files.items()
    }
    assert {f["path"]: f["permissions"] for f in data["write_files"]} == {
        p: f.permissions for p, f in files.items()
    }
    assert data["runcmd"] == [
        "systemctl try-reload-or-restart ssh.service",
        SCRIPTS + "install-k3s",
        SCRIPTS + "k3s-bootstrap",
        "systemctl daemon-reload",
        "systemctl enable k3s.service",
        "systemctl start --no-block k3s.service",
    ]
    agent = yaml.safe_load(r.render_cloud_init(ctx, AGENT))
    assert agent["runcmd"][-2:] == [
        "systemctl enable k3s-agent.service",
        "systemctl start --no-block k3s-agent.service",
    ]
    assert SCRIPTS + "k3s-bootstrap" not in agent["runcmd"]


def test_every_script_passes_shellcheck(tmp_path: Path):
    files = files_of(context(), FIRST)
    found = {p: t for p, t in files.items() if p.startswith(SCRIPTS)}
    assert set(found) == {
        SCRIPTS + "install-k3s",
        SCRIPTS + "k3s-bootstrap",
        SCRIPTS + "k3s-flannel-iface",
    }
    for path, text in found.items():
        assert text.startswith("#!/bin/bash\n")
        target = tmp_path / Path(path).name
        target.write_text(text)
        validators.shellcheck(target, "bash")


@pytest.mark.parametrize("node", ["first", "agent"])
def test_units_pass_systemd_analyze_verify(node: str, tmp_path: Path):
    files = files_of(context(), NODES[node])
    units = {p: t for p, t in files.items() if p.startswith(UNITS)}
    root = validators.systemd_root(units, tmp_path / "root", executable=[])
    for binary in (r.K3S_BINARY, "/usr/sbin/modprobe"):  # installed at boot / in the image
        stub = root / binary.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    names = [Path(p).name for p in units]
    validators.systemd_verify(root, names)
    for name in names:
        validators.systemctl_enable(root, name)
        assert (root / "etc/systemd/system/multi-user.target.wants" / name).is_symlink()


# --- the scripts, run against stand-in commands --------------------------------------------------

STUB = r"""#!/bin/bash
name=${0##*/}
i=0; while [[ -e $STUB_CALLS/$i ]]; do i=$((i + 1)); done
printf '%s\0' "$name" "$@" >"$STUB_CALLS/$i"
case $name in
  uname) echo "${STUB_ARCH:-x86_64}" ;;
  curl)
    stdin=$(cat 2>/dev/null || true)
    printf '%s' "$stdin" >"$STUB_CALLS/$i.stdin"
    out=""; url=""
    while [[ $# -gt 0 ]]; do
      case $1 in
        --output) out=$2; shift 2 ;;
        --config | --max-time | --cacert | --retry | --retry-delay) shift 2 ;;
        --*) shift ;;
        *) url=$1; shift ;;
      esac
    done
    case $url in
      */sha256sum-*) printf '%s  k3s\n%s  k3s-arm64\n' "$STUB_SUM" "$STUB_SUM" >"$out" ;;
      */k3s|*/k3s-arm64) printf 'fake k3s binary\n' >"$out" ;;
      *server-bootstrap)
        host=${url#https://}
        [[ " ${STUB_ANSWERING:-} " == *" ${host%%/*} "* ]] || exit 22
        ;;
    esac
    ;;
esac
"""


def sandbox(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    bin_dir, calls = tmp_path / "stub-bin", tmp_path / "calls"
    bin_dir.mkdir()
    calls.mkdir()
    for name in ("curl", "uname"):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "STUB_CALLS": str(calls),
        "HOME": str(tmp_path),
    }
    return calls, env


def recorded(calls: Path) -> list[list[str]]:
    found = sorted((p for p in calls.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return [p.read_bytes().decode().split("\0")[:-1] for p in found]


def _install_script(tmp_path: Path) -> tuple[Path, Path]:
    target = tmp_path / "bin" / "k3s"
    target.parent.mkdir()
    script = tmp_path / "install-k3s"
    script.write_text(
        r.render_template("k8s/install-k3s.sh.j2", version=r.K3S_VERSION, binary=str(target))
    )
    script.chmod(0o755)
    return script, target


def test_install_k3s_checks_the_release_checksum(tmp_path: Path):
    import hashlib

    script, target = _install_script(tmp_path)
    calls, env = sandbox(tmp_path)
    good = hashlib.sha256(b"fake k3s binary\n").hexdigest()
    proc = subprocess.run(
        [str(script)], env={**env, "STUB_SUM": good}, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert target.read_text() == "fake k3s binary\n" and os.access(target, os.X_OK)
    assert os.readlink(target.parent / "kubectl") == "k3s"
    urls = [c[-1] for c in recorded(calls) if c[0] == "curl"]
    base = "https://github.com/k3s-io/k3s/releases/download/v1.34.9%2Bk3s1"
    assert urls == [f"{base}/k3s", f"{base}/sha256sum-amd64.txt"]
    target.unlink()
    proc = subprocess.run(
        [str(script)],
        env={**env, "STUB_SUM": "0" * 64},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0 and not target.exists()


def test_install_k3s_fetches_the_arm_build_on_arm(tmp_path: Path):
    import hashlib

    script, _ = _install_script(tmp_path)
    calls, env = sandbox(tmp_path)
    good = hashlib.sha256(b"fake k3s binary\n").hexdigest()
    proc = subprocess.run(
        [str(script)],
        env={**env, "STUB_SUM": good, "STUB_ARCH": "aarch64"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    urls = [c[-1] for c in recorded(calls) if c[0] == "curl"]
    assert [u.rsplit("/", 1)[1] for u in urls] == ["k3s-arm64", "sha256sum-arm64.txt"]


def _bootstrap(tmp_path: Path) -> tuple[Path, Path, Path]:
    token, dropin = tmp_path / "token", tmp_path / "config.yaml.d" / "50-bootstrap.yaml"
    token.write_text("Sup3rSecretToken\n")
    script = tmp_path / "k3s-bootstrap"
    script.write_text(
        r.render_template(
            "k8s/k3s-bootstrap.sh.j2",
            peers=["10.0.1.11", "10.0.1.12"],
            port=6443,
            token_file=str(token),
            ca_file="/ca.crt",
            dropin=str(dropin),
        )
    )
    script.chmod(0o755)
    return script, dropin, token


IP_ADDR = """1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth0    inet 203.0.113.9/32 metric 100 scope global dynamic eth0\\       valid_lft 86000sec
3: enp7s0    inet 10.0.1.13/32 brd 10.0.1.13 scope global dynamic enp7s0\\       valid_lft 86000sec
"""


def _flannel(tmp_path: Path, ip_output: str, wait: int = 120) -> subprocess.CompletedProcess:
    """Runs the worker's k3s-flannel-iface with a stand-in `ip` printing ip_output once the
    script has asked twice (the private network comes up late)."""
    files = files_of(context(cloud="hcloud"), AGENT)
    text = files[f"{r.SCRIPTS}/{r.FLANNEL_SCRIPT}"]
    dropin = tmp_path / "config.yaml.d" / "40-blueprints-flannel.yaml"
    config = tmp_path / "config.yaml"
    config.write_text(files[r.K3S_CONFIG])  # the worker's own, with node-ip 10.0.1.13
    text = (
        text.replace(r.FLANNEL_DROPIN, str(dropin))
        .replace(f"config={r.K3S_CONFIG}\n", f"config={config}\n")
        .replace("wait_seconds=120", f"wait_seconds={wait}")
    )
    script = tmp_path / "k3s-flannel-iface"
    script.write_text(text)
    script.chmod(0o755)
    bin_dir = tmp_path / "stub-bin"
    bin_dir.mkdir()
    (tmp_path / "ip-output").write_text(ip_output)
    (bin_dir / "ip").write_text(
        "#!/bin/sh\n"
        f'count="{tmp_path}/ip-calls"; echo x >>"$count"\n'
        '[ "$(wc -l <"$count")" -ge 2 ] && cat "' + str(tmp_path / "ip-output") + '"\n'
        "exit 0\n"
    )
    (bin_dir / "ip").chmod(0o755)
    (bin_dir / "sleep").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sleep").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run([str(script)], env=env, capture_output=True, text=True, check=False)


def test_flannel_runs_over_the_interface_that_holds_the_private_address(tmp_path: Path):
    """Found at boot from the node's private address, not its name: here enp7s0, and the
    default-route interface (eth0) is not taken."""
    proc = _flannel(tmp_path, IP_ADDR)
    assert proc.returncode == 0, proc.stderr
    dropin = tmp_path / "config.yaml.d" / "40-blueprints-flannel.yaml"
    assert yaml.safe_load(dropin.read_text()) == {"flannel-iface": "enp7s0"}
    assert oct(dropin.stat().st_mode & 0o777) == "0o600"
    assert "flannel runs over enp7s0 (10.0.1.13)" in proc.stdout
    # every node's k3s unit runs it before k3s starts
    for node in (FIRST, JOINING, AGENT):
        files = files_of(context(cloud="hcloud"), node)
        unit = next(t for p, t in files.items() if p.startswith(r.UNITS) and "k3s" in p)
        assert f"ExecStartPre={r.SCRIPTS}/{r.FLANNEL_SCRIPT}\n" in unit
        # one script for every node: the address comes from the node's k3s config
        assert (
            files[f"{r.SCRIPTS}/{r.FLANNEL_SCRIPT}"]
            == files_of(context(cloud="hcloud"), FIRST)[f"{r.SCRIPTS}/{r.FLANNEL_SCRIPT}"]
        )
        assert yaml.safe_load(files[r.K3S_CONFIG])["node-ip"] == node.private_ip


def test_flannel_without_the_private_address_fails_the_start(tmp_path: Path):
    proc = _flannel(tmp_path, IP_ADDR.replace("10.0.1.13", "10.0.1.99"), wait=4)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "k3s-flannel-iface: no interface holds 10.0.1.13 after 4s; is the server attached to "
        "the private network?"
    )
    assert not (tmp_path / "config.yaml.d" / "40-blueprints-flannel.yaml").exists()


def test_first_control_plane_founds_the_cluster_when_no_peer_runs_one(tmp_path: Path):
    script, dropin, _ = _bootstrap(tmp_path)
    calls, env = sandbox(tmp_path)
    proc = subprocess.run([str(script)], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(dropin.read_text()) == {"cluster-init": True}
    assert oct(dropin.stat().st_mode & 0o777) == "0o600"
    probes_ = [c for c in recorded(calls) if c[0] == "curl"]
    assert [c[-1] for c in probes_] == [
        "https://10.0.1.11:6443/v1-k3s/server-bootstrap",
        "https://10.0.1.12:6443/v1-k3s/server-bootstrap",
    ]
    for call in probes_:
        assert "Sup3rSecretToken" not in " ".join(call)  # never on a command line
        assert call[call.index("--cacert") + 1] == "/ca.crt"
    stdin = [p.read_text() for p in sorted(calls.glob("*.stdin"))]
    # (the stand-in's $(cat) drops the final newline)
    assert stdin and all(s == 'user = "server:Sup3rSecretToken"' for s in stdin)


def test_replaced_first_control_plane_joins_its_peers(tmp_path: Path):
    script, dropin, _ = _bootstrap(tmp_path)
    _, env = sandbox(tmp_path)
    env["STUB_ANSWERING"] = "10.0.1.12:6443"
    assert subprocess.run([str(script)], env=env, check=False).returncode == 0
    assert yaml.safe_load(dropin.read_text()) == {"server": "https://10.0.1.12:6443"}
    # decided once: a later boot keeps the decision even when the peers answer differently
    env["STUB_ANSWERING"] = ""
    assert subprocess.run([str(script)], env=env, check=False).returncode == 0
    assert yaml.safe_load(dropin.read_text()) == {"server": "https://10.0.1.12:6443"}


# --- spec rules of this blueprint -------------------------------------------------------------


def test_check_app_accepts_the_example_and_the_minimal_app():
    assert r.check_app(spec()) == [] and r.check_app(spec(MINIMAL)) == []


def test_check_app_names_each_problem():
    data = copy.deepcopy(EXAMPLE_DATA)
    data["name"] = "kube-system"
    data["services"]["redis"]["ports"] = [{"port": 6379, "expose": "tcp", "public_port": 16379}]
    data["services"]["redis-public"] = {"image": "busybox:1.36"}
    data["services"]["web"]["env"]["BAD"] = "a\0b"
    problems = r.check_app(spec(data))
    assert problems == [
        (
            ("name",),
            "'kube-system' is the name of a namespace the cluster uses itself, and the app runs "
            "in a namespace named after it; choose another name",
        ),
        (
            ("services", "redis", "ports"),
            "its expose: tcp ports become a Service named redis-public, which is also the name "
            "of another service; rename one of them",
        ),
        (("services", "web", "env", "BAD"), r.NUL_MESSAGE),
    ]
    with pytest.raises(ValueError, match="kube-system"):
        r.render_manifests(context(spec(data)))


# --- injection: hostile values change no structure and come back exactly -----------------------

NASTY = [
    "it's",
    'say "hi"',
    "$(touch /tmp/pwned)",
    "`id`",
    "${HOME}",
    "$HOME",
    "$(HOME)",
    "$$(HOME)",
    "$",
    "$$",
    "a: b",
    "- item",
    "{flow: map}",
    "[list]",
    "&anchor",
    "*alias",
    "!!python/object",
    "#comment",
    "%TAG",
    "---",
    "...",
    "",
    " padded ",
    "tab\there",
    "line one\nline two",
    "unicode é ✓ \u2028 \x85",
    "{{ jinja }}",
    "yes",
    "no",
    "null",
    "~",
    "0x1F",
    "1e3",
    "0755",
]


def nasty_data() -> dict[str, Any]:
    data = copy.deepcopy(EXAMPLE_DATA)
    web = data["services"]["web"]
    web["env"] = {f"NASTY_{i}": v for i, v in enumerate(NASTY)}
    web["command"] = list(NASTY)
    web["health"]["path"] = "/h'\"$(touch)`id`${HOME}%n;&|<>*?~!#"
    data["services"]["worker"]["health"]["command"] = ["sh", "-c", *NASTY]
    data["acme_email"] = "ops+k8s@example.com"
    return data


def test_hostile_values_change_no_structure_and_round_trip():
    clean, evil_app = context(), spec(nasty_data())
    evil = context(
        evil_app, secrets={n: f"{NASTY[i]}#{n}" for i, n in enumerate(evil_app.secret_names())}
    )
    clean_docs, evil_docs = documents(clean), documents(evil)
    shape = [(d["kind"], d["metadata"]["name"]) for d in clean_docs]
    assert [(d["kind"], d["metadata"]["name"]) for d in evil_docs] == shape
    for doc in evil_docs:
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, SCHEMA_VERSION, strict=True)
    _, web = _container(evil, "web")
    assert [k8s_expand(a, {}) for a in web["args"]] == NASTY
    env = {e["name"]: e for e in web["env"]}
    for var, value in evil_app.services["web"].env.items():
        assert k8s_expand(env[var]["value"], {"HOME": "/root"}) == value
    assert web["livenessProbe"]["httpGet"]["path"] == evil_app.services["web"].health.path
    _, worker = _container(evil, "worker")
    assert worker["livenessProbe"]["exec"]["command"] == ["sh", "-c", *NASTY]
    secrets = objects(evil, "Secret")
    for name, value in evil.secrets.items():
        holder = "postgres-secret-env" if name == "POSTGRES_PASSWORD" else "web-secret-env"
        assert secrets[holder]["stringData"][name] == value
    [issuer] = objects(evil, "ClusterIssuer").values()
    assert issuer["spec"]["acme"]["email"] == "ops+k8s@example.com"
    # cloud-init round trip: files come back byte for byte
    data = yaml.safe_load(r.render_cloud_init(evil, FIRST))
    assert {f["path"]: f["content"] for f in data["write_files"]} == files_of(evil, FIRST)


def test_hostile_token_and_names_stay_inside_their_quoting(tmp_path: Path):
    """The bootstrap script gets peers through the shell filter; the config is serialized."""
    ctx = r.ClusterContext(
        app=spec(),
        cloud="aws",
        server_ips=("10.0.1.10", "10.0.1.11"),
        token="t'o\"k$(id)\nen",
        pki=fake_pki(),
        secrets={n: "x" for n in spec().secret_names()},
    )
    files = files_of(ctx, FIRST)
    assert files[r.TOKEN_FILE] == "t'o\"k$(id)\nen\n"
    target = tmp_path / "k3s-bootstrap"
    target.write_text(files[SCRIPTS + "k3s-bootstrap"])
    validators.shellcheck(target, "bash")


@settings(max_examples=40, deadline=None)
@given(st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=30))
def test_any_env_value_reaches_the_container_exactly(value: str):
    _, container = _container(
        context(spec(with_service(EXAMPLE_DATA, "redis", env={"V": value}, command=[value]))),
        "redis",
    )
    assert k8s_expand(container["env"][0]["value"], {"V": "other"}) == value
    assert k8s_expand(container["args"][0], {"V": "other"}) == value


# --- kubeconfig -----------------------------------------------------------------------------------


def test_kubeconfig_trusts_the_cluster_ca_under_the_name_kubernetes():
    text = r.kubeconfig("shop-k8s", "https://203.0.113.7:6443", "CA-PEM", "CERT-PEM", "KEY-PEM")
    config = yaml.safe_load(text)
    [cluster] = config["clusters"]
    assert cluster["cluster"]["server"] == "https://203.0.113.7:6443"
    assert cluster["cluster"]["tls-server-name"] == "kubernetes"
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]).decode() == "CA-PEM"
    [user] = config["users"]
    assert base64.b64decode(user["user"]["client-certificate-data"]).decode() == "CERT-PEM"
    assert base64.b64decode(user["user"]["client-key-data"]).decode() == "KEY-PEM"
    assert config["current-context"] == "shop-k8s"
    assert config["contexts"] == [
        {"name": "shop-k8s", "context": {"cluster": "shop-k8s", "user": "shop-k8s-admin"}}
    ]


# --- size with real key material ------------------------------------------------------------------


def _real_pki() -> r.K3sPki:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    pem = serialization.Encoding.PEM
    fmt, none = serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()

    def key(k) -> str:
        return k.private_bytes(pem, fmt, none).decode()

    def cert_like() -> str:
        # A CA certificate is about 600 random-looking base64 characters; size is what counts.
        body = base64.encodebytes(os.urandom(450)).decode()
        return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n"

    values = {}
    for field in r.K3sPki.__dataclass_fields__:
        if field == "service_key":
            values[field] = key(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        elif field.endswith("_key"):
            values[field] = key(ec.generate_private_key(ec.SECP256R1()))
        else:
            values[field] = cert_like()
    return r.K3sPki(**values)


@pytest.mark.parametrize(("cloud", "limit"), [("hcloud", 32 * 1024), ("aws", 16 * 1024)])
def test_first_control_plane_user_data_fits_with_real_keys(cloud: r.Cloud, limit: int):
    text = r.render_cloud_init(context(cloud=cloud, pki=_real_pki()), FIRST)
    packed = gzip.compress(text.encode(), compresslevel=9, mtime=0)
    size = len(packed) if cloud == "aws" else len(base64.b64encode(packed))
    assert size <= limit, f"{size} bytes"


# --- determinism and goldens ---------------------------------------------------------------------


def test_same_input_same_bytes():
    assert r.render_cloud_init(context(), FIRST) == r.render_cloud_init(context(), FIRST)
    data = copy.deepcopy(EXAMPLE_DATA)
    data["services"] = dict(reversed(list(data["services"].items())))
    for svc in data["services"].values():
        svc["env"] = dict(reversed(list(svc.get("env", {}).items())))
        svc["depends_on"] = list(reversed(svc.get("depends_on", [])))
        svc["secret_env"] = list(reversed(svc.get("secret_env", [])))
    assert r.render_cloud_init(context(spec(data)), FIRST) == r.render_cloud_init(context(), FIRST)


GOLDEN_SETS = {
    f"{cloud}/{node}": (cloud, node)
    for cloud in ("hcloud", "aws")
    for node in ("first", "joining", "agent")
}


@pytest.mark.parametrize("name", sorted(GOLDEN_SETS))
def test_golden_files(name: str, update_golden: bool):
    cloud, node = GOLDEN_SETS[name]
    ctx = context(cloud=cloud)  # type: ignore[arg-type]
    rendered = {p.lstrip("/"): t for p, t in files_of(ctx, NODES[node]).items()}
    rendered["cloud-init.yaml"] = r.render_cloud_init(ctx, NODES[node])
    check_golden(GOLDEN / name, rendered, update_golden)


def test_golden_sets_are_exactly_the_rendered_ones(update_golden: bool):
    present = {f"{c.name}/{n.name}" for c in GOLDEN.iterdir() if c.is_dir() for n in c.iterdir()}
    check_no_stale_sets((GOLDEN / name for name in present - set(GOLDEN_SETS)), update_golden)


def test_golden_files_hold_only_placeholders():
    for path in GOLDEN.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert re.search(r"PASSWORD: (?!PLACEHOLDER-)", text) is None, path
            assert "BEGIN X-----" in text or "PRIVATE KEY" not in text, path


def test_dump_yaml_keeps_manifest_text_readable():
    """valuesContent is YAML inside YAML: the serializer writes it as a block, and it reads back."""
    chart = objects(context(), "HelmChart")["hcloud-cloud-controller-manager"]
    assert "valuesContent: |" in dump_yaml(chart)


@pytest.mark.parametrize("cloud", ["hcloud", "aws"])
def test_no_yaml_anchors_or_aliases(cloud: r.Cloud):
    """Every object is written out in full, as a person (and any YAML reader) expects."""
    ctx = context(spec(SHAPES), cloud)
    for text in [*files_of(ctx, FIRST).values(), r.render_cloud_init(ctx, FIRST)]:
        assert re.search(r"[&*]id\d{3}", text) is None
