"""The k8s rung's release: the app and the cluster's add-ons as Kubernetes objects.

Pure functions of the app spec (and, for the Secrets, the secret values). The component sends
every object through the Kubernetes API (pulumi-kubernetes, with a provider built from the
stack's kubeconfig), so a release is an update of a Deployment or StatefulSet, a rollout that
Kubernetes runs and Pulumi waits for, never a new machine (principle 9). `blueprints render`
writes the same objects under `release/k8s/`.

The add-ons: a storage class per cloud, Traefik's https redirect (k3s bundles Traefik), the
ACME cluster issuer, and Helm releases installed by Pulumi's Helm client: cert-manager and, on
Hetzner, the cloud controller manager and the CSI driver.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from blueprints.release.bundle import digest
from blueprints.render.common import dump_yaml
from blueprints.render.vm import secret_values
from blueprints.rungs.k8s.marks import SECRETS_DIGEST
from blueprints.rungs.k8s.rules import require_valid
from blueprints.spec import AppSpec, Port, Service

Cloud = Literal["hcloud", "aws"]

# The Kubernetes release the manifests are validated against (settings.K3S_VERSION's).
KUBERNETES_VERSION = "1.34.9"
ACME_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
CLUSTER_ISSUER = "letsencrypt"
# k3s's default pod network.
CLUSTER_CIDR = "10.42.0.0/16"
STOP_TIMEOUT_SECONDS = 30
# Where app pods may not send traffic except along declared dependencies: private networks (the
# nodes, pods and services) and link-local (the cloud metadata service).
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
    # The data lives on the disk of the node running the pod (lost with that node).
    node_local: bool = False


# Per cloud: where a PVC's data lives. Both keep the data when a claim is deleted (Retain).
STORAGE = {
    # A Hetzner Cloud volume per claim, attached to whichever node runs the pod.
    "hcloud": StorageClass("blueprints-hcloud", "csi.hetzner.cloud", expandable=True),
    # k3s's local-path provisioner: a directory on the node that first runs the pod, which pins
    # the pod to that node for good.
    "aws": StorageClass("blueprints-local", "rancher.io/local-path", node_local=True),
}


def secrets_digest(key: str, app: AppSpec, name: str, secrets: Mapping[str, str]) -> str | None:
    """A digest of one service's secret values, keyed with the stack's deploy key (so the
    values cannot be guessed from it); None for a service without secrets."""
    svc = app.services[name]
    if not svc.secret_env:
        return None
    return digest(key, "k8s", name, secret_values(secrets, sorted(svc.secret_env), name))


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


def _pod_template(
    app: AppSpec, name: str, svc: Service, digest: str | None = None
) -> dict[str, Any]:
    annotations = {}
    if digest is not None:
        # Kubernetes restarts no pod when a Secret changes: a new digest of the service's secret
        # values is a new pod template, so a new value rolls out like a new image.
        annotations[SECRETS_DIGEST] = digest
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


def _workload(
    app: AppSpec, name: str, svc: Service, storage: StorageClass, digest: str | None
) -> dict[str, Any]:
    template = _pod_template(app, name, svc, digest)
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


def app_objects(
    app: AppSpec, cloud: Cloud, digests: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Every object of the app except its Secrets, in a stable order; `digests`: service ->
    the digest of its secret values (secrets_digest), for services with secrets."""
    require_valid(app)
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
        objects.append(_workload(app, name, svc, storage, (digests or {}).get(name)))
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


# --- cluster add-ons --------------------------------------------------------------------------


@dataclass(frozen=True)
class Chart:
    """A Helm release Pulumi installs and waits for (pinned chart version)."""

    name: str
    namespace: str
    repo: str
    chart: str
    version: str
    values: Mapping[str, Any]
    # Charts that must be ready first (by name).
    after: tuple[str, ...] = ()


CERT_MANAGER = {"repo": "https://charts.jetstack.io", "chart": "cert-manager", "version": "v1.19.1"}
HCLOUD_CCM = {
    "repo": "https://charts.hetzner.cloud",
    "chart": "hcloud-cloud-controller-manager",
    "version": "1.25.1",
}
HCLOUD_CSI = {"repo": "https://charts.hetzner.cloud", "chart": "hcloud-csi", "version": "2.19.0"}
# The Secret both Hetzner charts read: the API token and the private network's id.
HCLOUD_SECRET = "hcloud"


def charts(cloud: Cloud) -> list[Chart]:
    """The Helm releases of a cluster on this cloud, in install order."""
    out: list[Chart] = []
    first: tuple[str, ...] = ()
    if cloud == "hcloud":
        out.append(
            Chart(
                "hcloud-cloud-controller-manager",
                "kube-system",
                **HCLOUD_CCM,
                values={
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
            )
        )
        # Every node is tainted "uninitialized" until the controller runs; the chart's pods
        # tolerate that taint, the others wait for it (and Pulumi installs them after it).
        first = ("hcloud-cloud-controller-manager",)
        out.append(Chart("hcloud-csi", "kube-system", **HCLOUD_CSI, values={}, after=first))
    out.append(
        Chart(
            "cert-manager",
            "cert-manager",
            **CERT_MANAGER,
            values={"crds": {"enabled": True}},
            after=first,
        )
    )
    return out


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


def traefik_config() -> dict[str, Any]:
    """k3s's bundled Traefik: plain http only redirects to https."""
    redirect = {"to": "websecure", "scheme": "https", "permanent": True}
    return {
        "apiVersion": "helm.cattle.io/v1",
        "kind": "HelmChartConfig",
        "metadata": {"name": "traefik", "namespace": "kube-system"},
        "spec": {
            "valuesContent": dump_yaml(
                {"ports": {"web": {"redirections": {"entryPoint": redirect}}}}
            )
        },
    }


def cluster_issuer(app: AppSpec) -> dict[str, Any]:
    """Let's Encrypt through http-01 challenges answered behind Traefik (needs cert-manager)."""
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "ClusterIssuer",
        "metadata": {"name": CLUSTER_ISSUER},
        "spec": {
            "acme": {
                "email": app.acme_email,
                "server": ACME_DIRECTORY,
                "privateKeySecretRef": {"name": f"{CLUSTER_ISSUER}-account-key"},
                "solvers": [{"http01": {"ingress": {"ingressClassName": "traefik"}}}],
            }
        },
    }


def hcloud_secret(token: str, network_id: str) -> dict[str, Any]:
    """What Hetzner's controller manager and CSI driver read: the API token, the network."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": HCLOUD_SECRET, "namespace": "kube-system"},
        "type": "Opaque",
        "stringData": {"token": token, "network": str(network_id)},
    }


def manifests(
    app: AppSpec,
    cloud: Cloud,
    secrets: Mapping[str, str],
    digests: Mapping[str, str] | None = None,
    *,
    cloud_token: str = "<secret:hcloud-token>",
    network_id: str = "<network-id>",
) -> dict[str, str]:
    """File name -> multi-document YAML of every object the stack applies (for rendering and
    validation; the component sends the same objects one by one)."""
    files = {
        "cluster.yaml": _documents([storage_class(cloud), traefik_config(), cluster_issuer(app)]),
        "app.yaml": _documents(app_objects(app, cloud, digests)),
    }
    secret_docs = secret_objects(app, secrets)
    if secret_docs:
        files["app-secrets.yaml"] = _documents(secret_docs)
    if cloud == "hcloud":
        files["hcloud-secret.yaml"] = _documents([hcloud_secret(cloud_token, network_id)])
    return dict(sorted(files.items()))


def _documents(objects: list[dict[str, Any]]) -> str:
    return "".join(f"---\n{dump_yaml(obj)}" for obj in objects)


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
