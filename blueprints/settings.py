"""Stack settings: *how* the app runs (blueprint, target, sizes), read from Pulumi stack config.

The app spec says what the app needs; these settings live in stacks/Pulumi.<stack>.yaml under the
`blueprints:` namespace, with a default for every key so a stack file only states what differs.
"""

from __future__ import annotations

import ipaddress
import json
import re
import string
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel as _pydantic_camel

from blueprints.spec import FieldProblem, SpecError, problems


def to_camel(field: str) -> str:
    """The stack file's key of a settings field: camelCase, where a digit does not capitalize
    the letter after it (k3s_version is k3sVersion, not pydantic's k3SVersion)."""
    return re.sub(
        r"([0-9])([A-Z])", lambda m: m.group(1) + m.group(2).lower(), _pydantic_camel(field)
    )


NAMESPACE = "blueprints"

# Hetzner Cloud locations and the network zone each belongs to (private networks are per zone).
HCLOUD_LOCATIONS = {
    "fsn1": "eu-central",
    "nbg1": "eu-central",
    "hel1": "eu-central",
    "ash": "us-east",
    "hil": "us-west",
    "sin": "ap-southeast",
}

BLUEPRINTS = ("single-vm", "compose", "nomad", "k8s")
TARGETS = ("hcloud", "localstack", "aws")

# Server size per (blueprint, cloud). hcloud cx23: 2 vCPU / 4 GB x86 (the 2025 cost-optimized line);
# aws t3.small: 2 vCPU / 2 GB, a Nitro type, so EBS volumes appear as NVMe with stable by-id paths.
DEFAULT_SERVER_TYPE = {
    ("single-vm", "hcloud"): "cx23",
    ("single-vm", "aws"): "t3.small",
    ("compose", "hcloud"): "cx23",
    ("compose", "aws"): "t3.small",
    ("nomad", "hcloud"): "cx23",
    ("nomad", "aws"): "t3.small",
    ("k8s", "hcloud"): "cx23",
    ("k8s", "aws"): "t3.medium",
}

# LocalStack's EC2 accepts any AMI id it knows; this one is in its default image list (Ubuntu).
LOCALSTACK_AMI = "ami-df5de72bdb3b"
LOCALSTACK_ENDPOINT = "http://localhost:4566"

_HCLOUD_ONLY = ("location", "image", "hcloud_ssh_key")
_AWS_ONLY = ("region", "zone", "ami")
_LOCALSTACK_ONLY = ("localstack_endpoint",)
# Keys that mean something to one blueprint only; a stack of another blueprint may not set them.
BLUEPRINT_ONLY: dict[str, tuple[str, ...]] = {
    "single-vm": (
        "active",
        "watch_interval",
        "watch_failures",
        "probe_timeout",
        "promote_timeout",
        "health_url",
        "spare_mode",
        "lock_ttl",
        "api_timeout",
    ),
    "compose": ("floating_ip",),
    "nomad": (
        "nomad_version",
        "heartbeat_grace",
        "min_heartbeat_ttl",
        "lost_after",
        "reschedule_delay",
    ),
    "k8s": (
        "node_monitor_grace_period",
        "not_ready_toleration_seconds",
        "unreachable_toleration_seconds",
        "k3s_version",
        "found_cluster",
        "etcd_snapshot_schedule",
        "etcd_snapshot_retention",
    ),
}
# The fields a single-vm stack's healthUrl template may use (blueprints.failover.health).
HEALTH_URL_FIELDS = ("address", "domain", "path")
# Stack secrets outside `blueprints:secrets` (the app's): set with `pulumi config set --secret`.
BACKUP_SECRET_KEY = "backupSecretKey"
# The k3s release a k8s stack runs unless it pins another (blueprints:k3sVersion).
K3S_VERSION = "v1.34.9+k3s1"


class StackSettings(BaseModel):
    """Everything a stack file may set under `blueprints:`; keys are camelCase in the file."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )

    blueprint: Literal["single-vm", "compose", "nomad", "k8s"] = Field(
        description="Which rung of the ladder this stack runs."
    )
    target: Literal["hcloud", "localstack", "aws"] = Field(
        description="Where it runs: Hetzner Cloud, AWS emulated by LocalStack, or real AWS."
    )
    spec: str = Field(
        default="examples/app.yaml", description="App spec file, relative to the Pulumi project."
    )
    active: Literal["primary", "spare"] = Field(
        default="primary",
        description="single-vm: the node that holds the data volume and the floating IP. "
        "`blueprints promote` records a failover here so the next `pulumi up` keeps it.",
    )
    server_type: str | None = Field(
        default=None, description="Server type / instance type; a per-blueprint default if unset."
    )
    location: str = Field(
        default="fsn1",
        description="hcloud location of servers, volume and floating IP: "
        + ", ".join(HCLOUD_LOCATIONS),
    )
    image: str = Field(default="ubuntu-24.04", description="hcloud OS image.")
    hcloud_ssh_key: str | None = Field(
        default=None,
        description="hcloud: name of an SSH key already in the project, registered on the "
        "servers instead of uploading the stack's deploy key (Hetzner refuses to hold one "
        "public key twice).",
    )
    region: str = Field(default="eu-central-1", description="aws/localstack region.")
    zone: str | None = Field(
        default=None,
        description="aws/localstack availability zone; the region's 'a' zone if unset.",
    )
    ami: str | None = Field(
        default=None,
        description="aws AMI id; on aws the newest Ubuntu 24.04 is looked up if unset, on "
        f"localstack {LOCALSTACK_AMI} is used.",
    )
    network_cidr: str = Field(default="10.0.0.0/16", description="Private network range.")
    subnet_cidr: str = Field(default="10.0.1.0/24", description="Subnet the servers live in.")
    localstack_endpoint: str = Field(
        default=LOCALSTACK_ENDPOINT, description="LocalStack gateway URL (localstack target only)."
    )
    deployer_networks: list[str] | None = Field(
        default=None,
        description="single-vm, compose: networks `pulumi up` runs from; the release goes over "
        "SSH from there, so the firewall admits SSH from them. Unset: the spec's admin.cidrs. A "
        "GitLab shared runner has no fixed address: use a runner of your own (its egress "
        "address/32) or 0.0.0.0/0 (key-only SSH; the deploy key is the stack's).",
    )
    protect_data: bool = Field(
        default=True,
        description="Protect the data volume and the floating IP against delete and replace.",
    )

    # -- failover (single-vm): the watchdog and the promotion ------------------------------
    # A probe every 5 s is negligible load; 3 failures in a row (about 15 s) ride out a proxy
    # restart or a network blip yet keep detection far inside a one-minute recovery budget.
    watch_interval: int = Field(
        default=5, ge=1, le=300, description="Seconds between the watchdog's health probes."
    )
    watch_failures: int = Field(
        default=3, ge=1, le=100, description="Consecutive failed probes that trigger a promotion."
    )
    probe_timeout: int = Field(
        default=3, ge=1, le=60, description="Seconds one health probe may take."
    )
    promote_timeout: int = Field(
        default=300,
        ge=10,
        le=3600,
        description="Seconds the promoted node may take to boot and answer its health check.",
    )
    spare_mode: Literal["warm", "cold"] | None = Field(
        default=None,
        description="single-vm: `warm` keeps the standby running without the volume (images "
        "of the current release pulled, OS updates applied), so a promotion boots nothing; "
        "`cold` keeps it powered off. Unset: warm on hcloud (a powered-off server is billed in "
        "full), cold on aws and localstack (a stopped instance costs only its disk).",
    )
    lock_ttl: int = Field(
        default=120,
        ge=30,
        le=3600,
        description="single-vm: seconds a promotion's lock stays valid without a heartbeat, "
        "judged by the cloud API's clock; a promoter that died longer ago than this no longer "
        "holds the stack.",
    )
    api_timeout: int = Field(
        default=10,
        ge=1,
        le=120,
        description="single-vm: seconds one cloud API request may take (watch, promote, park).",
    )
    health_url: str = Field(
        default="https://{domain}{path}",
        description="Health URL template; {address} is the node or floating IP probed, {domain} "
        "and {path} come from the spec (path: the public service's http health check).",
    )

    # -- compose ------------------------------------------------------------------------------
    floating_ip: bool = Field(
        default=True,
        description="compose: put the VM behind a floating IP (Hetzner) / Elastic IP (AWS), so "
        "a rebuilt VM keeps the address and DNS needs no change.",
    )

    # -- nomad --------------------------------------------------------------------------------
    # Failure timing, so recovery time can be computed from config: a node is declared down
    # after its heartbeat TTL (at least min_heartbeat_ttl) plus heartbeat_grace; its
    # allocations are then lost and replaced at once (or after lost_after, if set).
    nomad_version: str = Field(
        default="1.10.5",
        description="nomad: Nomad version installed from HashiCorp's apt repository (pinned).",
    )
    heartbeat_grace: int = Field(
        default=10,
        ge=1,
        le=3600,
        description="nomad: seconds a server waits past a client's heartbeat TTL before it "
        "marks the node down (Nomad's default: 10s).",
    )
    min_heartbeat_ttl: int = Field(
        default=10,
        ge=1,
        le=3600,
        description="nomad: shortest heartbeat TTL, in seconds, the servers give a client "
        "(Nomad's default: 10s).",
    )
    lost_after: int = Field(
        default=0,
        ge=0,
        le=86400,
        description="nomad: seconds the allocations of a node that missed its heartbeat stay "
        "'unknown' (and may reconnect) before they are lost; 0: no disconnect block, they are "
        "lost at once (Nomad's default).",
    )
    reschedule_delay: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="nomad: seconds before a failed allocation is placed again, doubling per "
        "attempt up to 1h (Nomad's default for service jobs: 30s, exponential).",
    )

    @field_validator("nomad_version")
    @classmethod
    def _nomad_version(cls, v: str) -> str:
        if not re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", v):
            raise ValueError(f"must be a Nomad release like 1.10.5 (got {v!r})")
        return v

    # -- k8s ----------------------------------------------------------------------------------
    # How fast Kubernetes gives up on a dead node. Its own defaults (50s grace, then 300s of
    # toleration) evict pods about 5m50s after a node dies; these defaults make it about 60s.
    node_monitor_grace_period: int = Field(
        default=30,
        ge=10,
        le=600,
        description="k8s: seconds without a heartbeat before a node is marked NotReady/Unknown "
        "(kube-controller-manager --node-monitor-grace-period; Kubernetes' default is 50).",
    )
    not_ready_toleration_seconds: int = Field(
        default=30,
        ge=0,
        le=3600,
        description="k8s: seconds a pod stays bound to a NotReady node before it is evicted "
        "(kube-apiserver --default-not-ready-toleration-seconds; Kubernetes' default is 300).",
    )
    unreachable_toleration_seconds: int = Field(
        default=30,
        ge=0,
        le=3600,
        description="k8s: seconds a pod stays bound to an unreachable node before it is evicted "
        "(kube-apiserver --default-unreachable-toleration-seconds; Kubernetes' default is 300).",
    )

    k3s_version: str = Field(
        default=K3S_VERSION,
        description="k8s: k3s release on every node (pinned; a change replaces the nodes one "
        "after another, each Ready again before the next).",
    )

    found_cluster: bool = Field(
        default=False,
        description="k8s: let the first control plane found a new cluster although this stack "
        "founded one before (all control planes lost; then restore etcd from a snapshot). Set "
        "it for one `pulumi up`, then remove it: otherwise a replaced first control plane that "
        "reaches no peer waits and fails instead of starting an empty cluster.",
    )

    @field_validator("k3s_version")
    @classmethod
    def _k3s_version(cls, v: str) -> str:
        if not re.fullmatch(r"v1\.[0-9]+\.[0-9]+\+k3s[0-9]+", v):
            raise ValueError(f"must be a k3s release like {K3S_VERSION} (got {v!r})")
        return v

    # The stack's backup storage: an S3 bucket off the servers. Every rung keeps its restic
    # repository there (folder restic/<app>-<stack>), and k8s its etcd snapshots too (folder
    # etcd-snapshots/). Without a bucket a stack takes no backups, and its plan says what to set.
    backup_bucket: str | None = Field(
        default=None,
        description="S3 bucket (Hetzner Object Storage, AWS S3, LocalStack S3) the stack's "
        "backups go to: the app's data (restic) and, on k8s, the etcd snapshots. aws and "
        "localstack stacks create it; on hcloud, create it in the Cloud Console first. Its "
        f"secret key is the stack secret blueprints:{BACKUP_SECRET_KEY}. Unset: no backups.",
    )
    backup_endpoint: str | None = Field(
        default=None,
        description="The bucket's S3 endpoint URL, like https://fsn1.your-objectstorage.com "
        "(required on hcloud; aws: AWS S3 of the region; localstack: localstackEndpoint).",
    )
    backup_region: str | None = Field(
        default=None,
        description="The bucket's region (hcloud: the location, aws: the region, if unset).",
    )
    backup_access_key: str | None = Field(
        default=None, description="Access key id for the backup bucket."
    )
    etcd_snapshot_schedule: str = Field(
        default="0 */6 * * *",
        description="k8s: when each control plane snapshots etcd (cron, in the node's time "
        "zone, UTC; k3s's default is every 12 hours).",
    )
    etcd_snapshot_retention: int = Field(
        default=20,
        ge=1,
        le=1000,
        description="k8s: snapshots each control plane keeps (on disk and in the bucket).",
    )

    @field_validator("backup_bucket")
    @classmethod
    def _bucket(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", v):
            raise ValueError(
                f"must be an S3 bucket name: 3 to 63 lower-case letters, digits, dots and "
                f"hyphens (got {v!r})"
            )
        return v

    @field_validator("backup_access_key")
    @classmethod
    def _access_key(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9._+/=-]{1,256}", v):
            raise ValueError(
                "must be an S3 access key id: letters, digits and ._+/=- only, like "
                "AKIAIOSFODNN7EXAMPLE"
            )
        return v

    @field_validator("backup_endpoint")
    @classmethod
    def _s3_endpoint(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?", v):
            raise ValueError(
                f"must be an http(s) URL of a host, like https://fsn1.your-objectstorage.com "
                f"(got {v!r})"
            )
        return v.rstrip("/") if v else v

    @field_validator("etcd_snapshot_schedule")
    @classmethod
    def _cron(cls, v: str) -> str:
        if not re.fullmatch(r"[0-9*/,-]+( [0-9*/,-]+){4}", v):
            raise ValueError(
                f"must be a cron schedule of five fields like '0 */6 * * *' (got {v!r})"
            )
        return v

    @field_validator("network_cidr", "subnet_cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        try:
            net = ipaddress.ip_network(v, strict=True)
        except ValueError:
            raise ValueError(f"must be a private IPv4 range like 10.0.0.0/16 (got {v!r})") from None
        if net.version != 4 or not net.is_private:
            raise ValueError(f"must be a private IPv4 range like 10.0.0.0/16 (got {v!r})")
        return v

    @field_validator("deployer_networks", mode="before")
    @classmethod
    def _deployer_list(cls, v: Any) -> Any:
        # Pulumi config hands a YAML list to the program as its JSON text.
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                raise ValueError(
                    f"must be a list of networks like ['198.51.100.7/32'] (got {v!r})"
                ) from None
        return v

    @field_validator("deployer_networks")
    @classmethod
    def _deployer_cidrs(cls, v: list[str] | None) -> list[str] | None:
        for cidr in v or []:
            try:
                ipaddress.ip_network(cidr, strict=True)
            except ValueError:
                raise ValueError(
                    f"{cidr!r} is not a network like 198.51.100.7/32 or 2001:db8::/48"
                ) from None
        return v

    @field_validator("health_url")
    @classmethod
    def _health_url(cls, v: str) -> str:
        # Checked when the stack is read, so a bad template can never surface mid-promotion.
        allowed = (
            "must be an http or https URL whose host is {address} or {domain} (a :port may "
            "follow) and whose only fields are {address}, {domain} and {path}, like "
            f"https://{{domain}}{{path}} or http://{{address}}:8080{{path}} (got {v!r})"
        )
        try:
            fields = list(string.Formatter().parse(v))
        except ValueError:
            raise ValueError(allowed) from None
        for _text, name, spec, conversion in fields:
            if name is not None and (name not in HEALTH_URL_FIELDS or spec or conversion):
                raise ValueError(allowed)
        if not re.fullmatch(r"https?://\{(address|domain)\}(:[0-9]{1,5})?([/?{].*)?", v, re.S):
            raise ValueError(allowed)
        sample = urlsplit(v.format(address="192.0.2.1", domain="example.org", path="/healthz"))
        try:
            port = sample.port
        except ValueError:
            port = 0
        if (
            sample.hostname not in ("192.0.2.1", "example.org")
            or port == 0
            or any(c.isspace() for c in v)
        ):
            raise ValueError(allowed)
        return v

    @field_validator("server_type")
    @classmethod
    def _server_type(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,30}", v):
            raise ValueError(f"must be a server or instance type like cx23 or t3.small (got {v!r})")
        return v

    @field_validator("localstack_endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL like {LOCALSTACK_ENDPOINT} (got {v!r})")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> StackSettings:
        if self.target == "hcloud" and self.location not in HCLOUD_LOCATIONS:
            raise FieldProblem(
                ("location",),
                f"unknown hcloud location {self.location!r}; "
                f"allowed: {', '.join(HCLOUD_LOCATIONS)}",
            )
        subnet = ipaddress.ip_network(self.subnet_cidr)
        if subnet.num_addresses < 16:
            raise FieldProblem(
                ("subnet_cidr",),
                f"{self.subnet_cidr} is too small; the servers use host addresses .10 and up, "
                "so use a /28 or larger",
            )
        if not subnet.subnet_of(ipaddress.ip_network(self.network_cidr)):  # type: ignore[arg-type]
            raise FieldProblem(
                ("subnet_cidr",),
                f"{self.subnet_cidr} is not inside networkCidr {self.network_cidr}",
            )
        if self.zone is not None and not self.zone.startswith(self.region):
            raise FieldProblem(("zone",), f"zone {self.zone!r} is not in region {self.region!r}")
        if self.backup_bucket is not None:
            if self.backup_access_key is None:
                raise FieldProblem(
                    ("backup_access_key",),
                    "is required with backupBucket: the access key id of the bucket",
                )
            if self.cloud == "hcloud" and self.backup_endpoint is None:
                raise FieldProblem(
                    ("backup_endpoint",),
                    "is required with backupBucket on hcloud: the Object Storage "
                    "endpoint, like https://fsn1.your-objectstorage.com",
                )
        return self

    def backup_storage(self) -> tuple[str, str] | None:
        """The backup bucket's S3 endpoint (an http(s) URL) and region; None without a bucket."""
        if self.backup_bucket is None:
            return None
        if self.backup_endpoint is not None:
            url = self.backup_endpoint
        elif self.target == "localstack":
            url = self.localstack_endpoint
        elif self.cloud == "aws":
            url = f"https://s3.{self.region}.amazonaws.com"
        else:  # refused by _consistent
            raise ValueError("an hcloud backup bucket needs backupEndpoint")
        region = self.backup_region or (self.location if self.cloud == "hcloud" else self.region)
        return url, region

    @property
    def spare(self) -> str:
        """single-vm: the standby's mode, `warm` or `cold` (spare_mode, else the cloud's)."""
        if self.spare_mode is not None:
            return self.spare_mode
        return "warm" if self.cloud == "hcloud" else "cold"

    @property
    def cloud(self) -> str:
        """The provider family: localstack is the aws target pointed at an emulator."""
        return "aws" if self.target in ("aws", "localstack") else "hcloud"

    @property
    def size(self) -> str:
        return self.server_type or DEFAULT_SERVER_TYPE[(self.blueprint, self.cloud)]

    @property
    def availability_zone(self) -> str:
        return self.zone or f"{self.region}a"

    @property
    def network_zone(self) -> str:
        return HCLOUD_LOCATIONS.get(self.location, "eu-central")


_UNKNOWN = "unknown key; allowed keys here: "


def config_key(field: str) -> str:
    return f"{NAMESPACE}:{to_camel(field)}"


def _allowed_fields(raw: dict[str, Any]) -> list[str]:
    """The keys a stack may set, narrowed by its blueprint and target when those are valid."""
    blueprint, target = raw.get("blueprint"), raw.get("target")
    excluded: set[str] = set()
    if blueprint in BLUEPRINT_ONLY:
        excluded.update(f for b, fs in BLUEPRINT_ONLY.items() if b != blueprint for f in fs)
    if target in TARGETS:
        cloud = "aws" if target in ("aws", "localstack") else "hcloud"
        excluded.update(_HCLOUD_ONLY if cloud != "hcloud" else ())
        excluded.update(_AWS_ONLY if cloud != "aws" else ())
        excluded.update(_LOCALSTACK_ONLY if target != "localstack" else ())
    return [f for f in StackSettings.model_fields if f not in excluded]


def parse_settings(raw: dict[str, Any], source: str) -> StackSettings:
    """Validate `blueprints:` config (keys without namespace, camelCase) into StackSettings."""
    try:
        settings = StackSettings.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for line in problems(StackSettings, exc):
            path, _, msg = line.partition(": ")
            key = path.split(".")[0].split("[")[0]
            if key in StackSettings.model_fields:
                key = to_camel(key)
            if msg.startswith(_UNKNOWN):
                msg = _UNKNOWN + ", ".join(sorted(to_camel(f) for f in _allowed_fields(raw)))
            lines.append(f"{source}: {NAMESPACE}:{key}: {msg}")
        raise SpecError(lines) from None

    def given(field: str) -> bool:
        return to_camel(field) in raw or field in raw

    stray = [
        f"{source}: {config_key(f)}: does not apply to target {settings.target}; "
        "remove it from the stack file"
        for f in (
            *([] if settings.cloud == "hcloud" else _HCLOUD_ONLY),
            *([] if settings.cloud == "aws" else _AWS_ONLY),
            *([] if settings.target == "localstack" else _LOCALSTACK_ONLY),
        )
        if given(f)
    ]
    stray += [
        f"{source}: {config_key(f)}: applies to the {owner} blueprint only, not to "
        f"{settings.blueprint}; remove it from the stack file"
        for owner, fields in BLUEPRINT_ONLY.items()
        if owner != settings.blueprint
        for f in fields
        if given(f)
    ]
    if stray:
        raise SpecError(stray)
    return settings


def read_settings(get: Callable[[str], Any], source: str) -> StackSettings:
    """Read every known key through `get(camelKey)` (pulumi.Config.get) and validate."""
    raw = {}
    for name in StackSettings.model_fields:
        value = get(to_camel(name))
        if value is not None:
            raw[to_camel(name)] = value
    return parse_settings(raw, source)
