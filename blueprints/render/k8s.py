"""The k8s blueprint's nodes: k3s on six VMs, and the app as Kubernetes manifests.

Pure functions of the app spec plus a few facts about the cluster (its nodes' private
addresses, the join token, the cluster's certificate authorities, failure timing). The Pulumi
component wires the texts into servers; `blueprints render` writes the same files to disk.

What lands where:
- every node: SSH hardening, unattended upgrades, the pinned k3s binary (installed by a script
  that checks the release's checksum), /etc/rancher/k3s/config.yaml (a serializer's output),
  the join token in a root-only file, and the k3s systemd unit (server or agent);
- the first control plane additionally: the cluster's certificate authorities (so that the
  kubeconfig could be built without asking the cluster), a script deciding once whether it starts
  the cluster or joins the one its peers already run (a replaced first node must not found a
  second cluster), and the auto-deploy manifests: the app, cert-manager with its ACME issuer,
  Traefik's https redirect, a storage class, and per cloud the cloud's own add-ons.

The other nodes' files never depend on the app spec, so a spec change touches the first
control plane only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from blueprints.render.common import dump_yaml, render_template
from blueprints.render.single_vm import RenderedFile
from blueprints.render.vm import cloud_config, host_files, secret_values
from blueprints.spec import AppSpec, Port, Service, format_path

Problem = tuple[tuple[str | int, ...], str]
Cloud = Literal["hcloud", "aws"]

# k3s release, and the Kubernetes minor its manifests are validated against. Pinned so that a
# replaced node runs what its peers run.
K3S_VERSION = "v1.34.9+k3s1"
KUBERNETES_VERSION = "1.34.9"
# Helm charts installed through k3s's helm controller (HelmChart objects), pinned.
CERT_MANAGER = {"repo": "https://charts.jetstack.io", "chart": "cert-manager", "version": "v1.19.1"}
HCLOUD_CCM = {
    "repo": "https://charts.hetzner.cloud",
    "chart": "hcloud-cloud-controller-manager",
    "version": "1.25.1",
}
HCLOUD_CSI = {"repo": "https://charts.hetzner.cloud", "chart": "hcloud-csi", "version": "2.19.0"}
ACME_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
CLUSTER_ISSUER = "letsencrypt"
# k3s defaults: pod and service networks.
CLUSTER_CIDR = "10.42.0.0/16"
SERVICE_CIDR = "10.43.0.0/16"

SCRIPTS = "/usr/local/lib/blueprints"
UNITS = "/etc/systemd/system"
K3S_CONFIG_DIR = "/etc/rancher/k3s"
K3S_CONFIG = f"{K3S_CONFIG_DIR}/config.yaml"
TOKEN_FILE = f"{K3S_CONFIG_DIR}/token"
BOOTSTRAP_DROPIN = f"{K3S_CONFIG_DIR}/config.yaml.d/50-blueprints-bootstrap.yaml"
# Written at every start of k3s by k3s-flannel-iface: the private interface's name.
FLANNEL_DROPIN = f"{K3S_CONFIG_DIR}/config.yaml.d/40-blueprints-flannel.yaml"
FLANNEL_SCRIPT = "k3s-flannel-iface"
PRIVATE_NETWORK_WAIT_SECONDS = 120
TLS_DIR = "/var/lib/rancher/k3s/server/tls"
MANIFESTS = "/var/lib/rancher/k3s/server/manifests"
K3S_BINARY = "/usr/local/bin/k3s"
API_PORT = 6443
STOP_TIMEOUT_SECONDS = 30
# The app's pods run on the workers: the control planes only take cluster add-ons.
CONTROL_PLANE_TAINT = "CriticalAddonsOnly=true:NoExecute"
# Namespaces the cluster itself uses; the app's namespace is its name.
RESERVED_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease", "cert-manager")
# Where app pods may not send traffic except along declared dependencies: private networks (the
# nodes, pods and services) and link-local (the cloud metadata service, which hands out user
# data with the cluster's keys in it).
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16")
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED = "app.kubernetes.io/managed-by"


@dataclass(frozen=True)
class StorageClass:
    name: str
    provisioner: str
    parameters: Mapping[str, str] = field(default_factory=dict)
    expandable: bool = False


# Per cloud: where a PVC's data lives. Both keep the data when a claim is deleted (Retain).
STORAGE = {
    # A Hetzner Cloud volume per claim, attached to whichever node runs the pod.
    "hcloud": StorageClass("blueprints-hcloud", "csi.hetzner.cloud", expandable=True),
    # k3s's local-path provisioner: a directory on the node that first runs the pod, which pins
    # the pod to that node for good.
    "aws": StorageClass("blueprints-local", "rancher.io/local-path"),
}


@dataclass(frozen=True)
class K3sPki:
    """The certificate authorities k3s would otherwise generate at first start (PEM).

    Placed in /var/lib/rancher/k3s/server/tls on the first control plane before k3s starts, k3s
    adopts them; the admin kubeconfig is signed by client_ca outside the cluster.
    """

    server_ca_cert: str
    server_ca_key: str
    client_ca_cert: str
    client_ca_key: str
    request_header_ca_cert: str
    request_header_ca_key: str
    etcd_peer_ca_cert: str
    etcd_peer_ca_key: str
    etcd_server_ca_cert: str
    etcd_server_ca_key: str
    # Signs service account tokens; a key without a certificate.
    service_key: str

    def files(self) -> dict[str, str]:
        return {
            f"{TLS_DIR}/server-ca.crt": self.server_ca_cert,
            f"{TLS_DIR}/server-ca.key": self.server_ca_key,
            f"{TLS_DIR}/client-ca.crt": self.client_ca_cert,
            f"{TLS_DIR}/client-ca.key": self.client_ca_key,
            f"{TLS_DIR}/request-header-ca.crt": self.request_header_ca_cert,
            f"{TLS_DIR}/request-header-ca.key": self.request_header_ca_key,
            f"{TLS_DIR}/etcd/peer-ca.crt": self.etcd_peer_ca_cert,
            f"{TLS_DIR}/etcd/peer-ca.key": self.etcd_peer_ca_key,
            f"{TLS_DIR}/etcd/server-ca.crt": self.etcd_server_ca_cert,
            f"{TLS_DIR}/etcd/server-ca.key": self.etcd_server_ca_key,
            f"{TLS_DIR}/service.key": self.service_key,
        }


@dataclass(frozen=True)
class Timing:
    """How fast Kubernetes gives up on a dead node (seconds)."""

    node_monitor_grace_period: int = 30
    not_ready_toleration: int = 30
    unreachable_toleration: int = 30

    @property
    def eviction_after(self) -> int:
        """Seconds from a node's last heartbeat to its pods being evicted (either condition)."""
        return self.node_monitor_grace_period + max(
            self.not_ready_toleration, self.unreachable_toleration
        )


@dataclass(frozen=True)
class ClusterContext:
    """Facts about the cluster a node's files need, beyond the app spec (plain strings)."""

    app: AppSpec
    cloud: Cloud
    # The control planes' fixed private addresses; the first one bootstraps the cluster.
    server_ips: tuple[str, ...]
    token: str
    timing: Timing = field(default_factory=Timing)
    # Secret environment values by name (placeholders when rendering to disk).
    secrets: Mapping[str, str] = field(default_factory=dict)
    # Only the first control plane's files carry these.
    pki: K3sPki | None = None
    # hcloud: the API token and private network id for the cloud controller manager and CSI.
    cloud_token: str | None = None
    network_id: str | None = None

    @property
    def first_server(self) -> str:
        return self.server_ips[0]


@dataclass(frozen=True)
class K8sNode:
    """One VM: its cloud name (also its Kubernetes node name), role and private address."""

    name: str
    role: Literal["server", "agent"]
    private_ip: str


# --- spec rules -------------------------------------------------------------------------------

NUL_MESSAGE = "contains a NUL character, which no process can receive"


def check_app(app: AppSpec) -> list[Problem]:
    """Rules of the k8s blueprint on top of the spec's own, as (field path, message)."""
    problems: list[Problem] = []
    if app.name in RESERVED_NAMESPACES:
        problems.append(
            (
                ("name",),
                f"{app.name!r} is the name of a namespace the cluster uses itself, and the app "
                "runs in a namespace named after it; choose another name",
            )
        )
    for name, svc in app.sorted_services():
        base: tuple[str | int, ...] = ("services", name)
        public = f"{name}-public"
        if svc.public_tcp_ports and public in app.services:
            problems.append(
                (
                    (*base, "ports"),
                    f"its expose: tcp ports become a Service named {public}, which is also the "
                    "name of another service; rename one of them",
                )
            )
        for var, value in sorted(svc.env.items()):
            if "\0" in value:
                problems.append(((*base, "env", var), NUL_MESSAGE))
        for i, arg in enumerate(svc.command or []):
            if "\0" in arg:
                problems.append(((*base, "command", i), NUL_MESSAGE))
        if svc.health is not None:
            for i, arg in enumerate(svc.health.command or []):
                if "\0" in arg:
                    problems.append(((*base, "health", "command", i), NUL_MESSAGE))
            if "\0" in svc.health.path:
                problems.append(((*base, "health", "path"), NUL_MESSAGE))
    return problems


def _require_valid(app: AppSpec) -> None:
    problems = check_app(app)
    if problems:
        raise ValueError("\n".join(f"{format_path(path)}: {msg}" for path, msg in problems))


# --- the app as Kubernetes objects ------------------------------------------------------------


def escape_dollars(text: str) -> str:
    """Kubernetes expands $(VAR) in env values, command and args and reads $$ as one $; doubling
    every $ makes it hand over the text exactly as written."""
    return text.replace("$", "$$")


def _selector(app: AppSpec, name: str) -> dict[str, str]:
    return {LABEL_NAME: name, LABEL_INSTANCE: app.name}


def _labels(app: AppSpec, name: str) -> dict[str, str]:
    return {**_selector(app, name), LABEL_MANAGED: "blueprints"}


def _meta(app: AppSpec, name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": app.name, "labels": _labels(app, name), **extra}


def secret_name(service: str) -> str:
    return f"{service}-secret-env"


def _cpu(cores: float) -> str:
    return f"{max(1, round(cores * 1000))}m"


def _health_port(svc: Service) -> int | None:
    if svc.health is None:
        return None
    return svc.health.port or (svc.ports[0].port if svc.ports else None)


def _probe_handler(svc: Service) -> dict[str, Any]:
    health = svc.health
    assert health is not None
    if health.type == "http":
        return {"httpGet": {"path": health.path, "port": _health_port(svc)}}
    if health.type == "tcp":
        return {"tcpSocket": {"port": _health_port(svc)}}
    return {"exec": {"command": list(health.command or [])}}


def probes(svc: Service) -> dict[str, Any]:
    """The health check as Kubernetes probes.

    liveness: restart after `retries` consecutive failures, as the other blueprints do;
    readiness: out of the Service at the first failure, back at the first success;
    startup: the start period, during which failures do not count, plus the usual retries.
    """
    health = svc.health
    if health is None:
        return {}
    # A fresh handler per probe: a shared object would come out as a YAML anchor and alias.
    timing = {"periodSeconds": health.interval, "timeoutSeconds": health.timeout}
    return {
        "livenessProbe": {**_probe_handler(svc), **timing, "failureThreshold": health.retries},
        "readinessProbe": {
            **_probe_handler(svc),
            **timing,
            "failureThreshold": 1,
            "successThreshold": 1,
        },
        "startupProbe": {
            **_probe_handler(svc),
            **timing,
            "failureThreshold": math.ceil(health.start_period / health.interval) + health.retries,
        },
    }


def _container(app: AppSpec, name: str, svc: Service) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        {"name": var, "value": escape_dollars(value)} for var, value in sorted(svc.env.items())
    ]
    env += [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": secret_name(name), "key": var}}}
        for var in sorted(svc.secret_env)
    ]
    memory = f"{svc.memory}Mi"
    container: dict[str, Any] = {
        "name": name,
        "image": svc.image,
        # Requests equal limits: the scheduler reserves what the spec allows (Guaranteed QoS).
        "resources": {
            "limits": {"cpu": _cpu(svc.cpu), "memory": memory},
            "requests": {"cpu": _cpu(svc.cpu), "memory": memory},
        },
        **probes(svc),
    }
    if svc.command:
        # The spec's command replaces the image's CMD (as `docker run IMAGE CMD...`), which is
        # what Kubernetes calls args; the image's ENTRYPOINT stays.
        container["args"] = [escape_dollars(a) for a in svc.command]
    if env:
        container["env"] = env
    if svc.ports:
        container["ports"] = [{"containerPort": p.port, "protocol": "TCP"} for p in svc.ports]
    if svc.volumes:
        container["volumeMounts"] = [
            {"name": m.volume, "mountPath": m.path, **({"readOnly": True} if m.read_only else {})}
            for m in svc.volumes
        ]
    return container


def _pod_template(app: AppSpec, name: str, svc: Service) -> dict[str, Any]:
    annotations = {}
    if svc.depends_on:
        # Kubernetes starts every service at once and lets dependents retry (readiness keeps
        # them out of their Service until they answer); the dependencies show up here and in the
        # network policies that let exactly these connections through.
        annotations["blueprints.dev/depends-on"] = ",".join(sorted(svc.depends_on))
    metadata: dict[str, Any] = {"labels": _labels(app, name)}
    if annotations:
        metadata["annotations"] = annotations
    return {
        "metadata": metadata,
        "spec": {
            "containers": [_container(app, name, svc)],
            # The app does not talk to the Kubernetes API, and a service named like another's
            # environment (POSTGRES_PORT=tcp://...) must not leak into its variables.
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": STOP_TIMEOUT_SECONDS,
            # Spread replicas over the workers, but never leave one pending for it: a hard rule
            # would strand pods while a node is down.
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": _selector(app, name)},
                }
            ],
        },
    }


def _workload(app: AppSpec, name: str, svc: Service, storage: StorageClass) -> dict[str, Any]:
    template = _pod_template(app, name, svc)
    if not svc.stateful:
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(app, name),
            "spec": {
                "replicas": svc.replicas,
                "selector": {"matchLabels": _selector(app, name)},
                "template": template,
            },
        }
    claims = [
        {
            "metadata": {"name": m.volume, "labels": _labels(app, name)},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": storage.name,
                "resources": {"requests": {"storage": f"{app.volumes[m.volume].size_gb}Gi"}},
            },
        }
        for m in svc.volumes
    ]
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(app, name),
        "spec": {
            "replicas": svc.replicas,
            "serviceName": name,
            "selector": {"matchLabels": _selector(app, name)},
            "template": template,
            "volumeClaimTemplates": claims,
            # Claims (and so the data) outlive the StatefulSet and its scaling.
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": "Retain",
                "whenScaled": "Retain",
            },
        },
    }


def _service(app: AppSpec, name: str, svc: Service) -> dict[str, Any] | None:
    ports = [
        {"name": f"tcp-{p.port}", "port": p.port, "targetPort": p.port, "protocol": "TCP"}
        for p in svc.ports
    ]
    spec: dict[str, Any] = {"selector": _selector(app, name)}
    if svc.stateful:
        # The StatefulSet's governing Service: headless, so the name resolves to the pod.
        spec["clusterIP"] = "None"
    elif not ports:
        return None
    if ports:
        spec["ports"] = ports
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(app, name), "spec": spec}


def _public_tcp_service(app: AppSpec, name: str, svc: Service) -> dict[str, Any] | None:
    """expose: tcp ports, published on every worker by k3s's service load balancer and from
    there by the cloud load balancer."""
    if not svc.public_tcp_ports:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(app, f"{name}-public"),
        "spec": {
            "type": "LoadBalancer",
            "selector": _selector(app, name),
            "ports": [
                {
                    "name": f"tcp-{p.published}",
                    "port": p.published,
                    "targetPort": p.port,
                    "protocol": "TCP",
                }
                for p in svc.public_tcp_ports
            ],
        },
    }


def _pdb(app: AppSpec, name: str, svc: Service) -> dict[str, Any] | None:
    if svc.replicas < 2:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(app, name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(app, name)}},
    }


def _routes(app: AppSpec) -> dict[str, list[tuple[str, str, Port]]]:
    """host -> [(path, service, port)], most specific path first."""
    hosts: dict[str, list[tuple[str, str, Port]]] = {}
    for name, svc in app.sorted_services():
        for port in svc.public_http_ports:
            hosts.setdefault(port.host or app.domain, []).append((port.path, name, port))
    return {
        host: sorted(routes, key=lambda r: (-len(r[0]), r[0]))
        for host, routes in sorted(hosts.items())
    }


def _ingress(app: AppSpec) -> dict[str, Any] | None:
    routes = _routes(app)
    if not routes:
        return None
    rules = [
        {
            "host": host,
            "http": {
                "paths": [
                    {
                        "path": path,
                        "pathType": "Prefix",
                        "backend": {"service": {"name": svc, "port": {"number": port.port}}},
                    }
                    for path, svc, port in paths
                ]
            },
        }
        for host, paths in routes.items()
    ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": app.name,
            "namespace": app.name,
            "labels": {LABEL_INSTANCE: app.name, LABEL_MANAGED: "blueprints"},
            "annotations": {"cert-manager.io/cluster-issuer": CLUSTER_ISSUER},
        },
        "spec": {
            "ingressClassName": "traefik",
            "tls": [{"hosts": sorted(routes), "secretName": f"{app.name}-tls"}],
            "rules": rules,
        },
    }


def _from_traefik() -> dict[str, Any]:
    return {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {LABEL_NAME: "traefik"}},
    }


def _tcp(ports: list[int]) -> list[dict[str, Any]]:
    return [{"port": p, "protocol": "TCP"} for p in sorted(set(ports))]


def _policy_meta(app: AppSpec) -> dict[str, Any]:
    return {
        "namespace": app.name,
        "labels": {LABEL_INSTANCE: app.name, LABEL_MANAGED: "blueprints"},
    }


def _network_policies(app: AppSpec) -> list[dict[str, Any]]:
    """Default deny in and out; then per service exactly what the spec declares."""
    policies: list[dict[str, Any]] = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny", **_policy_meta(app)},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        },
        {
            # Name lookups go to the cluster's DNS.
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "allow-dns", **_policy_meta(app)},
            "spec": {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                                },
                                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                            }
                        ],
                        "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
                    }
                ],
            },
        },
        {
            # The internet, but neither the private networks nor the metadata service.
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "allow-internet", **_policy_meta(app)},
            "spec": {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [
                    {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": list(PRIVATE_RANGES)}}]}
                ],
            },
        },
    ]
    if _routes(app):
        # cert-manager answers Let's Encrypt's http-01 challenge from a pod in this namespace.
        policies.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "allow-acme-http01", **_policy_meta(app)},
                "spec": {
                    "podSelector": {"matchLabels": {"acme.cert-manager.io/http01-solver": "true"}},
                    "policyTypes": ["Ingress"],
                    "ingress": [{"from": [_from_traefik()], "ports": _tcp([8089])}],
                },
            }
        )
    dependents: dict[str, list[str]] = {}
    for name, svc in app.sorted_services():
        for dep in svc.depends_on:
            dependents.setdefault(dep, []).append(name)
    for name, svc in app.sorted_services():
        ingress: list[dict[str, Any]] = []
        http = [p.port for p in svc.public_http_ports]
        if http:
            ingress.append({"from": [_from_traefik()], "ports": _tcp(http)})
        tcp = [p.port for p in svc.public_tcp_ports]
        if tcp:
            # Published on the nodes by k3s's service load balancer: from anywhere.
            ingress.append({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": _tcp(tcp)})
        users = sorted(dependents.get(name, []))
        if users and svc.ports:
            ingress.append(
                {
                    "from": [{"podSelector": {"matchLabels": _selector(app, u)}} for u in users],
                    "ports": _tcp([p.port for p in svc.ports]),
                }
            )
        egress = [
            {
                "to": [{"podSelector": {"matchLabels": _selector(app, dep)}}],
                "ports": _tcp([p.port for p in app.services[dep].ports]),
            }
            for dep in sorted(svc.depends_on)
            if app.services[dep].ports
        ]
        if not ingress and not egress:
            continue
        spec: dict[str, Any] = {"podSelector": {"matchLabels": _selector(app, name)}}
        types = []
        if ingress:
            types.append("Ingress")
            spec["ingress"] = ingress
        if egress:
            types.append("Egress")
            spec["egress"] = egress
        spec["policyTypes"] = types
        policies.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": f"service-{name}", **_policy_meta(app)},
                "spec": spec,
            }
        )
    return policies


def app_objects(app: AppSpec, cloud: Cloud) -> list[dict[str, Any]]:
    """Every object of the app except its Secrets, in a stable order."""
    _require_valid(app)
    storage = STORAGE[cloud]
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": app.name,
                "labels": {LABEL_INSTANCE: app.name, LABEL_MANAGED: "blueprints"},
            },
        }
    ]
    for name, svc in app.sorted_services():
        objects.append(_workload(app, name, svc, storage))
        for extra in (
            _service(app, name, svc),
            _public_tcp_service(app, name, svc),
            _pdb(app, name, svc),
        ):
            if extra is not None:
                objects.append(extra)
    ingress = _ingress(app)
    if ingress is not None:
        objects.append(ingress)
    objects += _network_policies(app)
    return objects


def secret_objects(app: AppSpec, secrets: Mapping[str, str]) -> list[dict[str, Any]]:
    """One Secret per service with secret_env, holding exactly that service's values."""
    out = []
    for name, svc in app.sorted_services():
        if not svc.secret_env:
            continue
        values = secret_values(secrets, sorted(svc.secret_env), name)
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": _meta(app, secret_name(name)),
                "type": "Opaque",
                "stringData": values,
            }
        )
    return out


# --- cluster add-ons --------------------------------------------------------------------------


def _helm_chart(
    name: str,
    source: Mapping[str, str],
    target_namespace: str,
    values: dict[str, Any],
    *,
    bootstrap: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "repo": source["repo"],
        "chart": source["chart"],
        "version": source["version"],
        "targetNamespace": target_namespace,
        "createNamespace": True,
        "valuesContent": dump_yaml(values),
    }
    if bootstrap:
        # k3s's helm controller runs a bootstrap chart's install job on a control plane, on the
        # host network, tolerating the taints of a node not yet ready, without a pod network,
        # not yet initialised by the cloud provider, and CriticalAddonsOnly
        # (k3s-io/helm-controller, pkg/controllers/chart/chart.go, spec.bootstrap).
        spec["bootstrap"] = True
    return {
        "apiVersion": "helm.cattle.io/v1",
        "kind": "HelmChart",
        "metadata": {"name": name, "namespace": "kube-system"},
        "spec": spec,
    }


def storage_class(cloud: Cloud) -> dict[str, Any]:
    storage = STORAGE[cloud]
    out: dict[str, Any] = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": storage.name, "labels": {LABEL_MANAGED: "blueprints"}},
        "provisioner": storage.provisioner,
        # Deleting a claim keeps the volume: data is precious.
        "reclaimPolicy": "Retain",
        # Provisioned where the pod is scheduled (same location / same node).
        "volumeBindingMode": "WaitForFirstConsumer",
        "allowVolumeExpansion": storage.expandable,
    }
    if storage.parameters:
        out["parameters"] = dict(storage.parameters)
    return out


def addon_objects(ctx: ClusterContext) -> dict[str, list[dict[str, Any]]]:
    """Manifest file name -> objects for everything the cluster needs besides the app."""
    files: dict[str, list[dict[str, Any]]] = {
        "blueprints-storage.yaml": [storage_class(ctx.cloud)],
        "blueprints-cert-manager.yaml": [
            _helm_chart("cert-manager", CERT_MANAGER, "cert-manager", {"crds": {"enabled": True}})
        ],
        "blueprints-cluster-issuer.yaml": [
            {
                "apiVersion": "cert-manager.io/v1",
                "kind": "ClusterIssuer",
                "metadata": {"name": CLUSTER_ISSUER},
                "spec": {
                    "acme": {
                        "email": ctx.app.acme_email,
                        "server": ACME_DIRECTORY,
                        "privateKeySecretRef": {"name": f"{CLUSTER_ISSUER}-account-key"},
                        "solvers": [{"http01": {"ingress": {"ingressClassName": "traefik"}}}],
                    }
                },
            }
        ],
        # k3s's bundled Traefik: plain http only redirects to https.
        "blueprints-traefik-config.yaml": [
            {
                "apiVersion": "helm.cattle.io/v1",
                "kind": "HelmChartConfig",
                "metadata": {"name": "traefik", "namespace": "kube-system"},
                "spec": {
                    "valuesContent": dump_yaml(
                        {
                            "ports": {
                                "web": {
                                    "redirections": {
                                        "entryPoint": {
                                            "to": "websecure",
                                            "scheme": "https",
                                            "permanent": True,
                                        }
                                    }
                                }
                            }
                        }
                    )
                },
            }
        ],
    }
    if ctx.cloud == "hcloud":
        files.update(_hcloud_addons(ctx))
    return files


def _hcloud_addons(ctx: ClusterContext) -> dict[str, list[dict[str, Any]]]:
    if ctx.cloud_token is None or ctx.network_id is None:
        raise ValueError("hcloud clusters need cloud_token and network_id")
    return {
        # Read by both: the token for Hetzner's API, the network whose addresses are the nodes'.
        "blueprints-hcloud-secret.yaml": [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "hcloud", "namespace": "kube-system"},
                "type": "Opaque",
                "stringData": {"token": ctx.cloud_token, "network": str(ctx.network_id)},
            }
        ],
        "blueprints-hcloud-ccm.yaml": [
            _helm_chart(
                "hcloud-cloud-controller-manager",
                HCLOUD_CCM,
                "kube-system",
                {
                    # Nodes get their private addresses from the network; flannel carries pod
                    # traffic over it, so the controller manages no routes.
                    "networking": {"enabled": True, "clusterCIDR": CLUSTER_CIDR},
                    "env": {
                        "HCLOUD_NETWORK_ROUTES_ENABLED": {"value": "false"},
                        # The load balancer in front of the nodes is the stack's own (Pulumi's,
                        # priced and deleted with the stack), reaching Traefik through k3s's
                        # ServiceLB on ports 80/443 of every node: the controller must not
                        # create a second one for the same LoadBalancer Service.
                        "HCLOUD_LOAD_BALANCERS_ENABLED": {"value": "false"},
                    },
                },
                # Every node is tainted "uninitialized" until this controller runs: its chart
                # cannot wait for a schedulable node.
                bootstrap=True,
            )
        ],
        "blueprints-hcloud-csi.yaml": [_helm_chart("hcloud-csi", HCLOUD_CSI, "kube-system", {})],
    }


def render_manifests(ctx: ClusterContext) -> dict[str, str]:
    """Auto-deploy manifest file name -> YAML text (multi-document where a file holds several)."""
    files = {name: _documents(objs) for name, objs in addon_objects(ctx).items()}
    files["blueprints-app.yaml"] = _documents(app_objects(ctx.app, ctx.cloud))
    secrets = secret_objects(ctx.app, ctx.secrets)
    if secrets:
        files["blueprints-app-secrets.yaml"] = _documents(secrets)
    return dict(sorted(files.items()))


def _documents(objects: list[dict[str, Any]]) -> str:
    return "".join(f"---\n{dump_yaml(obj)}" for obj in objects)


# Manifests holding secret values; root-only on the node.
SECRET_MANIFESTS = ("blueprints-app-secrets.yaml", "blueprints-hcloud-secret.yaml")


# --- k3s on each node -------------------------------------------------------------------------


def k3s_config(ctx: ClusterContext, node: K8sNode) -> dict[str, Any]:
    """/etc/rancher/k3s/config.yaml: the k3s command line as a mapping."""
    config: dict[str, Any] = {
        "node-name": node.name,
        "node-ip": node.private_ip,
        "token-file": TOKEN_FILE,
    }
    cloud_external = ctx.cloud == "hcloud"
    if cloud_external:
        # Hetzner's cloud controller manager initialises the nodes (addresses, provider id).
        config["kubelet-arg"] = ["cloud-provider=external"]
    if node.role == "agent":
        config["server"] = f"https://{ctx.first_server}:{API_PORT}"
        return config
    timing = ctx.timing
    config.update(
        {
            "advertise-address": node.private_ip,
            "node-taint": [CONTROL_PLANE_TAINT],
            "secrets-encryption": True,
            "write-kubeconfig-mode": "0600",
            "kube-controller-manager-arg": [
                f"node-monitor-grace-period={timing.node_monitor_grace_period}s"
            ],
            "kube-apiserver-arg": [
                f"default-not-ready-toleration-seconds={timing.not_ready_toleration}",
                f"default-unreachable-toleration-seconds={timing.unreachable_toleration}",
            ],
        }
    )
    if cloud_external:
        config["disable-cloud-controller"] = True
        # Claims go to Hetzner volumes; no second (node-local) default storage class.
        config["disable"] = ["local-storage"]
    if node.private_ip != ctx.first_server:
        config["server"] = f"https://{ctx.first_server}:{API_PORT}"
    return config


def _t(template: str, **values: object) -> str:
    return render_template(f"k8s/{template}", **values)


def file_permissions(path: str) -> str:
    """The mode a rendered file gets on the node."""
    name = path.rsplit("/", 1)[-1]
    if path.startswith(SCRIPTS + "/"):
        return "0755"
    if path.startswith(K3S_CONFIG_DIR + "/") or path.endswith(".key") or name in SECRET_MANIFESTS:
        return "0600"
    return "0644"


def render_node_files(ctx: ClusterContext, node: K8sNode) -> dict[str, RenderedFile]:
    """Absolute path on the VM -> file, for everything the node's cloud-init writes."""
    _require_valid(ctx.app)
    first = node.role == "server" and node.private_ip == ctx.first_server
    unit = "k3s.service" if node.role == "server" else "k3s-agent.service"
    texts: dict[str, str] = {
        **host_files(docker=False),
        K3S_CONFIG: dump_yaml(k3s_config(ctx, node)),
        TOKEN_FILE: ctx.token + "\n",
        f"{SCRIPTS}/install-k3s": _t("install-k3s.sh.j2", version=K3S_VERSION, binary=K3S_BINARY),
        f"{SCRIPTS}/{FLANNEL_SCRIPT}": _t(
            "k3s-flannel-iface.sh.j2",
            config=K3S_CONFIG,
            dropin=FLANNEL_DROPIN,
            wait_seconds=PRIVATE_NETWORK_WAIT_SECONDS,
        ),
        f"{UNITS}/{unit}": _t(
            "k3s.service.j2",
            role=node.role,
            binary=K3S_BINARY,
            stop_timeout=STOP_TIMEOUT_SECONDS,
            flannel_script=f"{SCRIPTS}/{FLANNEL_SCRIPT}",
        ),
    }
    if first:
        if ctx.pki is None:
            raise ValueError("the first control plane needs the cluster's certificate authorities")
        texts.update(ctx.pki.files())
        texts[f"{SCRIPTS}/k3s-bootstrap"] = _t(
            "k3s-bootstrap.sh.j2",
            peers=list(ctx.server_ips[1:]),
            port=API_PORT,
            token_file=TOKEN_FILE,
            ca_file=f"{TLS_DIR}/server-ca.crt",
            dropin=BOOTSTRAP_DROPIN,
        )
        for name, text in render_manifests(ctx).items():
            texts[f"{MANIFESTS}/{name}"] = text
    return {
        path: RenderedFile(content=texts[path], permissions=file_permissions(path))
        for path in sorted(texts)
    }


def render_cloud_init(ctx: ClusterContext, node: K8sNode) -> str:
    """The node's user data: a #cloud-config document embedding every file it needs."""
    files = render_node_files(ctx, node)
    first = node.role == "server" and node.private_ip == ctx.first_server
    unit = "k3s.service" if node.role == "server" else "k3s-agent.service"
    runcmd = [
        "systemctl try-reload-or-restart ssh.service",
        f"{SCRIPTS}/install-k3s",
    ]
    if first:
        runcmd.append(f"{SCRIPTS}/k3s-bootstrap")
    runcmd += [
        "systemctl daemon-reload",
        f"systemctl enable {unit}",
        # --no-block: a joining node waits for the first one, cloud-init must not.
        f"systemctl start --no-block {unit}",
    ]
    return cloud_config(
        ctx.app.admin.ssh_keys,
        {path: f.content for path, f in sorted(files.items())},
        lambda path: files[path].permissions,
        ["curl", "unattended-upgrades"],
        runcmd,
    )


# --- the admin kubeconfig ---------------------------------------------------------------------


def kubeconfig(cluster: str, server: str, ca_cert: str, client_cert: str, client_key: str) -> str:
    """An admin kubeconfig for the API at `server` (https://host:6443).

    The server certificate is checked against the cluster's own CA under the name `kubernetes`,
    which k3s puts in every API server certificate, so the address can be a load balancer or a
    node's public IP without being in the certificate.
    """
    import base64

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return dump_yaml(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": cluster,
                    "cluster": {
                        "server": server,
                        "certificate-authority-data": b64(ca_cert),
                        "tls-server-name": "kubernetes",
                    },
                }
            ],
            "users": [
                {
                    "name": f"{cluster}-admin",
                    "user": {
                        "client-certificate-data": b64(client_cert),
                        "client-key-data": b64(client_key),
                    },
                }
            ],
            "contexts": [
                {"name": cluster, "context": {"cluster": cluster, "user": f"{cluster}-admin"}}
            ],
            "current-context": cluster,
            "preferences": {},
        }
    )
