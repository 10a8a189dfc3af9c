"""The k8s rung's release: the app and the cluster's add-ons as Kubernetes objects.

Pure functions of the app spec (and, for the Secrets, the secret values). The component sends
every object through the Kubernetes API (pulumi-kubernetes, with a provider built from the
stack's kubeconfig), so a release is an update of a Deployment or StatefulSet, a rollout that
Kubernetes runs and Pulumi waits for, never a new machine (principle 9). `blueprints render`
writes the same objects under `release/k8s/`.

The add-ons: a storage class per cloud, Traefik's https redirect (k3s bundles Traefik), the
ACME cluster issuer, and Helm releases installed by Pulumi's Helm client: cert-manager and, on
Hetzner, the cloud controller manager and the CSI driver.

The backups (where the stack has a bucket): a restic CronJob per service with volumes, which
backs up the service's dump (taken with `kubectl exec`) or its claims' files (mounted
read-only beside its pod), a weekly check CronJob, the script they run (a ConfigMap) and the
Secret with the repository, its password and the bucket's keys (`backup_objects`,
`backup_secret`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from blueprints.backup.node_files import backup_cron, check_cron
from blueprints.release.bundle import digest
from blueprints.render.common import dump_yaml, render_template
from blueprints.render.vm import secret_values
from blueprints.rungs.k8s.marks import SECRETS_DIGEST
from blueprints.rungs.k8s.rules import require_valid
from blueprints.spec import AppSpec, Environment, File, Port, Service

if TYPE_CHECKING:
    from blueprints.backup.storage import Storage

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
LABEL_COMPONENT = "app.kubernetes.io/component"


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
    """A digest of one service's secret values (its secret environment and secret files),
    keyed with the stack's deploy key (so the values cannot be guessed from it); None for a
    service without secrets."""
    if not has_secrets(app, name):
        return None
    values = secret_env(app, name, secrets)
    files = {f.key: app.file_text(f, secrets, address(app)) for f in secret_files(app, name)}
    if not files:
        # as before files existed: a service's digest does not change with this release
        return digest(key, "k8s", name, values)
    return digest(key, "k8s", name, values, files)


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
    """The Secret with a service's secret environment."""
    return f"{service}-secret-env"


def secret_files_name(service: str) -> str:
    """The Secret with a service's secret files."""
    return f"{service}-secret-files"


def files_name(service: str) -> str:
    """The ConfigMap with a service's plain files."""
    return f"{service}-files"


# The Secret every pod pulling from a private registry names in imagePullSecrets.
REGISTRY_SECRET = "registry-auth"
# Docker Hub's key in a docker config (what kubelet and docker look up for docker.io images).
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
# Pod volumes of a service's files: names no spec volume can have (those start with a letter).
FILES_VOLUME = "0-files"
SECRET_FILES_VOLUME = "0-secret-files"
# The pod-template annotation with a digest of the service's plain files: a changed file is a
# new pod template, so it rolls out (files mounted with subPath are never updated in place).
FILES_DIGEST = "blueprints.dev/files-digest"
# Every pod mounting a claim that other pods mount too carries `<prefix><volume>: mounted` and
# must run on the node of the others (a ReadWriteOnce volume is attached to one node).
VOLUME_LABEL = "volume.blueprints.dev/"
# The service a task's or schedule's pods run as (they carry no app.kubernetes.io/name, so no
# Service, budget or workload selects them; the network policies let them through as that
# service).
RUNS_OF = "blueprints.dev/runs-of"
RUN_NAME = "blueprints.dev/run"
# A task's Job has no ttlSecondsAfterFinished: Pulumi refreshes before each `pulumi up`, and a
# Job deleted by its TTL would drop out of the state and run again on an unchanged release. The
# previous release's Job is deleted by Pulumi (its name changes with each release).
# pulumi-kubernetes replaces a Job with this annotation that did not complete (a failed task) at
# the next `pulumi up`, instead of failing on it again: the task runs again.
REPLACE_UNREADY = "pulumi.com/replaceUnready"
SCHEDULE_JOBS_KEPT = 3


def address(app: AppSpec) -> Callable[[str, str], str]:
    """How a service reaches another: by its name, on its Service's port; a service with
    volumes has a headless Service (its name resolves to the pod itself, no port mapping), so
    on the port its container listens on."""

    def resolve(service: str, attr: str) -> str:
        if attr == "host":
            return service
        svc = app.services[service]
        first = svc.ports[0]
        return str(first.target if svc.stateful else first.port)

    return resolve


def placeholders(app: AppSpec) -> dict[str, str]:
    """Stand-ins for the secret values where only the shape matters."""
    return dict.fromkeys(app.secret_names(), "")


def environment(app: AppSpec, name: str, secrets: Mapping[str, str]) -> Environment:
    return app.environment(name, secrets, address(app))


def _check_secrets(app: AppSpec, name: str, secrets: Mapping[str, str]) -> None:
    """Name a secret the service needs that has no value (before anything reads it)."""
    svc = app.services[name]
    secret_values(secrets, sorted(svc.secret_env), name)
    missing = sorted(set(_service_secret_names(app, name)) - set(secrets))
    if missing:
        raise ValueError(
            f"secret {missing[0]} (referenced by service {name}) has no value; set it with "
            f"`pulumi config set --secret --path 'blueprints:secrets.{missing[0]}'`"
        )


def _service_secret_names(app: AppSpec, name: str) -> list[str]:
    from blueprints.spec import references

    svc = app.services[name]
    texts = [*svc.env.values(), *(f.text for f in svc.files)]
    return sorted({r.name for t in texts for r in references(t) if r.kind == "secret"})


def secret_env(app: AppSpec, name: str, secrets: Mapping[str, str]) -> dict[str, str]:
    """The service's secret environment: secret_env, and every variable naming a secret."""
    _check_secrets(app, name, secrets)
    return environment(app, name, secrets).secret


def secret_files(app: AppSpec, name: str) -> list[File]:
    return sorted((f for f in app.services[name].files if f.secret), key=lambda f: f.key)


def plain_files(app: AppSpec, name: str) -> list[File]:
    return sorted((f for f in app.services[name].files if not f.secret), key=lambda f: f.key)


def has_secrets(app: AppSpec, name: str) -> bool:
    return bool(environment(app, name, placeholders(app)).secret or secret_files(app, name))


def volume_owner(app: AppSpec, volume: str) -> str:
    """The service whose backup backs a volume up: its only user, or the first user by name of
    a volume several services mount (backed up once)."""
    return app.volume_users(volume)[0]


def is_shared(app: AppSpec, volume: str) -> bool:
    """Whether several services mount a volume: then its claim is an object of its own."""
    # Not app.shared_volumes(), which maps every volume: asked per service and volume.
    return volume in app.volumes and len(app.volume_users(volume)) > 1


def owned_volumes(app: AppSpec, name: str) -> list[str]:
    """The volumes a service's backup holds: its own, and the shared volumes it is the first
    user of."""
    mounted = dict.fromkeys(m.volume for m in app.services[name].volumes)
    return [v for v in mounted if volume_owner(app, v) == name]


def own_claim(app: AppSpec, volume: str) -> bool:
    """Whether a volume one service mounts has a claim of its own beside that service's
    StatefulSet: when a task or schedule runs as the service. The claim is named what the
    StatefulSet's template names it, `<volume>-<service>-0`, and created before the workloads
    and the tasks' Jobs: the StatefulSet controller uses the claim of that name it finds, so a
    task can mount the volume before the service's new version rolls out (and on a first deploy,
    before the service has ever run)."""
    return not is_shared(app, volume) and volume_owner(app, volume) in _services_with_runs(app)


def own_claims(app: AppSpec) -> list[tuple[str, str]]:
    """(service, volume) of every claim of its own of a volume one service mounts (own_claim)."""
    return [
        (name, volume)
        for name, svc in app.sorted_services()
        for volume in dict.fromkeys(m.volume for m in svc.volumes)
        if own_claim(app, volume)
    ]


def colocated(app: AppSpec, volume: str) -> bool:
    """Whether the pods mounting a volume's claim carry its label and run beside each other: a
    volume several services mount, or one whose service has tasks or schedules."""
    return is_shared(app, volume) or own_claim(app, volume)


def _runs(app: AppSpec) -> list[tuple[str, str, str]]:
    """(kind, name, service) of every task and schedule, in the order written."""
    return [
        *(("task", name, t.service) for name, t in app.tasks.items()),
        *(("schedule", name, s.service) for name, s in app.schedules.items()),
    ]


def claim_resource(app: AppSpec, claim: str, stack: str) -> str:
    """The Pulumi resource name of a claim of the app (what the component names it)."""
    return f"{app.name}-{stack}-persistentvolumeclaim-{app.name}-{claim}"


def volume_notes(app: AppSpec, stack: str = "<stack>", project: str = "blueprints") -> list[str]:
    """What the plan says about volumes several pods mount (they run on one node), including a
    task's or schedule's pods mounting their service's volume (a claim of its own, which an
    existing stack imports first)."""
    notes = []
    for volume, users in app.shared_volumes().items():
        notes.append(
            f"services {_and(users)} share volume {volume}, so they run on one node (a "
            f"ReadWriteOnce claim, {claim_name(app, volume)}, is attached to one node at a "
            f"time); it is backed up once, with {volume_owner(app, volume)}. Had one of them "
            f"mounted {volume} alone before, its data stays in that service's claim "
            f"({volume}-<service>-0) and is not moved into {claim_name(app, volume)}"
        )
        runs = [f"{kind} {name}" for kind, name, service in _runs(app) if service in users]
        if runs:
            notes.append(
                f"{_and(runs)} {'mounts' if len(runs) == 1 else 'mount'} volume {volume} too, "
                "so its pods run on the node of the services mounting it"
            )
    stack_urn = f"urn:pulumi:{stack}::{project}::blueprints:index:K8s"
    for service, volume in own_claims(app):
        claim = claim_name(app, volume)
        runs = [f"{kind} {name}" for kind, name, of in _runs(app) if of == service]
        notes.append(
            f"{_and(runs)} {'mounts' if len(runs) == 1 else 'mount'} service {service}'s volume "
            f"{volume}, so its claim {claim} (the one {service}'s StatefulSet names) is an object "
            f"of its own, created before the tasks run and before {service} rolls out, and the "
            f"pods of {service} and of {_and(runs)} run on one node. On an existing stack whose "
            f"{service} already runs, the claim exists and `pulumi up` stops with AlreadyExists "
            "(pulumi-kubernetes >= 4.29 creates with a client-side create and does not adopt): "
            "import it first with `pulumi import kubernetes:core/v1:PersistentVolumeClaim "
            f"{claim_resource(app, claim, stack)} {app.name}/{claim} "
            f"--parent 'app={stack_urn}::{app.name}' "
            f"--provider 'kubernetes={stack_urn}$pulumi:providers:kubernetes::"
            f"{app.name}-{stack}-kubernetes'`"
        )
    return notes


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _cpu(cores: float) -> str:
    return f"{max(1, round(cores * 1000))}m"


def _probe_handler(svc: Service) -> dict[str, Any]:
    health = svc.health
    assert health is not None
    if health.type == "http":
        return {"httpGet": {"path": health.path, "port": svc.health_port}}
    if health.type == "tcp":
        return {"tcpSocket": {"port": svc.health_port}}
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


def _container(
    app: AppSpec, name: str, svc: Service, run: tuple[str, list[str]] | None = None
) -> dict[str, Any]:
    """The service's container; run: (name, command) of a task or schedule running as it
    (then without ports and probes, and with that command)."""
    values = environment(app, name, placeholders(app))
    env: list[dict[str, Any]] = [
        {"name": var, "value": escape_dollars(value)} for var, value in values.plain.items()
    ]
    env += [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": secret_name(name), "key": var}}}
        for var in values.secret
    ]
    memory = f"{svc.memory}Mi"
    container: dict[str, Any] = {
        "name": name if run is None else run[0],
        "image": svc.image,
        # Requests equal limits: the scheduler reserves what the spec allows (Guaranteed QoS).
        "resources": {
            "limits": {"cpu": _cpu(svc.cpu), "memory": memory},
            "requests": {"cpu": _cpu(svc.cpu), "memory": memory},
        },
        **(probes(svc) if run is None else {}),
    }
    if svc.entrypoint:
        # The spec's entrypoint replaces the image's ENTRYPOINT, which Kubernetes calls command.
        container["command"] = [escape_dollars(a) for a in svc.entrypoint]
    args = svc.command if run is None else run[1]
    if args:
        # The spec's command replaces the image's CMD (as `docker run IMAGE CMD...`), which is
        # what Kubernetes calls args; the image's ENTRYPOINT stays unless entrypoint is set.
        container["args"] = [escape_dollars(a) for a in args]
    if env:
        container["env"] = env
    if svc.ports and run is None:
        container["ports"] = [{"containerPort": p.target, "protocol": "TCP"} for p in svc.ports]
    mounts = [
        {"name": m.volume, "mountPath": m.path, **({"readOnly": True} if m.read_only else {})}
        for m in svc.volumes
    ]
    for f in sorted(svc.files, key=lambda f: f.path):
        volume = SECRET_FILES_VOLUME if f.secret else FILES_VOLUME
        mounts.append({"name": volume, "mountPath": f.path, "subPath": f.key, "readOnly": True})
    if mounts:
        container["volumeMounts"] = mounts
    return container


def claim_name(app: AppSpec, volume: str) -> str:
    """A volume's claim. A volume one service mounts: the claim that service's StatefulSet
    creates from its template, `<volume>-<service>-0` (as it always has). A volume several
    services mount: a claim of its own named after the volume alone, `<volume>-shared` (the
    same name whoever mounts it)."""
    if is_shared(app, volume):
        return f"{volume}-shared"
    return f"{volume}-{volume_owner(app, volume)}-0"


def _claim_spec(app: AppSpec, volume: str, storage: StorageClass) -> dict[str, Any]:
    return {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": storage.name,
        "resources": {"requests": {"storage": f"{app.volumes[volume].size_gb}Gi"}},
    }


def _shared_claim(app: AppSpec, volume: str, storage: StorageClass) -> dict[str, Any]:
    """The claim of a volume several services mount (the component protects it and keeps it
    when it leaves the program)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": claim_name(app, volume),
            "namespace": app.name,
            "labels": {
                LABEL_INSTANCE: app.name,
                LABEL_MANAGED: "blueprints",
                f"{VOLUME_LABEL}{volume}": "shared",
            },
        },
        "spec": _claim_spec(app, volume, storage),
    }


def _own_claim(app: AppSpec, name: str, volume: str, storage: StorageClass) -> dict[str, Any]:
    """The claim of a volume one service mounts, as its StatefulSet would create it from its
    template (same name, labels and spec), created by the component instead (own_claim)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": claim_name(app, volume),
            "namespace": app.name,
            "labels": _labels(app, name),
        },
        "spec": _claim_spec(app, volume, storage),
    }


def _files_map(app: AppSpec, name: str) -> dict[str, Any] | None:
    files = plain_files(app, name)
    if not files:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(app, files_name(name)),
        "data": {f.key: app.file_text(f, placeholders(app), address(app)) for f in files},
    }


def files_digest(app: AppSpec, name: str) -> str | None:
    """A digest of the service's plain files (their paths, modes and texts); None without."""
    files = [
        (f.path, f.mode, app.file_text(f, placeholders(app), address(app)))
        for f in plain_files(app, name)
    ]
    if not files:
        return None
    body = json.dumps(files, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _pod_volumes(app: AppSpec, name: str, svc: Service, run: bool) -> list[dict[str, Any]]:
    """The pod's volumes: the claims it names (a service's own volumes come from its
    StatefulSet's claim templates; a task or schedule names those claims), its files."""
    volumes: list[dict[str, Any]] = [
        {"name": v, "persistentVolumeClaim": {"claimName": claim_name(app, v)}}
        for v in dict.fromkeys(m.volume for m in svc.volumes)
        if run or is_shared(app, v)
    ]
    for source, files, volume in (
        ("configMap", plain_files(app, name), FILES_VOLUME),
        ("secret", secret_files(app, name), SECRET_FILES_VOLUME),
    ):
        if not files:
            continue
        items = [{"key": f.key, "path": f.key, "mode": f.mode_int} for f in files]
        ref = (
            {"name": files_name(name)}
            if source == "configMap"
            else {"secretName": secret_files_name(name)}
        )
        volumes.append({"name": volume, source: {**ref, "items": items}})
    return volumes


def _volume_labels(app: AppSpec, svc: Service) -> dict[str, str]:
    """`<VOLUME_LABEL><volume>: mounted` for each volume the pod mounts whose claim other pods
    mount too: a shared volume, or a service's own volume its tasks and schedules mount."""
    return {f"{VOLUME_LABEL}{m.volume}": "mounted" for m in svc.volumes if colocated(app, m.volume)}


def _affinity(app: AppSpec, name: str, svc: Service, run: bool) -> dict[str, Any] | None:
    """Required: run on the node of the other pods mounting the same claim (a ReadWriteOnce
    claim is attached to one node): the pods carrying its label. A pod matching its own term is
    placed freely while no such pod runs (a task's pod on a first deploy, before its service's
    pods exist). A task or schedule mounting its service's own claim also prefers the node of
    the service's pods: those of a version from before the claim had its label do not carry it
    (the release that adds a task to a running service)."""
    terms = [
        {
            "labelSelector": {"matchLabels": {LABEL_INSTANCE: app.name, key: value}},
            "topologyKey": "kubernetes.io/hostname",
        }
        for key, value in sorted(_volume_labels(app, svc).items())
    ]
    if not terms:
        return None
    affinity: dict[str, Any] = {"requiredDuringSchedulingIgnoredDuringExecution": terms}
    if run and any(own_claim(app, m.volume) for m in svc.volumes):
        affinity["preferredDuringSchedulingIgnoredDuringExecution"] = [
            {
                "weight": 100,
                "podAffinityTerm": {
                    "labelSelector": {"matchLabels": _selector(app, name)},
                    "topologyKey": "kubernetes.io/hostname",
                },
            }
        ]
    return {"podAffinity": affinity}


def _pod_spec_of(
    app: AppSpec, name: str, svc: Service, run: tuple[str, list[str]] | None = None
) -> dict[str, Any]:
    """What every pod of a service (or of a task or schedule running as it) has in common."""
    spec: dict[str, Any] = {
        "containers": [_container(app, name, svc, run)],
        # The app does not talk to the Kubernetes API, and a service named like another's
        # environment (POSTGRES_PORT=tcp://...) must not leak into its variables.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": STOP_TIMEOUT_SECONDS,
    }
    if app.registry_for(svc.image) is not None:
        spec["imagePullSecrets"] = [{"name": REGISTRY_SECRET}]
    volumes = _pod_volumes(app, name, svc, run is not None)
    if volumes:
        spec["volumes"] = volumes
    affinity = _affinity(app, name, svc, run is not None)
    if affinity is not None:
        spec["affinity"] = affinity
    return spec


def _pod_template(
    app: AppSpec, name: str, svc: Service, digest: str | None = None
) -> dict[str, Any]:
    annotations = {}
    if digest is not None:
        # Kubernetes restarts no pod when a Secret changes: a new digest of the service's secret
        # values is a new pod template, so a new value rolls out like a new image.
        annotations[SECRETS_DIGEST] = digest
    files = files_digest(app, name)
    if files is not None:
        annotations[FILES_DIGEST] = files
    if svc.depends_on:
        # Kubernetes starts every service at once and lets dependents retry (readiness keeps
        # them out of their Service until they answer); the dependencies show up here and in the
        # network policies that let exactly these connections through.
        annotations["blueprints.dev/depends-on"] = ",".join(sorted(svc.depends_on))
    metadata: dict[str, Any] = {"labels": {**_labels(app, name), **_volume_labels(app, svc)}}
    if annotations:
        metadata["annotations"] = annotations
    spec = _pod_spec_of(app, name, svc)
    # Spread replicas over the workers, but never leave one pending for it: a hard rule
    # would strand pods while a node is down.
    spec["topologySpreadConstraints"] = [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": _selector(app, name)},
        }
    ]
    return {"metadata": metadata, "spec": spec}


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
    # A volume only this service mounts: a claim from the StatefulSet's template,
    # `<volume>-<service>-0`. A volume other services mount too is a claim of its own
    # (_shared_claim), which the pod template names.
    claims = [
        {
            "metadata": {"name": m.volume, "labels": _labels(app, name)},
            "spec": _claim_spec(app, m.volume, storage),
        }
        for m in svc.volumes
        if not is_shared(app, m.volume)
    ]
    spec: dict[str, Any] = {
        "replicas": svc.replicas,
        "serviceName": name,
        "selector": {"matchLabels": _selector(app, name)},
        "template": template,
    }
    if claims:
        spec["volumeClaimTemplates"] = claims
        # Claims (and so the data) outlive the StatefulSet and its scaling.
        spec["persistentVolumeClaimRetentionPolicy"] = {
            "whenDeleted": "Retain",
            "whenScaled": "Retain",
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(app, name),
        "spec": spec,
    }


def _service(app: AppSpec, name: str, svc: Service) -> dict[str, Any] | None:
    ports = [
        {"name": f"tcp-{p.port}", "port": p.port, "targetPort": p.target, "protocol": "TCP"}
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
                    "targetPort": p.target,
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
    with_runs = _services_with_runs(app)
    # Ports as the pods see them (a policy applies after a Service's port mapping).
    for name, svc in app.sorted_services():
        ingress: list[dict[str, Any]] = []
        http = [p.target for p in svc.public_http_ports]
        if http:
            ingress.append({"from": [_from_traefik()], "ports": _tcp(http)})
        tcp = [p.target for p in svc.public_tcp_ports]
        if tcp:
            # Published on the nodes by k3s's service load balancer: from anywhere.
            ingress.append({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": _tcp(tcp)})
        users = sorted(dependents.get(name, []))
        if users and svc.ports:
            peers = [{"podSelector": {"matchLabels": _selector(app, u)}} for u in users]
            # a task or schedule reaches what its service depends on
            peers += [
                {"podSelector": {"matchLabels": _runs_selector(app, u)}}
                for u in users
                if u in with_runs
            ]
            ingress.append({"from": peers, "ports": _tcp([p.target for p in svc.ports])})
        egress = [
            {
                "to": [{"podSelector": {"matchLabels": _selector(app, dep)}}],
                "ports": _tcp([p.target for p in app.services[dep].ports]),
            }
            for dep in sorted(svc.depends_on)
            if app.services[dep].ports
        ]
        if egress and name in with_runs:
            policies.append(
                {
                    "apiVersion": "networking.k8s.io/v1",
                    "kind": "NetworkPolicy",
                    "metadata": {"name": f"runs-{name}", **_policy_meta(app)},
                    "spec": {
                        "podSelector": {"matchLabels": _runs_selector(app, name)},
                        "policyTypes": ["Egress"],
                        "egress": copy.deepcopy(egress),
                    },
                }
            )
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


def _services_with_runs(app: AppSpec) -> set[str]:
    return {run.service for run in [*app.tasks.values(), *app.schedules.values()]}


def _runs_selector(app: AppSpec, service: str) -> dict[str, str]:
    return {LABEL_INSTANCE: app.name, RUNS_OF: service}


def _run_labels(app: AppSpec, kind: str, run: str, service: str) -> dict[str, str]:
    return {
        LABEL_INSTANCE: app.name,
        LABEL_MANAGED: "blueprints",
        LABEL_COMPONENT: kind,
        RUNS_OF: service,
        RUN_NAME: run,
    }


def _run_pod(app: AppSpec, kind: str, run: str, service: str, command: list[str]) -> dict[str, Any]:
    """The pod template of a task's Job or a schedule's CronJob: the service's image,
    entrypoint, environment, files and volumes, with the run's command; never restarted."""
    svc = app.services[service]
    spec = _pod_spec_of(app, service, svc, (run, command))
    spec["restartPolicy"] = "Never"
    labels = {**_run_labels(app, kind, run, service), **_volume_labels(app, svc)}
    return {"metadata": {"labels": labels}, "spec": spec}


def task_job_name(run: str, release: str) -> str:
    return f"task-{run}-{release[:8]}"


def schedule_job_name(run: str) -> str:
    return f"schedule-{run}"


def _task_job(app: AppSpec, run: str, release: str) -> dict[str, Any]:
    task = app.tasks[run]
    labels = _run_labels(app, "task", run, task.service)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": task_job_name(run, release),
            "namespace": app.name,
            "labels": labels,
            "annotations": {REPLACE_UNREADY: "true"},
        },
        "spec": {
            # One try: a failed task fails the release (Pulumi waits for the Job to complete).
            "backoffLimit": 0,
            "activeDeadlineSeconds": task.timeout,
            "template": _run_pod(app, "task", run, task.service, task.command),
        },
    }


def _schedule_job(app: AppSpec, run: str) -> dict[str, Any]:
    schedule = app.schedules[run]
    labels = _run_labels(app, "schedule", run, schedule.service)
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": schedule_job_name(run), "namespace": app.name, "labels": labels},
        "spec": {
            "schedule": schedule.cron,
            "timeZone": "Etc/UTC",
            # A run never overlaps the last; a run missed by more than the deadline is skipped.
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": STARTING_DEADLINE_SECONDS,
            "successfulJobsHistoryLimit": SCHEDULE_JOBS_KEPT,
            "failedJobsHistoryLimit": SCHEDULE_JOBS_KEPT,
            "jobTemplate": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "backoffLimit": 0,
                    "activeDeadlineSeconds": schedule.timeout,
                    "template": _run_pod(app, "schedule", run, schedule.service, schedule.command),
                },
            },
        },
    }


def before_tasks(app: AppSpec) -> set[str]:
    """The services rolled out before the tasks run: those the tasks' services depend on (all
    the way down: a migration needs its database). Every other workload, the tasks' own
    services included, waits for the tasks."""
    out: set[str] = set()
    pending = [app.tasks[t].service for t in app.tasks]
    while pending:
        for dep in app.services[pending.pop()].depends_on:
            if dep not in out:
                out.add(dep)
                pending.append(dep)
    return out


def release_hash(objects: list[dict[str, Any]]) -> str:
    """A digest of the release (every object but the secret values): a task's Job is named
    after it, so each new release runs the tasks once again."""
    body = json.dumps(objects, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def release_secrets_digest(digests: Mapping[str, str | None]) -> str | None:
    """The release's secrets, folded from every service's keyed digest (secrets_digest), which
    reveal nothing; None when no service has secrets."""
    known = {name: value for name, value in sorted(digests.items()) if value is not None}
    if not known:
        return None
    body = json.dumps(known, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def app_objects(
    app: AppSpec, cloud: Cloud, digests: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Every object of the app except its Secrets, in the order the component creates them;
    `digests`: service -> the digest of its secret values (secrets_digest), for services
    with secrets.

    The order: the namespace, the claims of their own (a shared volume's; a volume whose
    service has tasks or schedules, own_claim) and the files; the workloads the
    tasks need; the tasks' Jobs, one after another; every other workload; the schedules'
    CronJobs, the ingress and the network policies (the component creates the policies
    first)."""
    require_valid(app)
    storage = STORAGE[cloud]
    head: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": app.name,
                "labels": {LABEL_INSTANCE: app.name, LABEL_MANAGED: "blueprints"},
            },
        },
    ]
    head += [_shared_claim(app, v, storage) for v in app.shared_volumes()]
    head += [_own_claim(app, name, v, storage) for name, v in own_claims(app)]
    for name, _ in app.sorted_services():
        files = _files_map(app, name)
        if files is not None:
            head.append(files)
    first: list[dict[str, Any]] = []
    rest: list[dict[str, Any]] = []
    needed = before_tasks(app)
    for name, svc in app.sorted_services():
        group = first if name in needed else rest
        group.append(_workload(app, name, svc, storage, (digests or {}).get(name)))
        for extra in (
            _service(app, name, svc),
            _public_tcp_service(app, name, svc),
            _pdb(app, name, svc),
        ):
            if extra is not None:
                group.append(extra)
    tail: list[dict[str, Any]] = [_schedule_job(app, run) for run in app.schedules]
    ingress = _ingress(app)
    if ingress is not None:
        tail.append(ingress)
    tail += _network_policies(app)
    jobs: list[dict[str, Any]] = []
    if app.tasks and digests:
        # Named after the release without the secrets' digests (the same names in a plan, a
        # render and the component's objects with digests); the digests are folded into the
        # release by the pod template's annotation: new secret values are a new template, which
        # replaces the Job (its template is immutable), so the tasks run again.
        jobs = [o for o in app_objects(app, cloud) if o["kind"] == "Job"]
        folded = release_secrets_digest(digests)
        if folded is not None:
            for job in jobs:
                job["spec"]["template"]["metadata"]["annotations"] = {SECRETS_DIGEST: folded}
    elif app.tasks:
        unnamed = [_task_job(app, run, "0" * 8) for run in app.tasks]
        release = release_hash([*head, *first, *unnamed, *rest, *tail])
        jobs = [_task_job(app, run, release) for run in app.tasks]
    return [*head, *first, *jobs, *rest, *tail]


def registry_secret(app: AppSpec, secrets: Mapping[str, str]) -> dict[str, Any] | None:
    """The credentials of the spec's registries as a docker config (imagePullSecrets)."""
    import base64

    if not app.registries:
        return None
    auths = {}
    for host, (user, password) in app.registry_auth(secrets).items():
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        key = DOCKER_HUB_KEY if host == "docker.io" else host
        auths[key] = {"username": user, "password": password, "auth": token}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": REGISTRY_SECRET,
            "namespace": app.name,
            "labels": {LABEL_INSTANCE: app.name, LABEL_MANAGED: "blueprints"},
        },
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": json.dumps({"auths": auths}, sort_keys=True)},
    }


def secret_objects(app: AppSpec, secrets: Mapping[str, str]) -> list[dict[str, Any]]:
    """The app's Secrets, holding exactly the values their readers need: per service its
    secret environment and its secret files (one Secret each), then the registries'."""
    missing = sorted(set(app.secret_names()) - set(secrets))
    for name, _ in app.sorted_services():
        _check_secrets(app, name, secrets)
    if missing:
        raise ValueError(
            f"secret {missing[0]} has no value; set it with "
            f"`pulumi config set --secret --path 'blueprints:secrets.{missing[0]}'`"
        )
    out = []
    for name, _ in app.sorted_services():
        values = secret_env(app, name, secrets)
        if values:
            out.append(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": _meta(app, secret_name(name)),
                    "type": "Opaque",
                    "stringData": values,
                }
            )
        files = secret_files(app, name)
        if files:
            out.append(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": _meta(app, secret_files_name(name)),
                    "type": "Opaque",
                    "stringData": {f.key: app.file_text(f, secrets, address(app)) for f in files},
                }
            )
    registry = registry_secret(app, secrets)
    if registry is not None:
        out.append(registry)
    return out


def references_of(obj: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(kind, name) of every object of the app a workload, Job or CronJob reads: its Secrets,
    ConfigMaps and claims, a StatefulSet's claims from its templates included (the component
    creates it after those it creates itself)."""
    spec = obj.get("spec") or {}
    if obj.get("kind") == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod = (spec.get("template") or {}).get("spec")
    if not pod:
        return []
    found: list[tuple[str, str]] = []
    if obj.get("kind") == "StatefulSet":
        set_name = obj["metadata"]["name"]
        found += [
            ("PersistentVolumeClaim", f"{t['metadata']['name']}-{set_name}-{ordinal}")
            for t in spec.get("volumeClaimTemplates", [])
            for ordinal in range(spec.get("replicas", 1))
        ]
    for ref in pod.get("imagePullSecrets", []):
        found.append(("Secret", ref["name"]))
    for volume in pod.get("volumes", []):
        if "persistentVolumeClaim" in volume:
            found.append(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
        if "configMap" in volume:
            found.append(("ConfigMap", volume["configMap"]["name"]))
        if "secret" in volume:
            found.append(("Secret", volume["secret"]["secretName"]))
    for container in pod["containers"]:
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                found.append(("Secret", ref["name"]))
    return sorted(set(found))


# --- backups ----------------------------------------------------------------------------------
# Each service with volumes is backed up by a CronJob of its own, `backup-<service>`, with restic
# to the stack's repository (blueprints.backup.storage): host `<app>-<service>`, tag
# `blueprints`, so each service's snapshots are kept and pruned apart. A service that declares a
# dump is backed up by that dump, taken with `kubectl exec` into its running pod (its claim is
# not touched); any other by the files of its claims, mounted read-only in a pod on the node that
# holds them. A weekly CronJob `backup-check` checks the repository and restores the newest
# dumps. The steps are those of blueprints-backup on the VM rungs, as a shell script
# (templates/blueprints-backup.sh.j2) in a ConfigMap, run by the official restic image.

# Pinned images. restic 0.17 or newer: the script tells "no repository yet" (exit status 10)
# from a wrong password or unreachable storage.
RESTIC_IMAGE = "restic/restic:0.17.3"
# kubectl with a shell, which the dump needs to write kubectl's output to a file: Rancher's
# successor to rancher/kubectl (now deprecated; neither it nor registry.k8s.io/kubectl has a
# shell). SUSE's BCI busybox base, bash, and kuberlr, which runs the bundled kubectl suited to
# the server: v7.1.1 bundles kubectl 1.33.12, 1.34.8 and 1.35.5, around the pinned k3s
# (KUBERNETES_VERSION); downloads are off.
KUBECTL_IMAGE = "rancher/kuberlr-kubectl:v7.1.1"
BACKUP_SECRET = "backup-storage"
BACKUP_CONFIGMAP = "backup-script"
BACKUP_SCRIPT = "blueprints-backup.sh"
CHECK_JOB = "backup-check"
API_POLICY = "backup-kubernetes-api"
# The service a backup pod backs up. Backup pods carry no app.kubernetes.io/name, so no
# Service, policy or budget of the app ever selects one.
BACKUP_OF = "blueprints.dev/backup-of"
# Inside the backup pods.
SCRIPT_DIR = "/etc/blueprints-backup"
DATA_DIR = "/data"  # a claim backed up as files: /data/<volume> in the snapshot
DUMP_DIR = "/dumps"  # a dump: /dumps/<service>.dump in the snapshot
SCRATCH_DIR = "/scratch"
CACHE_DIR = "/cache"
TMP_DIR = "/tmp"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# The kubectl image's user; restic runs as it too wherever it reads no claim.
BACKUP_UID = 1000
# How long restic waits for another job's lock (prune and check lock the repository alone).
RETRY_LOCK = "30m"
JOBS_KEPT = 3
# A run the controller missed by more than this is skipped (and counted as missed), not started
# late; without it, a CronJob that missed over 100 runs stops scheduling altogether.
STARTING_DEADLINE_SECONDS = 3600
# A run still going after this is failed (a pod left Pending counts: the claim's node is down);
# an hourly run ends before the next one is due.
RUN_DEADLINE_SECONDS = {"hourly": 55 * 60, "daily": 6 * 3600, "weekly": 6 * 3600}
CHECK_DEADLINE_SECONDS = 6 * 3600
# The dump reaches the service's pod through the Kubernetes API: the `kubernetes` Service (the
# first address of k3s's service network 10.43.0.0/16) forwards to the API servers' port on
# the nodes' private addresses (bootstrap.API_PORT).
API_SERVICE_IP = "10.43.0.1"
KUBE_API_PORT = 6443
NODE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
RESTIC_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
KUBECTL_RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
# The ConfigMap's script, read-only for everyone.
SCRIPT_MODE = 0o444
TOKEN_SECONDS = 3600


def backup_host(app: AppSpec, name: str) -> str:
    """The restic host of a service's snapshots."""
    return f"{app.name}-{name}"


def backup_job(name: str) -> str:
    return f"backup-{name}"


def dump_file(name: str) -> str:
    return f"{DUMP_DIR}/{name}.dump"


def backed_up(app: AppSpec) -> list[tuple[str, Service]]:
    """The services a backup CronJob backs up (those owning a volume's claim: a volume several
    services mount is backed up once, with its first user), in name order; none when the spec
    turns backups off."""
    if not app.backups.enabled:
        return []
    return [(name, svc) for name, svc in app.sorted_services() if owned_volumes(app, name)]


def backup_script() -> str:
    """The ConfigMap's script (no spec value in it: the pods pass theirs as arguments)."""
    from blueprints.backup.node_backup import CHECK_SUBSET, NO_REPOSITORY, TAG

    return render_template(
        "k8s/blueprints-backup.sh.j2", tag=TAG, subset=CHECK_SUBSET, no_repository=NO_REPOSITORY
    )


def _backup_labels(app: AppSpec, component: str, of: str | None = None) -> dict[str, str]:
    labels = {LABEL_INSTANCE: app.name, LABEL_MANAGED: "blueprints", LABEL_COMPONENT: component}
    if of is not None:
        labels[BACKUP_OF] = of
    return labels


def _backup_meta(app: AppSpec, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": app.name, "labels": dict(labels)}


def _script_command(shell: str, *args: str) -> list[str]:
    return [shell, f"{SCRIPT_DIR}/{BACKUP_SCRIPT}", *args]


def _security(reads_claims: bool) -> dict[str, Any]:
    """A backup container's securityContext: no privilege escalation, a read-only root
    filesystem (scratch space is emptyDirs), no capability, a non-root user.

    Except for restic reading a claim: the files belong to the service's own user (postgres'
    999, say) with modes like 0700, and restic must read every one of them. It runs as root,
    but with every capability dropped save DAC_READ_SEARCH, which lets it pass read and search
    permission checks and nothing else (not write, chown or any other root power), on a claim
    mounted read-only. Root is needed because Kubernetes grants added capabilities to root only
    (no ambient capabilities for other users). DAC_READ_SEARCH is outside Pod Security's
    baseline list: a namespace enforcing baseline would need DAC_OVERRIDE, which also passes
    write checks, so the narrower one is kept."""
    context: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    if reads_claims:
        context["capabilities"]["add"] = ["DAC_READ_SEARCH"]
        context |= {"runAsUser": 0, "runAsNonRoot": False}
    else:
        context |= {"runAsUser": BACKUP_UID, "runAsGroup": BACKUP_UID, "runAsNonRoot": True}
    return context


def _env(values: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": escape_dollars(v)} for k, v in sorted(values.items())]


def _mount(name: str, path: str, read_only: bool = False) -> dict[str, Any]:
    return {"name": name, "mountPath": path, **({"readOnly": True} if read_only else {})}


def _restic_container(
    args: list[str], env: Mapping[str, str], mounts: list[dict[str, Any]], reads_claims: bool
) -> dict[str, Any]:
    return {
        "name": "restic",
        "image": RESTIC_IMAGE,
        # The image's entrypoint is restic itself; the script runs it (alpine's busybox sh).
        "command": _script_command("sh", *args),
        # The repository, its password and the bucket's keys.
        "envFrom": [{"secretRef": {"name": BACKUP_SECRET}}],
        "env": _env(
            {
                **env,
                "BACKUP_RETRY_LOCK": RETRY_LOCK,
                "RESTIC_CACHE_DIR": CACHE_DIR,
                "TMPDIR": TMP_DIR,
            }
        ),
        "resources": copy.deepcopy(RESTIC_RESOURCES),
        "securityContext": _security(reads_claims),
        "volumeMounts": [
            _mount("script", SCRIPT_DIR, read_only=True),
            _mount("cache", CACHE_DIR),
            _mount("tmp", TMP_DIR),
            *mounts,
        ],
    }


def _scratch_volumes() -> list[dict[str, Any]]:
    return [
        {"name": "script", "configMap": {"name": BACKUP_CONFIGMAP, "defaultMode": SCRIPT_MODE}},
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]


def _api_token_volume() -> dict[str, Any]:
    """What automountServiceAccountToken would mount, for the dumping container only (restic,
    holding the bucket's keys, gets no API token)."""
    return {
        "name": "kubernetes-api",
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_SECONDS}},
                {
                    "configMap": {
                        "name": "kube-root-ca.crt",
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    }
                },
                {
                    "downwardAPI": {
                        "items": [
                            {
                                "path": "namespace",
                                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                            }
                        ]
                    }
                },
            ],
        },
    }


def _pod_spec(containers: list[dict[str, Any]], volumes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": STOP_TIMEOUT_SECONDS,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": containers,
        "volumes": volumes,
    }


def _cron_job(
    app: AppSpec,
    name: str,
    labels: dict[str, str],
    schedule: str,
    deadline: int,
    pod: dict[str, Any],
) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": _backup_meta(app, name, labels),
        "spec": {
            "schedule": schedule,
            "timeZone": "Etc/UTC",
            # One run at a time; a failed run stays failed (no retry), listed by
            # `kubectl get jobs` until JOBS_KEPT newer ones failed.
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": STARTING_DEADLINE_SECONDS,
            "successfulJobsHistoryLimit": JOBS_KEPT,
            "failedJobsHistoryLimit": JOBS_KEPT,
            "jobTemplate": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "backoffLimit": 0,
                    "activeDeadlineSeconds": deadline,
                    "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
                },
            },
        },
    }


def _dump_access(app: AppSpec, name: str, labels: dict[str, str]) -> list[dict[str, Any]]:
    """A ServiceAccount allowed exactly to exec into the service's pod: `get` the pod (kubectl
    looks it up first) and `pods/exec`, `create` (SPDY, and WebSocket from Kubernetes 1.35 on)
    and `get` (WebSocket, kubectl's default, up to 1.34: kubernetes/kubernetes#134577)."""
    pod = f"{name}-0"
    account = backup_job(name)
    meta = _backup_meta(app, account, labels)
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta,
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": copy.deepcopy(meta),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods"],
                    "resourceNames": [pod],
                    "verbs": ["get"],
                },
                {
                    "apiGroups": [""],
                    "resources": ["pods/exec"],
                    "resourceNames": [pod],
                    "verbs": ["create", "get"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": copy.deepcopy(meta),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": app.name}],
        },
    ]


def _service_backup(app: AppSpec, name: str, svc: Service) -> list[dict[str, Any]]:
    """A service's backup CronJob (and, for a dump, the account it execs with)."""
    labels = _backup_labels(app, "backup", name)
    volumes = _scratch_volumes()
    env = {"BACKUP_HOST": backup_host(app, name), "BACKUP_KEEP": str(app.backups.keep)}
    objects: list[dict[str, Any]] = []
    if svc.backup is not None:
        volumes += [{"name": "dumps", "emptyDir": {}}, _api_token_volume()]
        dump = {
            "name": "dump",
            "image": KUBECTL_IMAGE,
            # bash, which the image has for sure (Rancher's own CI runs `/bin/bash -c` in it);
            # the script is POSIX sh.
            "command": _script_command(
                "bash",
                "dump",
                dump_file(name),
                "kubectl",
                f"--cache-dir={TMP_DIR}/kube-cache",
                "exec",
                f"--namespace={app.name}",
                f"{name}-0",
                f"--container={name}",
                "--",
                *(escape_dollars(a) for a in svc.backup.dump),
            ),
            # kuberlr runs the bundled kubectl that suits the server, never a downloaded one.
            "env": [{"name": "KUBERLR_ALLOWDOWNLOAD", "value": "false"}],
            "resources": copy.deepcopy(KUBECTL_RESOURCES),
            "securityContext": _security(False),
            "volumeMounts": [
                _mount("script", SCRIPT_DIR, read_only=True),
                _mount("dumps", DUMP_DIR),
                _mount("tmp", TMP_DIR),
                _mount("kubernetes-api", SERVICE_ACCOUNT_DIR, read_only=True),
            ],
        }
        restic = _restic_container(
            ["backup", DUMP_DIR], env, [_mount("dumps", DUMP_DIR, read_only=True)], False
        )
        pod = _pod_spec([restic], volumes)
        pod["initContainers"] = [dump]
        pod["serviceAccountName"] = backup_job(name)
        objects += _dump_access(app, name, labels)
    else:
        claims = owned_volumes(app, name)
        mounts = []
        for index, volume in enumerate(claims):
            volumes.append(
                {
                    "name": f"data-{index}",
                    "persistentVolumeClaim": {
                        "claimName": claim_name(app, volume),
                        "readOnly": True,
                    },
                }
            )
            mounts.append(_mount(f"data-{index}", f"{DATA_DIR}/{volume}", read_only=True))
        restic = _restic_container(
            ["backup", *(f"{DATA_DIR}/{v}" for v in claims)], env, mounts, True
        )
        pod = _pod_spec([restic], volumes)
        # A ReadWriteOnce claim is mounted on one node at a time: the pod runs beside the
        # service's (and waits, until its deadline, while that one has no node). While it runs
        # the claim stays on that node: a service pod moved elsewhere waits for it to end.
        pod["affinity"] = {
            "podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "labelSelector": {"matchLabels": _selector(app, name)},
                        "topologyKey": "kubernetes.io/hostname",
                    }
                ]
            }
        }
    objects.append(
        _cron_job(
            app,
            backup_job(name),
            labels,
            backup_cron(app.backups),
            RUN_DEADLINE_SECONDS[app.backups.schedule],
            pod,
        )
    )
    return objects


def _check_job(app: AppSpec) -> dict[str, Any]:
    """The weekly check: restic check of a tenth of the data, a snapshot for every service, the
    newest dump of every dumped service restored and not empty."""
    entries = [
        backup_host(app, name) + (f":{dump_file(name)}" if svc.backup is not None else "")
        for name, svc in backed_up(app)
    ]
    volumes = [*_scratch_volumes(), {"name": "scratch", "emptyDir": {}}]
    restic = _restic_container(
        ["check", *entries],
        {"BACKUP_SCRATCH": SCRATCH_DIR},
        [_mount("scratch", SCRATCH_DIR)],
        False,
    )
    return _cron_job(
        app,
        CHECK_JOB,
        _backup_labels(app, "backup-check"),
        check_cron(app.backups),
        CHECK_DEADLINE_SECONDS,
        _pod_spec([restic], volumes),
    )


def _api_policy(app: AppSpec, dumped: list[str]) -> dict[str, Any]:
    """The dumping pods may reach the Kubernetes API (default-deny stops them otherwise): the
    API servers' port on the private networks (where the Service forwards to), and the
    Service's own address, for a network plugin that filters before it forwards."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": API_POLICY,
            "namespace": app.name,
            "labels": _backup_labels(app, "backup"),
        },
        "spec": {
            "podSelector": {
                "matchLabels": {LABEL_INSTANCE: app.name, LABEL_COMPONENT: "backup"},
                "matchExpressions": [{"key": BACKUP_OF, "operator": "In", "values": dumped}],
            },
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [{"ipBlock": {"cidr": cidr}} for cidr in NODE_RANGES],
                    "ports": _tcp([KUBE_API_PORT]),
                },
                {"to": [{"ipBlock": {"cidr": f"{API_SERVICE_IP}/32"}}], "ports": _tcp([443])},
            ],
        },
    }


def backup_objects(app: AppSpec) -> list[dict[str, Any]]:
    """Every backup object but the Secret, in a stable order: the script's ConfigMap, per
    service with volumes its CronJob (after its exec account, for a dump), the dumping pods'
    way to the API, the weekly check. None when the spec turns backups off or keeps no data.
    No secret and nothing of the storage is in them: that is the Secret (backup_secret).

    A service backed up as files is not paused around its snapshot as on the VM rungs
    (Kubernetes cannot freeze a pod): restic reads the files while the service writes them. A
    service whose files are not consistent at every moment (a database) declares a dump."""
    services = backed_up(app)
    if not services:
        return []
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _backup_meta(app, BACKUP_CONFIGMAP, _backup_labels(app, "backup")),
            "data": {BACKUP_SCRIPT: backup_script()},
        }
    ]
    for name, svc in services:
        objects += _service_backup(app, name, svc)
    dumped = [name for name, svc in services if svc.backup is not None]
    if dumped:
        objects.append(_api_policy(app, dumped))
    objects.append(_check_job(app))
    return objects


def backup_secret(app: AppSpec, storage: Storage, password: str, secret_key: str) -> dict[str, Any]:
    """The Secret the restic containers read their environment from."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _backup_meta(app, BACKUP_SECRET, _backup_labels(app, "backup")),
        "type": "Opaque",
        "stringData": {
            "AWS_ACCESS_KEY_ID": storage.access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_DEFAULT_REGION": storage.region,
            "RESTIC_PASSWORD": password,
            "RESTIC_REPOSITORY": storage.repository,
        },
    }


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
    backup: Storage | None = None,
    backup_password: str = "<secret:backup-password>",
    backup_secret_key: str = "<secret:backupSecretKey>",
) -> dict[str, str]:
    """File name -> multi-document YAML of every object the stack applies (for rendering and
    validation; the component sends the same objects one by one). `backup`: the stack's backup
    storage, None where it has none (then no backup object either)."""
    files = {
        "cluster.yaml": _documents([storage_class(cloud), traefik_config(), cluster_issuer(app)]),
        "app.yaml": _documents(app_objects(app, cloud, digests)),
    }
    secret_docs = secret_objects(app, secrets)
    if secret_docs:
        files["app-secrets.yaml"] = _documents(secret_docs)
    backups = backup_objects(app) if backup is not None else []
    if backup is not None and backups:
        files["backup.yaml"] = _documents(backups)
        files["backup-secret.yaml"] = _documents(
            [backup_secret(app, backup, backup_password, backup_secret_key)]
        )
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
