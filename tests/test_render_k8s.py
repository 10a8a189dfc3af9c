"""The k8s renderer: strict Kubernetes schema validation, the spec walked into the manifests,
real validators for cloud-init/shell/systemd, injection round trips, determinism, goldens."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import validators
import yaml
from golden_files import check_golden, check_no_stale_sets
from hypothesis import given, settings
from hypothesis import strategies as st

from blueprints.backup.storage import Storage
from blueprints.render.common import dump_yaml, render_template
from blueprints.render.vm import bootstrap_guard
from blueprints.rungs.k8s import bootstrap as b
from blueprints.rungs.k8s import release as rel
from blueprints.rungs.k8s import rules
from blueprints.rungs.k8s.component import node_document
from blueprints.settings import K3S_VERSION
from blueprints.spec import AppSpec, load_spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "k8s"
EXAMPLE_DATA: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "app.yaml").read_text())
# Every field of the spec, the new ones included (files read from tests/everything/config).
EVERYTHING = Path(__file__).resolve().parent / "everything" / "app.yaml"
# kubernetes-validate ships schemas per minor version; the pinned k3s runs this one.
SCHEMA_VERSION = ".".join(rel.KUBERNETES_VERSION.split(".")[:2]) + ".0"
ALL_NODES = (
    b.K8sNode("shop-k8s-cp-1", "server", "10.0.1.10"),
    b.K8sNode("shop-k8s-cp-2", "server", "10.0.1.11"),
    b.K8sNode("shop-k8s-cp-3", "server", "10.0.1.12"),
    b.K8sNode("shop-k8s-worker-1", "agent", "10.0.1.13"),
    b.K8sNode("shop-k8s-worker-2", "agent", "10.0.1.14"),
    b.K8sNode("shop-k8s-worker-3", "agent", "10.0.1.15"),
)
FIRST, JOINING, AGENT = ALL_NODES[0], ALL_NODES[1], ALL_NODES[3]
NODES = {"first": FIRST, "joining": JOINING, "agent": AGENT}
DEPLOY_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDeployKeyOfTheStackForTests deploy@stack"
SCRIPTS = b.SCRIPTS + "/"
UNITS = b.UNITS + "/"
CRD_KINDS = {"HelmChartConfig", "ClusterIssuer"}


@dataclass(frozen=True)
class Case:
    """What the release is made of: the app, the cloud and the secret values."""

    app: AppSpec
    cloud: rel.Cloud
    secrets: Mapping[str, str]


def spec(data: Mapping[str, Any] | None = None) -> AppSpec:
    return AppSpec.model_validate(copy.deepcopy(dict(data or EXAMPLE_DATA)))


def everything() -> AppSpec:
    return load_spec(EVERYTHING)


def context(
    app: AppSpec | None = None,
    cloud: rel.Cloud = "hcloud",
    *,
    secrets: Mapping[str, str] | None = None,
) -> Case:
    app = app or spec()
    values = {n: f"PLACEHOLDER-{n}" for n in app.secret_names()} if secrets is None else secrets
    return Case(app, cloud, values)


def cluster(cloud: rel.Cloud = "hcloud", timing: b.Timing | None = None) -> b.ClusterContext:
    return b.ClusterContext(
        cloud=cloud,
        nodes=ALL_NODES,
        timing=timing or b.Timing(),
        deploy_key=DEPLOY_KEY,
        app_namespace="shop",
    )


def files_of(ctx: b.ClusterContext, node: b.K8sNode) -> dict[str, str]:
    return b.render_node_files(ctx, node)


# The stack's backup bucket (blueprints.backup.storage), so the backup objects are rendered,
# validated and kept in the goldens too (tests/test_backup_k8s.py walks them).
BACKUP_STORAGE = Storage(
    bucket="shop-backups",
    endpoint="https://fsn1.your-objectstorage.com",
    region="fsn1",
    access_key="BACKUP-ACCESS-KEY-PLACEHOLDER",
    folder="restic/shop-k8s-hcloud",
)


def manifests(case: Case) -> dict[str, str]:
    return rel.manifests(
        case.app,
        case.cloud,
        case.secrets,
        cloud_token="HCLOUD-TOKEN-PLACEHOLDER",
        network_id="4711",
        backup=BACKUP_STORAGE,
        backup_password="PLACEHOLDER-backup-password",
        backup_secret_key="PLACEHOLDER-backup-secret-key",
    )


def documents(case: Case) -> list[dict[str, Any]]:
    return [doc for text in manifests(case).values() for doc in yaml.safe_load_all(text) if doc]


def objects(case: Case, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents(case) if d["kind"] == kind}


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
    "data",
    [EXAMPLE_DATA, SHAPES, MINIMAL, None],
    ids=["example", "shapes", "minimal", "everything"],
)
def test_every_manifest_passes_kubernetes_validate_strict(
    cloud: rel.Cloud, data: dict[str, Any] | None
):
    docs = documents(context(spec(data) if data is not None else everything(), cloud))
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        if doc["kind"] in CRD_KINDS:
            continue  # custom resources: their structure is asserted below
        kubernetes_validate.validate(doc, SCHEMA_VERSION, strict=True)
    assert {"Namespace", "NetworkPolicy", "StorageClass", "HelmChartConfig"} <= kinds


def test_strict_validation_rejects_an_unknown_field():
    """The harness itself: a misspelt field must fail strict validation."""
    deployment = objects(context(), "Deployment")["web"]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, SCHEMA_VERSION, strict=True)


def test_schema_version_is_shipped_and_matches_k3s():
    assert K3S_VERSION.startswith("v" + rel.KUBERNETES_VERSION + "+k3s")
    assert SCHEMA_VERSION in kubernetes_validate.utils.all_versions()


@pytest.mark.parametrize("cloud", ["hcloud", "aws"])
def test_charts_and_custom_resources_are_pinned_and_well_formed(cloud: rel.Cloud):
    charts = {c.name: c for c in rel.charts(cloud)}
    expected = {"cert-manager": rel.CERT_MANAGER}
    if cloud == "hcloud":
        expected |= {
            "hcloud-cloud-controller-manager": rel.HCLOUD_CCM,
            "hcloud-csi": rel.HCLOUD_CSI,
        }
    assert set(charts) == set(expected)
    for name, chart in charts.items():
        for key in ("repo", "chart", "version"):
            assert getattr(chart, key) == expected[name][key]
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", chart.version)  # pinned, no ranges
        # every chart it waits for is installed before it
        names = [c.name for c in rel.charts(cloud)]
        assert all(names.index(a) < names.index(name) for a in chart.after)
    assert charts["cert-manager"].values == {"crds": {"enabled": True}}
    if cloud == "hcloud":
        # the nodes stay tainted "uninitialized" until the controller runs: the others wait
        ccm = "hcloud-cloud-controller-manager"
        assert charts[ccm].after == ()
        assert charts["hcloud-csi"].after == (ccm,) and charts["cert-manager"].after == (ccm,)
    case = context(cloud=cloud)
    [issuer] = objects(case, "ClusterIssuer").values()
    acme = issuer["spec"]["acme"]
    assert acme["email"] == "ops@example.com"
    assert acme["server"] == "https://acme-v02.api.letsencrypt.org/directory"
    assert acme["solvers"] == [{"http01": {"ingress": {"ingressClassName": "traefik"}}}]
    [traefik] = objects(case, "HelmChartConfig").values()
    assert traefik["apiVersion"] == "helm.cattle.io/v1"
    values = yaml.safe_load(traefik["spec"]["valuesContent"])
    assert values["ports"]["web"]["redirections"]["entryPoint"]["to"] == "websecure"


def test_hcloud_addons_get_the_token_and_network():
    case = context(cloud="hcloud")
    secret = objects(case, "Secret")["hcloud"]
    assert secret["metadata"]["namespace"] == "kube-system"
    assert secret["stringData"] == {"token": "HCLOUD-TOKEN-PLACEHOLDER", "network": "4711"}
    ccm = {c.name: c for c in rel.charts("hcloud")}["hcloud-cloud-controller-manager"].values
    assert ccm["networking"] == {"enabled": True, "clusterCIDR": rel.CLUSTER_CIDR}
    assert ccm["env"]["HCLOUD_NETWORK_ROUTES_ENABLED"] == {"value": "false"}
    # the stack's own load balancer fronts ServiceLB: the controller makes none of its own
    assert ccm["env"]["HCLOUD_LOAD_BALANCERS_ENABLED"] == {"value": "false"}
    config = yaml.safe_load(files_of(cluster("hcloud"), FIRST)[b.K3S_CONFIG])
    assert "servicelb" not in config.get("disable", [])
    aws = context(cloud="aws")
    assert "hcloud" not in objects(aws, "Secret")
    assert not any("hcloud" in name for name in manifests(aws))


@pytest.mark.parametrize(
    ("cloud", "provisioner"), [("hcloud", "csi.hetzner.cloud"), ("aws", "rancher.io/local-path")]
)
def test_storage_keeps_data_on_each_cloud(cloud: rel.Cloud, provisioner: str):
    ctx = context(cloud=cloud)
    [storage] = objects(ctx, "StorageClass").values()
    assert storage["provisioner"] == provisioner
    assert storage["reclaimPolicy"] == "Retain"
    assert storage["volumeBindingMode"] == "WaitForFirstConsumer"
    pg = objects(ctx, "StatefulSet")["postgres"]
    # a volume one service mounts: its StatefulSet's claim template, as always
    [claim] = pg["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "pgdata"
    assert claim["spec"]["storageClassName"] == storage["metadata"]["name"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pg["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    assert "volumes" not in pg["spec"]["template"]["spec"]
    assert "PersistentVolumeClaim" not in {d["kind"] for d in documents(ctx)}
    # hcloud: claims are Hetzner volumes only, so k3s's node-local default class is off.
    config = b.k3s_config(cluster(cloud), FIRST)
    assert (config.get("disable") == ["local-storage"]) == (cloud == "hcloud")


# --- the spec walked into the manifests ---------------------------------------------------------


def _container(ctx: Case, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    svc = ctx.app.services[name]
    kind = "StatefulSet" if svc.stateful else "Deployment"
    workload = objects(ctx, kind)[name]
    [container] = workload["spec"]["template"]["spec"]["containers"]
    return workload, container


@pytest.mark.parametrize("data", [EXAMPLE_DATA, SHAPES, None], ids=["example", "shapes", "all"])
def test_every_spec_field_reaches_the_manifests(data: dict[str, Any] | None):
    ctx = context(spec(data) if data is not None else everything())
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
        assert container.get("command") == (list(svc.entrypoint) if svc.entrypoint else None)
        assert [p["containerPort"] for p in container.get("ports", [])] == [
            p.target for p in svc.ports
        ]
        cpu = f"{round(svc.cpu * 1000)}m"
        mem = f"{svc.memory}Mi"
        assert container["resources"] == {
            "limits": {"cpu": cpu, "memory": mem},
            "requests": {"cpu": cpu, "memory": mem},
        }
        env = {e["name"]: e for e in container.get("env", [])}
        assert set(env) == set(svc.env) | set(svc.secret_env)
        resolved = rel.environment(app, name, ctx.secrets)
        for var, value in resolved.plain.items():
            assert k8s_expand(env[var]["value"], {}) == value
        for var, value in resolved.secret.items():
            ref = env[var]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": f"{name}-secret-env", "key": var}
            assert secrets[ref["name"]]["stringData"][var] == value
        mounts = [
            (m["name"], m["mountPath"], m.get("readOnly", False))
            for m in container.get("volumeMounts", [])
        ]
        files = sorted(svc.files, key=lambda f: f.path)
        assert mounts == [(m.volume, m.path, m.read_only) for m in svc.volumes] + [
            (rel.SECRET_FILES_VOLUME if f.secret else rel.FILES_VOLUME, f.path, True) for f in files
        ]
        pod = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        templates = {
            t["metadata"]["name"]: t for t in workload["spec"].get("volumeClaimTemplates", [])
        }
        for m in svc.volumes:
            size = {"requests": {"storage": f"{app.volumes[m.volume].size_gb}Gi"}}
            if m.volume in app.shared_volumes():
                claim = volumes[m.volume]["persistentVolumeClaim"]["claimName"]
                assert claim == rel.claim_name(app, m.volume) == f"{m.volume}-shared"
                assert objects(ctx, "PersistentVolumeClaim")[claim]["spec"]["resources"] == size
                assert m.volume not in templates
            else:
                assert m.volume not in volumes
                assert templates[m.volume]["spec"]["resources"] == size
                assert rel.claim_name(app, m.volume) == f"{m.volume}-{name}-0"
        for f, mount in zip(
            files, container.get("volumeMounts", [])[len(svc.volumes) :], strict=True
        ):
            assert mount["subPath"] == f.key
            source = volumes[mount["name"]]
            items = (source.get("configMap") or source["secret"])["items"]
            assert {"key": f.key, "path": f.key, "mode": f.mode_int} in items
            text = app.file_text(f, ctx.secrets, rel.address(app))
            if f.secret:
                holder = secrets[source["secret"]["secretName"]]
                assert holder["stringData"][f.key] == text
            else:
                configmap = objects(ctx, "ConfigMap")[source["configMap"]["name"]]
                assert configmap["data"][f.key] == text
        registry = app.registry_for(svc.image)
        assert pod.get("imagePullSecrets") == (
            [{"name": rel.REGISTRY_SECRET}] if registry else None
        )
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
            assert [(p["port"], p["targetPort"]) for p in services[name]["spec"]["ports"]] == [
                (p.port, p.target) for p in svc.ports
            ]
        # every declared dependency with ports is an allowed connection, both ways
        for dep in svc.depends_on:
            dep_ports = sorted(p.target for p in app.services[dep].ports)
            if not dep_ports:
                continue
            egress = policies[f"service-{name}"]["spec"]["egress"]
            assert {
                "to": [{"podSelector": {"matchLabels": rel._selector(app, dep)}}],
                "ports": [{"port": p, "protocol": "TCP"} for p in dep_ports],
            } in egress
            sources = [
                peer
                for rule in policies[f"service-{dep}"]["spec"]["ingress"]
                for peer in rule["from"]
            ]
            assert {"podSelector": {"matchLabels": rel._selector(app, name)}} in sources


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
        "selector": {"matchLabels": rel._selector(ctx.app, "web")},
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
                {"podSelector": {"matchLabels": rel._selector(app, u)}} for u in ("web", "worker")
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


def test_secret_values_only_in_the_secrets_and_never_in_user_data():
    app = spec()
    values = {n: f"s3cr3t-{n}" for n in app.secret_names()}
    case = context(app, secrets=values)
    for name, text in manifests(case).items():
        holds = [v for v in values.values() if v in text]
        assert sorted(holds) == (sorted(values.values()) if name == "app-secrets.yaml" else [])
    secrets = objects(case, "Secret")
    assert secrets["web-secret-env"]["stringData"] == {
        k: values[k] for k in ("DATABASE_PASSWORD", "DJANGO_SECRET_KEY")
    }
    assert secrets["postgres-secret-env"]["stringData"] == {
        "POSTGRES_PASSWORD": values["POSTGRES_PASSWORD"]
    }
    # the nodes' bootstrap knows no app at all
    for node in ALL_NODES:
        text = b.render_cloud_init(cluster(), node)
        assert not any(v in text for v in values.values())


def test_a_new_secret_value_is_a_new_pod_template():
    app = spec()
    values = {n: f"v-{n}" for n in app.secret_names()}
    digest = {
        name: rel.secrets_digest("deploy-key", app, name, values)
        for name, svc in app.sorted_services()
        if svc.secret_env
    }
    assert set(digest) == {"postgres", "web", "worker"}
    objs = {
        o["metadata"]["name"]: o
        for o in rel.app_objects(app, "hcloud", digest)
        if o["kind"] in ("Deployment", "StatefulSet")
    }
    for name in app.services:
        annotations = objs[name]["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get(rel.SECRETS_DIGEST) == digest.get(name)
    # a new value changes only the digest of the services reading it; it reveals no value
    other = {**values, "POSTGRES_PASSWORD": "changed"}
    assert rel.secrets_digest("deploy-key", app, "postgres", other) != digest["postgres"]
    assert rel.secrets_digest("deploy-key", app, "web", other) == digest["web"]
    assert not any(v in d for d in digest.values() for v in values.values())
    # keyed: another stack's key gives other digests for the same values
    assert rel.secrets_digest("other-key", app, "web", values) != digest["web"]


def test_no_file_of_the_user_data_is_secret():
    for node in ALL_NODES:
        files = b.render_node_files(cluster(), node)
        for path in files:
            expected = "0755" if path.startswith(SCRIPTS) else "0644"
            assert b.file_permissions(path) == expected, path
        assert b.TOKEN_FILE not in files
        assert not any(p.startswith("/var/lib/rancher") or p.endswith(".key") for p in files)


def test_missing_secret_is_named():
    app = spec()
    with pytest.raises(
        ValueError, match=r"secret POSTGRES_PASSWORD \(secret_env of service postgres\)"
    ):
        rel.secret_objects(app, {"DATABASE_PASSWORD": "a", "DJANGO_SECRET_KEY": "b"})


# --- k3s on the nodes ---------------------------------------------------------------------------


def test_k3s_config_per_role():
    timing = b.Timing(
        node_monitor_grace_period=20, not_ready_toleration=15, unreachable_toleration=25
    )
    ctx = cluster(timing=timing)
    first = yaml.safe_load(files_of(ctx, FIRST)[b.K3S_CONFIG])
    # how a node reaches the cluster is decided at its first start (k3s-node-ready)
    assert "server" not in first and "cluster-init" not in first
    assert first["node-ip"] == first["advertise-address"] == "10.0.1.10"
    assert first["node-name"] == "shop-k8s-cp-1"
    assert first["token-file"] == b.TOKEN_FILE
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
    joining = yaml.safe_load(files_of(ctx, JOINING)[b.K3S_CONFIG])
    assert "server" not in joining
    assert joining["kube-apiserver-arg"] == first["kube-apiserver-arg"]
    agent = yaml.safe_load(files_of(ctx, AGENT)[b.K3S_CONFIG])
    assert agent == {
        "node-name": "shop-k8s-worker-1",
        "node-ip": "10.0.1.13",
        "token-file": b.TOKEN_FILE,
        "kubelet-arg": ["cloud-provider=external"],
    }
    aws_first = b.k3s_config(cluster("aws"), FIRST)
    assert not {"disable-cloud-controller", "kubelet-arg", "disable"} & set(aws_first)
    assert b.Timing(30, 30, 30).eviction_after == 60


def test_what_k3s_node_ready_learns_from_the_bootstrap():
    """node.json: who the node is, whom it joins through; no secret, no CA, no manifest."""
    configs = {n.name: json.loads(files_of(cluster(), n)[b.NODE_CONFIG]) for n in ALL_NODES}
    api = "https://{}:6443"
    first = configs["shop-k8s-cp-1"]
    assert first["first"] is True and first["role"] == "server"
    assert first["peers"] == [api.format("10.0.1.11"), api.format("10.0.1.12")]
    assert first["local_api"] == "https://127.0.0.1:6443"
    assert first["etcd_s3_dropin"] == b.ETCD_S3_DROPIN and first["unit"] == "k3s.service"
    assert first["nodes"] == [n.name for n in ALL_NODES]
    # a node is back once the app's workloads are back too
    assert first["app_namespace"] == "shop"
    cp2 = configs["shop-k8s-cp-2"]
    assert cp2["first"] is False
    assert cp2["peers"] == [api.format("10.0.1.10"), api.format("10.0.1.12")]
    worker = configs["shop-k8s-worker-1"]
    assert worker["role"] == "agent" and worker["first"] is False
    assert worker["peers"] == [api.format(ip) for ip in ("10.0.1.10", "10.0.1.11", "10.0.1.12")]
    assert worker["local_api"] is None and worker["etcd_s3_dropin"] is None
    assert worker["unit"] == "k3s-agent.service"
    for node in ALL_NODES:
        files = files_of(cluster(), node)
        assert not [p for p in files if p.startswith(("/var/lib/rancher", b.TLS_DIR))]
        assert b.INSTALL_NODE_READY in files and b.NODE_READY not in files
        unit = files[UNITS + b.unit_name(node)]
        # k3s starts only once k3s-node-ready has written the token and the join decision
        assert f"ConditionPathExists={b.TOKEN_FILE}\n" in unit
        assert f"ConditionPathExists={b.JOIN_DROPIN}\n" in unit


def test_the_ready_command_document_carries_the_secrets_exactly():
    """What Pulumi sends on stdin: JSON, so hostile values come back byte for byte."""
    token = "t'o\"k$(id)\nen"
    doc = json.loads(
        node_document(
            ["ssh-ed25519 AAAA a@b ", "ssh-rsa BBBB c@d"],
            token,
            "CA",
            "CERT",
            "KEY",
            {"server-ca.key": "K"},
            {"etcd-s3": True},
        )
    )
    assert doc == {
        "admin_keys": "ssh-ed25519 AAAA a@b\nssh-rsa BBBB c@d\n",
        "token": token,
        "ca": "CA",
        "client_cert": "CERT",
        "client_key": "KEY",
        "pki": {"server-ca.key": "K"},
        "etcd_s3": {"etcd-s3": True},
    }
    assert json.loads(node_document([], "t", "", "", "", None, None))["pki"] is None


@pytest.mark.parametrize("cloud", ["hcloud", "aws"])
@pytest.mark.parametrize("node", sorted(NODES))
def test_cloud_init_schema_accepts_user_data(cloud: rel.Cloud, node: str, tmp_path: Path):
    validators.cloud_init_schema(b.render_cloud_init(cluster(cloud), NODES[node]), tmp_path)


def test_cloud_init_contents():
    ctx = cluster()
    data = yaml.safe_load(b.render_cloud_init(ctx, FIRST))
    assert data["ssh_pwauth"] is False and data["disable_root"] is True
    [user] = data["users"]
    # the deploy key only: the admins' keys arrive over SSH (k3s-node-ready)
    assert user["name"] == "deploy" and user["ssh_authorized_keys"] == [DEPLOY_KEY]
    files = b.render_node_files(ctx, FIRST)
    assert {f["path"]: f["content"] for f in data["write_files"]} == files
    assert {f["path"]: f["permissions"] for f in data["write_files"]} == {
        p: b.file_permissions(p) for p in files
    }
    assert data["runcmd"] == [
        *bootstrap_guard(),
        "systemctl try-reload-or-restart ssh.service",
        SCRIPTS + "install-k3s",
        "systemctl daemon-reload",
        "systemctl enable k3s.service",
    ]
    agent = yaml.safe_load(b.render_cloud_init(ctx, AGENT))
    assert agent["runcmd"][-1] == "systemctl enable k3s-agent.service"
    assert "python3" in agent["packages"]  # k3s-node-ready runs on the system Python


def test_every_script_passes_shellcheck(tmp_path: Path):
    files = files_of(cluster(), FIRST)
    found = {p: t for p, t in files.items() if p.startswith(SCRIPTS)}
    assert set(found) == {
        SCRIPTS + "install-k3s",
        SCRIPTS + "install-k3s-node-ready",
        SCRIPTS + "install-packages",
        SCRIPTS + "k3s-flannel-iface",
    }
    for path, text in found.items():
        assert text.startswith("#!/bin/bash\n")
        target = tmp_path / Path(path).name
        target.write_text(text)
        validators.shellcheck(target, "bash")


@pytest.mark.parametrize("node", ["first", "agent"])
def test_units_pass_systemd_analyze_verify(node: str, tmp_path: Path):
    files = files_of(cluster(), NODES[node])
    units = {p: t for p, t in files.items() if p.startswith(UNITS)}
    root = validators.systemd_root(units, tmp_path / "root", executable=[])
    for binary in (b.K3S_BINARY, "/usr/sbin/modprobe"):  # installed at boot / in the image
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
        render_template("k8s/install-k3s.sh.j2", version=K3S_VERSION, binary=str(target))
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


IP_ADDR = """1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth0    inet 203.0.113.9/32 metric 100 scope global dynamic eth0\\       valid_lft 86000sec
3: enp7s0    inet 10.0.1.13/32 brd 10.0.1.13 scope global dynamic enp7s0\\       valid_lft 86000sec
"""


def _flannel(tmp_path: Path, ip_output: str, wait: int = 120) -> subprocess.CompletedProcess:
    """Runs the worker's k3s-flannel-iface with a stand-in `ip` printing ip_output once the
    script has asked twice (the private network comes up late)."""
    files = files_of(cluster("hcloud"), AGENT)
    text = files[f"{b.SCRIPTS}/{b.FLANNEL_SCRIPT}"]
    dropin = tmp_path / "config.yaml.d" / "40-blueprints-flannel.yaml"
    config = tmp_path / "config.yaml"
    config.write_text(files[b.K3S_CONFIG])  # the worker's own, with node-ip 10.0.1.13
    text = (
        text.replace(b.FLANNEL_DROPIN, str(dropin))
        .replace(f"config={b.K3S_CONFIG}\n", f"config={config}\n")
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
        files = files_of(cluster("hcloud"), node)
        unit = next(t for p, t in files.items() if p.startswith(b.UNITS) and "k3s" in p)
        assert f"ExecStartPre={b.SCRIPTS}/{b.FLANNEL_SCRIPT}\n" in unit
        # one script for every node: the address comes from the node's k3s config
        assert (
            files[f"{b.SCRIPTS}/{b.FLANNEL_SCRIPT}"]
            == files_of(cluster("hcloud"), FIRST)[f"{b.SCRIPTS}/{b.FLANNEL_SCRIPT}"]
        )
        assert yaml.safe_load(files[b.K3S_CONFIG])["node-ip"] == node.private_ip


def test_flannel_without_the_private_address_fails_the_start(tmp_path: Path):
    proc = _flannel(tmp_path, IP_ADDR.replace("10.0.1.13", "10.0.1.99"), wait=4)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "k3s-flannel-iface: no interface holds 10.0.1.13 after 4s; is the server attached to "
        "the private network?"
    )
    assert not (tmp_path / "config.yaml.d" / "40-blueprints-flannel.yaml").exists()


# --- spec rules of this blueprint -------------------------------------------------------------


def test_check_app_accepts_the_example_and_the_minimal_app():
    assert rules.check_app(spec()) == [] and rules.check_app(spec(MINIMAL)) == []


def test_check_app_names_each_problem():
    data = copy.deepcopy(EXAMPLE_DATA)
    data["name"] = "kube-system"
    data["services"]["redis"]["ports"] = [{"port": 6379, "expose": "tcp", "public_port": 16379}]
    data["services"]["redis-public"] = {"image": "busybox:1.36"}
    data["services"]["web"]["env"]["BAD"] = "a\0b"
    problems = rules.check_app(spec(data))
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
        (("services", "web", "env", "BAD"), rules.NUL_MESSAGE),
    ]
    with pytest.raises(ValueError, match="kube-system"):
        rel.app_objects(spec(data), "hcloud")


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
    # in the spec, ${ starts a reference and $${ is a literal ${
    web["env"] = {f"NASTY_{i}": v.replace("${", "$${") for i, v in enumerate(NASTY)}
    web["command"] = list(NASTY)
    web["health"]["path"] = "/h'\"$(touch)`id`${HOME}%6e;&|<>*?~!#"
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
    for i, value in enumerate(NASTY):
        assert k8s_expand(env[f"NASTY_{i}"]["value"], {"HOME": "/root"}) == value
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
    data = yaml.safe_load(b.render_cloud_init(cluster(), FIRST))
    assert {f["path"]: f["content"] for f in data["write_files"]} == files_of(cluster(), FIRST)


def test_hostile_values_in_the_new_fields_change_no_structure_and_round_trip():
    """Entrypoint, task and schedule commands, file contents, a registry user and secret values
    (interpolated into env and files) come back exactly, in the same objects."""
    clean = context(everything())
    data = yaml.safe_load(EVERYTHING.read_text())
    web = data["services"]["web"]
    web["entrypoint"] = list(NASTY)
    web["files"][0]["content"] = "".join(NASTY).replace("${", "$${")
    web["env"]["MIXED"] = "pw=${secrets.POSTGRES_PASSWORD};" + "|".join(NASTY).replace("${", "$${")
    data["tasks"]["migrate"]["command"] = list(NASTY)
    data["schedules"]["clear-sessions"]["command"] = list(NASTY)
    data["registries"]["ghcr.io"]["username"] = "u'\"$(id)`x` {y}"
    evil_app = parse_spec(data, str(EVERYTHING), EVERYTHING.parent)
    values = {n: f"{NASTY[i]}\n{NASTY[-i]}#{n}" for i, n in enumerate(evil_app.secret_names())}
    evil = context(evil_app, secrets=values)

    def shape(case: Case) -> list[tuple[str, str]]:
        # a task's Job is named after the release, which is another one
        names = [(d["kind"], d["metadata"]["name"]) for d in documents(case)]
        return [(k, n.rsplit("-", 1)[0] if k == "Job" else n) for k, n in names]

    assert shape(evil) == shape(clean)
    for doc in documents(evil):
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, SCHEMA_VERSION, strict=True)
    _, container = _container(evil, "web")
    assert [k8s_expand(a, {}) for a in container["command"]] == NASTY
    [job] = [j for n, j in objects(evil, "Job").items() if n.startswith("task-migrate-")]
    [task] = job["spec"]["template"]["spec"]["containers"]
    assert [k8s_expand(a, {}) for a in task["args"]] == NASTY
    cron = objects(evil, "CronJob")["schedule-clear-sessions"]
    [run] = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert [k8s_expand(a, {}) for a in run["args"]] == NASTY
    settings_file = evil_app.services["web"].files[0]
    configmap = objects(evil, "ConfigMap")["web-files"]
    assert configmap["data"][settings_file.key] == "".join(NASTY)
    secret = objects(evil, "Secret")["web-secret-env"]["stringData"]
    assert secret["MIXED"] == f"pw={values['POSTGRES_PASSWORD']};" + "|".join(NASTY)
    db_file = next(f for f in evil_app.services["web"].files if f.secret)
    assert (
        objects(evil, "Secret")["web-secret-files"]["stringData"][db_file.key]
        == (values["POSTGRES_PASSWORD"])
    )
    auth = json.loads(objects(evil, "Secret")["registry-auth"]["stringData"][".dockerconfigjson"])
    entry = auth["auths"]["ghcr.io"]
    assert (entry["username"], entry["password"]) == ("u'\"$(id)`x` {y}", values["GHCR_TOKEN"])
    assert base64.b64decode(entry["auth"]).decode() == f"{entry['username']}:{entry['password']}"


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
    text = rel.kubeconfig("shop-k8s", "https://203.0.113.7:6443", "CA-PEM", "CERT-PEM", "KEY-PEM")
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


# --- size -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cloud", ["hcloud", "aws"])
def test_user_data_is_small_and_holds_no_key(cloud: rel.Cloud):
    """No CA, no manifest, no token: every node's user data fits AWS's 16 KiB uncompressed,
    whatever the app (it holds none of it)."""
    for node in ALL_NODES:
        text = b.render_cloud_init(cluster(cloud), node)
        assert len(text.encode()) <= 13 * 1024, (node.name, len(text))
        assert "PRIVATE KEY" not in text and "BEGIN CERTIFICATE" not in text


# --- determinism and goldens ---------------------------------------------------------------------


def test_same_input_same_bytes():
    assert b.render_cloud_init(cluster(), FIRST) == b.render_cloud_init(cluster(), FIRST)
    data = copy.deepcopy(EXAMPLE_DATA)
    data["services"] = dict(reversed(list(data["services"].items())))
    for svc in data["services"].values():
        svc["env"] = dict(reversed(list(svc.get("env", {}).items())))
        svc["depends_on"] = list(reversed(svc.get("depends_on", [])))
        svc["secret_env"] = list(reversed(svc.get("secret_env", [])))
    assert manifests(context(spec(data))) == manifests(context())


GOLDEN_SETS = {
    **{
        f"{cloud}/{node}": (cloud, node)
        for cloud in ("hcloud", "aws")
        for node in ("first", "joining", "agent")
    },
    **{f"{cloud}/release": (cloud, None) for cloud in ("hcloud", "aws")},
    # every field of the spec (tests/everything/app.yaml)
    "hcloud/everything": ("hcloud", "everything"),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_SETS))
def test_golden_files(name: str, update_golden: bool):
    cloud, node = GOLDEN_SETS[name]
    if node is None:
        rendered = manifests(context(cloud=cloud))  # type: ignore[arg-type]
    elif node == "everything":
        rendered = manifests(context(everything(), cloud))  # type: ignore[arg-type]
    else:
        ctx = cluster(cloud)  # type: ignore[arg-type]
        rendered = {p.lstrip("/"): t for p, t in files_of(ctx, NODES[node]).items()}
        rendered["cloud-init.yaml"] = b.render_cloud_init(ctx, NODES[node])
    check_golden(GOLDEN / name, rendered, update_golden)


def test_golden_sets_are_exactly_the_rendered_ones(update_golden: bool):
    present = {f"{c.name}/{n.name}" for c in GOLDEN.iterdir() if c.is_dir() for n in c.iterdir()}
    check_no_stale_sets((GOLDEN / name for name in present - set(GOLDEN_SETS)), update_golden)


def test_golden_files_hold_only_placeholders():
    for path in GOLDEN.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert re.search(r"PASSWORD: (?!PLACEHOLDER-)", text) is None, path
            assert "PRIVATE KEY" not in text, path


def test_dump_yaml_keeps_manifest_text_readable():
    """valuesContent is YAML inside YAML: the serializer writes it as a block, and it reads back."""
    config = objects(context(), "HelmChartConfig")["traefik"]
    assert "valuesContent: |" in dump_yaml(config)


@pytest.mark.parametrize("cloud", ["hcloud", "aws"])
def test_no_yaml_anchors_or_aliases(cloud: rel.Cloud):
    """Every object is written out in full, as a person (and any YAML reader) expects."""
    texts = [*files_of(cluster(cloud), FIRST).values(), b.render_cloud_init(cluster(cloud), FIRST)]
    for text in [*texts, *manifests(context(spec(SHAPES), cloud)).values()]:
        assert re.search(r"[&*]id\d{3}", text) is None


# --- the spec's files, registries, shared volumes, tasks and schedules ------------------------


def test_a_secret_value_is_only_in_secrets():
    """A distinctive value of every secret (interpolated into env, files and the registry's
    credentials) appears in no object but a Secret."""
    app = everything()
    values = {n: f"Dist1nct-{n}-v4lue" for n in app.secret_names()}
    case = context(app, secrets=values)
    seen = set()
    for doc in documents(case):
        text = json.dumps(doc)
        found = {n for n, v in values.items() if v in text}
        if doc["kind"] != "Secret":
            assert not found, (doc["kind"], doc["metadata"]["name"], found)
        seen |= found
    assert seen == set(values)
    # DATABASE_URL is composed with a secret: the whole variable is in the Secret only
    web = objects(case, "Secret")["web-secret-env"]["stringData"]
    assert web["DATABASE_URL"] == (
        f"postgres://full:{values['POSTGRES_PASSWORD']}@postgres:5432/full"
    )
    for name in ("web-secret-env", "web-secret-files", "postgres-secret-files", "registry-auth"):
        assert name in objects(case, "Secret")


def test_a_changed_file_rolls_the_pods():
    app = everything()
    before = objects(context(app), "StatefulSet")["web"]["spec"]["template"]["metadata"]
    data = yaml.safe_load(EVERYTHING.read_text())
    data["services"]["web"]["files"][0]["content"] += "# changed\n"
    changed = parse_spec(data, str(EVERYTHING), EVERYTHING.parent)
    after = objects(context(changed), "StatefulSet")["web"]["spec"]["template"]["metadata"]
    assert before["annotations"][rel.FILES_DIGEST] != after["annotations"][rel.FILES_DIGEST]
    # a mode counts too; the services without files have no digest
    data["services"]["web"]["files"][0]["mode"] = "0440"
    moded = parse_spec(data, str(EVERYTHING), EVERYTHING.parent)
    third = objects(context(moded), "StatefulSet")["web"]["spec"]["template"]["metadata"]
    assert third["annotations"][rel.FILES_DIGEST] != after["annotations"][rel.FILES_DIGEST]
    worker = objects(context(app), "StatefulSet")["worker"]["spec"]["template"]["metadata"]
    assert rel.FILES_DIGEST not in worker.get("annotations", {})
    # a secret file: in the keyed secrets digest, which reveals nothing
    values = {n: f"v-{n}" for n in app.secret_names()}
    other = {**values, "POSTGRES_PASSWORD": "changed"}
    for name in ("postgres", "web", "worker"):
        one = rel.secrets_digest("key", app, name, values)
        assert one is not None and one != rel.secrets_digest("key", app, name, other)
        assert values["POSTGRES_PASSWORD"] not in one
    assert rel.secrets_digest("key", app, "redis", values) is None


def test_a_shared_volume_is_one_claim_and_its_users_run_on_one_node():
    case = context(everything())
    app = case.app
    claims = objects(case, "PersistentVolumeClaim")
    # the shared volume only: postgres' volume stays its StatefulSet's claim template
    assert sorted(claims) == ["uploads-shared"]
    assert claims["uploads-shared"]["spec"]["resources"] == {"requests": {"storage": "5Gi"}}
    sts = objects(case, "StatefulSet")
    assert [t["metadata"]["name"] for t in sts["postgres"]["spec"]["volumeClaimTemplates"]] == [
        "pgdata"
    ]
    for name in ("web", "worker"):
        assert "volumeClaimTemplates" not in sts[name]["spec"]
        assert "persistentVolumeClaimRetentionPolicy" not in sts[name]["spec"]
    label = f"{rel.VOLUME_LABEL}uploads"
    term = {
        "labelSelector": {"matchLabels": {rel.LABEL_INSTANCE: "full", label: "mounted"}},
        "topologyKey": "kubernetes.io/hostname",
    }
    pods = {name: sts["spec"]["template"] for name, sts in objects(case, "StatefulSet").items()}
    pods |= {n: j["spec"]["template"] for n, j in objects(case, "Job").items()}
    pods |= {
        n: c["spec"]["jobTemplate"]["spec"]["template"]
        for n, c in objects(case, "CronJob").items()
        if n.startswith("schedule-")
    }
    users = [n for n in pods if n != "postgres"]
    assert len(users) == 6  # web, worker, two tasks, two schedules
    for name in users:
        pod = pods[name]
        assert pod["metadata"]["labels"][label] == "mounted", name
        affinity = pod["spec"]["affinity"]["podAffinity"]
        assert affinity["requiredDuringSchedulingIgnoredDuringExecution"] == [term], name
        [claim] = [
            v["persistentVolumeClaim"]["claimName"]
            for v in pod["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        ]
        assert claim == "uploads-shared"
    # the second user is worker, read-only
    _, worker = _container(case, "worker")
    assert worker["volumeMounts"] == [
        {"name": "uploads", "mountPath": "/srv/uploads", "readOnly": True}
    ]
    # postgres mounts its volume alone: no affinity
    assert "affinity" not in pods["postgres"]["spec"]
    notes = rel.volume_notes(app)
    assert notes[0].startswith(
        "services web and worker share volume uploads, so they run on one node"
    )
    # backed up once, with its first user: worker has no backup of its own
    backups = {o["metadata"]["name"] for o in rel.backup_objects(app) if o["kind"] == "CronJob"}
    assert backups == {"backup-check", "backup-postgres", "backup-web"}


def test_a_registry_secret_for_the_pods_pulling_from_it():
    case = context(everything())
    [secret] = [s for n, s in objects(case, "Secret").items() if n == rel.REGISTRY_SECRET]
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    config = json.loads(secret["stringData"][".dockerconfigjson"])
    assert config["auths"]["ghcr.io"]["username"] == "full-bot"
    assert config["auths"]["ghcr.io"]["password"] == case.secrets["GHCR_TOKEN"]
    pulls = {
        d["metadata"]["name"]: d
        for d in documents(case)
        if d["kind"] in ("Deployment", "StatefulSet", "Job", "CronJob")
    }
    for name, doc in pulls.items():
        spec = (doc["spec"].get("jobTemplate") or doc)["spec"]["template"]["spec"]
        image = spec["containers"][0]["image"]
        expected = [{"name": "registry-auth"}] if image.startswith("ghcr.io/") else None
        assert spec.get("imagePullSecrets") == expected, name
    # backup pods run public images of their own
    for obj in rel.backup_objects(case.app):
        if obj["kind"] == "CronJob":
            pod = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            assert "imagePullSecrets" not in pod
    # Docker Hub's key is the one docker and kubelet look up
    data = yaml.safe_load(EVERYTHING.read_text())
    data["registries"]["docker.io"] = {"username": "me", "password": "${secrets.HUB}"}
    hub = parse_spec(data, str(EVERYTHING), EVERYTHING.parent)
    secret = rel.registry_secret(hub, {**case.secrets, "HUB": "h"})
    assert secret is not None
    auths = json.loads(secret["stringData"][".dockerconfigjson"])["auths"]
    assert sorted(auths) == ["ghcr.io", "https://index.docker.io/v1/"]
    pod = objects(context(hub), "StatefulSet")["postgres"]["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry-auth"}]


def test_tasks_are_jobs_and_schedules_are_cron_jobs():
    case = context(everything())
    app = case.app
    docs = documents(case)
    jobs = objects(case, "Job")
    assert [n.rsplit("-", 1)[0] for n in jobs] == ["task-migrate", "task-seed"]
    # one release, one suffix; another release, another one
    assert len({n.rsplit("-", 1)[1] for n in jobs}) == 1
    for name, job in jobs.items():
        task = app.tasks[name.split("-")[1]]
        assert job["spec"]["backoffLimit"] == 0
        assert job["spec"]["activeDeadlineSeconds"] == task.timeout
        # kept (no TTL: a refresh would drop a deleted Job and run the task again); a failed
        # one is run again at the next `pulumi up`
        assert "ttlSecondsAfterFinished" not in job["spec"]
        assert job["metadata"]["annotations"] == {"pulumi.com/replaceUnready": "true"}
        pod = job["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        [container] = pod["containers"]
        assert container["args"] == task.command
        assert container["command"] == app.services[task.service].entrypoint
        assert "livenessProbe" not in container and "ports" not in container
        # the service's environment and files
        _, svc_container = _container(case, task.service)
        assert container["env"] == svc_container["env"]
        assert container["volumeMounts"] == svc_container["volumeMounts"]
        labels = job["spec"]["template"]["metadata"]["labels"]
        assert rel.LABEL_NAME not in labels and labels[rel.RUNS_OF] == task.service
    assert jobs[next(iter(jobs))]["spec"]["activeDeadlineSeconds"] == 300
    # in order: what the tasks need, the tasks, then the rest
    order = [(d["kind"], d["metadata"]["name"]) for d in docs]
    first_job = order.index(("Job", next(iter(jobs))))
    assert order.index(("StatefulSet", "postgres")) < first_job
    assert order.index(("Deployment", "redis")) < first_job
    assert order.index(("StatefulSet", "web")) > first_job
    assert rel.before_tasks(app) == {"postgres", "redis"}
    changed = app.model_copy(
        update={
            "services": {
                **app.services,
                "redis": app.services["redis"].model_copy(update={"image": "redis:7.4.1-alpine"}),
            }
        }
    )
    assert sorted(objects(context(changed), "Job")) != sorted(jobs)
    crons = objects(case, "CronJob")
    assert sorted(n for n in crons if n.startswith("schedule-")) == [
        "schedule-clear-sessions",
        "schedule-report",
    ]
    for sname, schedule in app.schedules.items():
        cron = crons[f"schedule-{sname}"]["spec"]
        assert cron["schedule"] == schedule.cron
        assert cron["timeZone"] == "Etc/UTC" and cron["concurrencyPolicy"] == "Forbid"
        assert cron["jobTemplate"]["spec"]["activeDeadlineSeconds"] == schedule.timeout
        [container] = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        assert container["args"] == schedule.command
        _, svc_container = _container(case, schedule.service)
        assert container["env"] == svc_container["env"]
    assert crons["schedule-report"]["spec"]["schedule"] == app.schedules["report"].cron
    # the runs reach what their service depends on, nothing else
    policies = objects(case, "NetworkPolicy")
    runs = policies["runs-web"]["spec"]
    assert runs["podSelector"] == {"matchLabels": {rel.LABEL_INSTANCE: "full", rel.RUNS_OF: "web"}}
    assert runs["egress"] == policies["service-web"]["spec"]["egress"]
    pg_in = policies["service-postgres"]["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": runs["podSelector"]["matchLabels"]}} in pg_in


def test_ports_map_the_service_port_to_the_container_port():
    case = context(everything())
    redis = objects(case, "Service")["redis"]["spec"]["ports"]
    assert redis == [{"name": "tcp-6380", "port": 6380, "targetPort": 6379, "protocol": "TCP"}]
    _, container = _container(case, "redis")
    assert container["ports"] == [{"containerPort": 6379, "protocol": "TCP"}]
    assert container["livenessProbe"]["tcpSocket"] == {"port": 6379}
    _, web = _container(case, "web")
    assert web["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 80}
    [ingress] = objects(case, "Ingress").values()
    [path] = ingress["spec"]["rules"][0]["http"]["paths"]
    assert path["backend"]["service"]["port"] == {"number": 8080}
    # policies see the pod's port
    web_in = objects(case, "NetworkPolicy")["service-web"]["spec"]["ingress"]
    assert web_in[0]["ports"] == [{"port": 80, "protocol": "TCP"}]
    # a reference reaches the Service's port (a headless one's: the container's)
    env = {e["name"]: e.get("value") for e in web["env"]}
    assert env["REDIS_URL"] == "redis://redis:6380/0"


@pytest.mark.parametrize(
    ("kind", "name", "message"),
    [
        (
            "tasks",
            "t" * 50,
            f"tasks.{'t' * 50}: it runs as the Job task-{'t' * 50}-<8 hex of the release>, and "
            "Kubernetes limits Job names to 63 characters; shorten the name to 49 characters or "
            "fewer",
        ),
        (
            "schedules",
            "s" * 44,
            f"schedules.{'s' * 44}: it runs as the CronJob schedule-{'s' * 44}, and Kubernetes "
            "limits CronJob names to 52 characters; shorten the name to 43 characters or fewer",
        ),
    ],
)
def test_task_and_schedule_names_must_fit_their_jobs(kind: str, name: str, message: str):
    data = yaml.safe_load(EVERYTHING.read_text())
    data[kind][name] = data[kind].pop(next(iter(data[kind])))
    app = parse_spec(data, str(EVERYTHING), EVERYTHING.parent)
    with pytest.raises(ValueError) as exc:
        rel.app_objects(app, "hcloud")
    assert str(exc.value) == message
    ok = dict(data)
    ok[kind] = {name[:-1]: data[kind][name]}
    assert rules.check_app(parse_spec(ok, str(EVERYTHING), EVERYTHING.parent)) == []


def test_everything_passes_the_rules_and_renders_the_same_bytes():
    assert rules.check_app(everything()) == []
    assert manifests(context(everything())) == manifests(context(everything()))


def test_a_shared_claims_name_does_not_follow_its_users():
    """`<volume>-shared` whoever mounts it: a user added before the first one by name changes
    nothing (the claim, its backup's owner aside)."""
    data = yaml.safe_load(EVERYTHING.read_text())
    data["services"]["aaa"] = {
        "image": "ghcr.io/example/full-web:2.0.1",
        "volumes": [{"volume": "uploads", "path": "/srv/uploads", "read_only": True}],
    }
    app = parse_spec(data, str(EVERYTHING), EVERYTHING.parent)
    assert app.volume_users("uploads") == ["aaa", "web", "worker"]
    assert rel.claim_name(app, "uploads") == rel.claim_name(everything(), "uploads")
    assert sorted(objects(context(app), "PersistentVolumeClaim")) == ["uploads-shared"]


def test_a_task_mounting_its_services_own_volume_mounts_a_claim_of_its_own():
    """A volume one service mounts, whose service has tasks and schedules: a claim of its own
    named as the StatefulSet's template names it (the StatefulSet, unchanged, uses it), created
    before the tasks; the task runs before the service rolls out, every pod mounting the claim
    carries the volume's label and runs beside the others (the plan says so, and how an
    existing stack imports the claim)."""
    data = yaml.safe_load(EVERYTHING.read_text())
    del data["services"]["worker"]["volumes"]  # uploads: web's alone
    app = parse_spec(data, str(EVERYTHING), EVERYTHING.parent)
    case = context(app)
    for doc in documents(case):
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, SCHEMA_VERSION, strict=True)
    claims = objects(case, "PersistentVolumeClaim")
    assert sorted(claims) == ["uploads-web-0"]
    claim = claims["uploads-web-0"]
    web = objects(case, "StatefulSet")["web"]
    # the StatefulSet keeps its claim template: the claim is the one it would create
    [template] = web["spec"]["volumeClaimTemplates"]
    assert template["metadata"]["name"] == "uploads"
    assert claim["spec"] == template["spec"]
    assert claim["metadata"]["labels"] == template["metadata"]["labels"]
    assert rel.own_claims(app) == [("web", "uploads")]
    label = {f"{rel.VOLUME_LABEL}uploads": "mounted"}
    term = {
        "labelSelector": {"matchLabels": {rel.LABEL_INSTANCE: "full", **label}},
        "topologyKey": "kubernetes.io/hostname",
    }
    affinity = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    pod = web["spec"]["template"]
    assert pod["metadata"]["labels"].items() >= label.items()
    assert pod["spec"]["affinity"] == affinity
    assert "volumes" not in pod["spec"] or not any(
        "persistentVolumeClaim" in v for v in pod["spec"]["volumes"]
    )
    runs = [j["spec"]["template"] for j in objects(case, "Job").values()]
    runs.append(
        objects(case, "CronJob")["schedule-clear-sessions"]["spec"]["jobTemplate"]["spec"][
            "template"
        ]
    )
    assert len(runs) == 3
    for run in runs:
        volumes = {v["name"]: v for v in run["spec"]["volumes"]}
        assert volumes["uploads"]["persistentVolumeClaim"] == {"claimName": "uploads-web-0"}
        assert run["metadata"]["labels"].items() >= label.items()
        # and, preferred, the node of web's pods (of a version from before the label)
        preferred = {
            "weight": 100,
            "podAffinityTerm": {
                "labelSelector": {
                    "matchLabels": {rel.LABEL_INSTANCE: "full", rel.LABEL_NAME: "web"}
                },
                "topologyKey": "kubernetes.io/hostname",
            },
        }
        assert run["spec"]["affinity"] == {
            "podAffinity": {
                **affinity["podAffinity"],
                "preferredDuringSchedulingIgnoredDuringExecution": [preferred],
            }
        }
    report = objects(case, "CronJob")["schedule-report"]["spec"]["jobTemplate"]["spec"]
    assert "affinity" not in report["template"]["spec"]
    # the claim first, then the tasks, then web rolls out (after its tasks, like every other)
    assert rel.before_tasks(app) == {"postgres", "redis"}
    order = [(d["kind"], d["metadata"]["name"]) for d in documents(case)]
    first_job = next(i for i, (kind, _) in enumerate(order) if kind == "Job")
    assert order.index(("PersistentVolumeClaim", "uploads-web-0")) < first_job
    assert order.index(("StatefulSet", "web")) > first_job
    assert order.index(("Deployment", "worker")) > first_job
    # the component creates the StatefulSet after the claim it creates itself
    assert ("PersistentVolumeClaim", "uploads-web-0") in rel.references_of(web)
    notes = rel.volume_notes(app, "prod")
    [note] = notes
    assert note.startswith(
        "task migrate, task seed and schedule clear-sessions mount service web's volume "
        "uploads, so its claim uploads-web-0"
    )
    assert "AlreadyExists" in note and "4.29" in note
    assert (
        "`pulumi import kubernetes:core/v1:PersistentVolumeClaim "
        "full-prod-persistentvolumeclaim-full-uploads-web-0 full/uploads-web-0 "
        "--parent 'app=urn:pulumi:prod::blueprints::blueprints:index:K8s::full' "
        "--provider 'kubernetes=urn:pulumi:prod::blueprints::blueprints:index:K8s"
        "$pulumi:providers:kubernetes::full-prod-kubernetes'`"
    ) in note
    # postgres has no task: its claim stays the StatefulSet's, without label or affinity
    postgres = objects(case, "StatefulSet")["postgres"]["spec"]["template"]
    assert "affinity" not in postgres["spec"]
    assert not any(k.startswith(rel.VOLUME_LABEL) for k in postgres["metadata"]["labels"])
    # the example app has no shared volume and no task: no claim object, no note
    assert rel.volume_notes(spec()) == []


def test_new_secret_values_are_a_new_task_job_template():
    """The Jobs keep the release's name (the same in a plan and a render), and the keyed
    digests of the secret values are folded into their pod template: a fixed secret replaces
    the Job, which runs the task again."""
    app = everything()

    def jobs(secrets):
        digests = {
            name: rel.secrets_digest("key", app, name, secrets)
            for name, _ in app.sorted_services()
            if rel.has_secrets(app, name)
        }
        return {
            o["metadata"]["name"]: o
            for o in rel.app_objects(app, "hcloud", digests)
            if o["kind"] == "Job"
        }

    secrets = {n: f"value-{n}" for n in app.secret_names()}
    before = jobs(secrets)
    after = jobs({**secrets, "POSTGRES_PASSWORD": "fixed"})
    plain = {o["metadata"]["name"] for o in rel.app_objects(app, "hcloud") if o["kind"] == "Job"}
    assert set(before) == set(after) == plain
    for name in plain:
        was = before[name]["spec"]["template"]["metadata"]["annotations"][rel.SECRETS_DIGEST]
        now = after[name]["spec"]["template"]["metadata"]["annotations"][rel.SECRETS_DIGEST]
        assert was != now and len(now) == 16
        assert "value-" not in json.dumps(before[name]) and "fixed" not in json.dumps(after[name])
    assert jobs(secrets) == before
