"""Stack settings: *how* the app runs (blueprint, target, sizes), read from Pulumi stack config.

The app spec says what the app needs; these settings live in stacks/Pulumi.<stack>.yaml under the
`blueprints:` namespace, with a default for every key so a stack file only states what differs.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import difflib
import functools
import importlib
import ipaddress
import json
import math
import re
import string
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel as _pydantic_camel

from blueprints.spec import FieldProblem, SpecError, problems
from blueprints.yaml_text import fast_load


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


def priced_locations() -> list[str]:
    """The Hetzner locations a stack may use: those the price table covers (server_problems)."""
    from blueprints.costs import shipped_tables

    return [place for place in HCLOUD_LOCATIONS if place in shipped_tables()["hcloud"].places]


BLUEPRINTS = ("single-vm", "compose", "nomad", "k8s")
TARGETS = ("hcloud", "localstack", "aws")

# Server size per (blueprint, cloud). hcloud cx23: 2 vCPU / 4 GB x86 (the 2025 cost-optimized line);
# aws t3.medium: 2 vCPU / 4 GiB, the same size, a Nitro type, so EBS volumes appear as NVMe with
# stable by-id paths. Both hold the example app with the room blueprints/capacity.py asks for.
DEFAULT_SERVER_TYPE = {
    ("single-vm", "hcloud"): "cx23",
    ("single-vm", "aws"): "t3.medium",
    ("compose", "hcloud"): "cx23",
    ("compose", "aws"): "t3.medium",
    ("nomad", "hcloud"): "cx23",
    ("nomad", "aws"): "t3.medium",
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
        description="hcloud location of servers, volume and floating IP, one the price table "
        "covers: " + ", ".join(priced_locations()),
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
    overcommit: bool = Field(
        default=False,
        description="Plan although the app's cpu and memory do not fit the servers: each "
        "shortfall of a total a warning instead of an error; one instance larger than a server "
        "stays an error (blueprints/capacity.py says what is checked).",
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
                f"allowed: {', '.join(priced_locations())}",
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


def parse_settings(
    raw: dict[str, Any], source: str, lines: Mapping[str, int] | None = None
) -> StackSettings:
    """Validate `blueprints:` config (keys without namespace, camelCase) into StackSettings.

    `lines`: the stack file's line of each key (camelCase, without namespace), where known;
    a problem with such a key is reported as `source:line: blueprints:key: ...`.
    """

    def at(key: str) -> str:
        line = (lines or {}).get(key)
        return f"{source}:{line}" if line else source

    # A setting may be written camelCase or snake_case, but once only.
    twice = [
        f for f in StackSettings.model_fields if to_camel(f) != f and {f, to_camel(f)} <= set(raw)
    ]
    out = []
    for field in twice:
        camel = to_camel(field)
        first, second = (lines or {}).get(camel), (lines or {}).get(field)
        given = (
            f"{camel} on line {first}, {field} on line {second}"
            if first and second
            else f"as {NAMESPACE}:{camel} and as {NAMESPACE}:{field}"
        )
        out.append(f"{at(camel)}: {NAMESPACE}:{camel}: is given twice ({given}); keep one")
    raw = {k: v for k, v in raw.items() if k not in twice}
    try:
        settings = StackSettings.model_validate(raw)
    except ValidationError as exc:
        for line in problems(StackSettings, exc):
            path, _, msg = line.partition(": ")
            key = path.split(".")[0].split("[")[0]
            if key in StackSettings.model_fields:
                key = to_camel(key)
            if msg.startswith(_UNKNOWN):
                allowed = sorted(to_camel(f) for f in _allowed_fields(raw))
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean {NAMESPACE}:{close[0]}? " if close else ""
                msg = f"unknown key; {hint}allowed keys here: " + ", ".join(allowed)
            out.append(f"{at(key)}: {NAMESPACE}:{key}: {msg}")
        raise SpecError(out) from None
    if out:
        raise SpecError(out)

    def given(field: str) -> bool:
        return to_camel(field) in raw or field in raw

    stray = [
        f"{at(to_camel(f))}: {config_key(f)}: does not apply to target {settings.target}; "
        "remove it from the stack file"
        for f in (
            *([] if settings.cloud == "hcloud" else _HCLOUD_ONLY),
            *([] if settings.cloud == "aws" else _AWS_ONLY),
            *([] if settings.target == "localstack" else _LOCALSTACK_ONLY),
        )
        if given(f)
    ]
    stray += [
        f"{at(to_camel(f))}: {config_key(f)}: applies to the {owner} blueprint only, not to "
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


# ---------------------------------------------------------------------------------------------
# Stack files: stacks/Pulumi.<stack>.yaml as written, with the line of every key

# The top-level keys Pulumi reads in a stack file.
STACK_FILE_KEYS = ("config", "encryptedkey", "encryptionsalt", "environment", "secretsprovider")
# `blueprints:` keys that are not settings: the app's secrets and the backup bucket's secret key.
SECRETS_KEY = "secrets"
NOT_SETTINGS = (SECRETS_KEY, BACKUP_SECRET_KEY)
# Namespaces a stack file may use: this project's, Pulumi's own, and the providers' whose
# stack config the program reads (see provider_keys). The aws and localstack stacks make an AWS
# provider of their own, which reads no `aws:` config; `aws:region` is read by the merge-request
# report only (the region its prices are for).
PROVIDER_NAMESPACES = ("hcloud", "aws")
PULUMI_NAMESPACE = "pulumi"
NAMESPACES = (NAMESPACE, *PROVIDER_NAMESPACES, PULUMI_NAMESPACE)
AWS_KEYS = ("region",)


class StackFile:
    """One stack file as Pulumi reads it: its `config:` mapping, each value as Pulumi hands it to
    a program (a scalar as its text, a mapping or list as an object; see _pulumi_text), the line
    each key is on (`key`, and `key.sub` for the keys of a mapping value) and the name of the
    project the file belongs to (from the nearest Pulumi.yaml above it; None without one)."""

    def __init__(
        self,
        shown: str,
        config: dict[str, Any],
        lines: dict[str, int],
        project: str | None = None,
    ):
        self.shown = shown
        self.config = config
        self.lines = lines
        self.project = project

    def at(self, key: str) -> str:
        """`file:line` of a config key, or the file alone when the key is not in it."""
        line = self.lines.get(key)
        return f"{self.shown}:{line}" if line else self.shown


# How Pulumi reads a stack file (sdk/go/common/workspace/loaders.go, LoadProjectStackBytes): Go's
# yaml.v3 decodes it into plain values, Pulumi writes those back as YAML and decodes that again,
# each config value into a string (an object as its JSON). So a plain scalar gets yaml.v3's type,
# not YAML 1.1's: `yes`, `on`, `1:30` and `2024-01-01` stay text; true/false and null are words
# only in the three spellings true, True, TRUE; a number comes back in Go's spelling (1.10 as
# 1.1, 0x10 as 16, 010 as 8, 1e3 as 1000). The reader below composes nodes only (no PyYAML
# types) and gives each plain scalar the tag _PLAIN, so that yaml.v3's rules can decide.
_PLAIN = "!blueprints/plain"
_YAML_TAG = "tag:yaml.org,2002:"
_STR_TAG = _YAML_TAG + "str"
_GO_WORDS: dict[str, Any] = {
    **dict.fromkeys(("true", "True", "TRUE"), True),
    **dict.fromkeys(("false", "False", "FALSE"), False),
    **dict.fromkeys(("", "~", "null", "Null", "NULL"), None),
    **dict.fromkeys((".nan", ".NaN", ".NAN"), math.nan),
    **{
        f"{sign}.{word}": -math.inf if sign == "-" else math.inf
        for sign in ("", "+", "-")
        for word in ("inf", "Inf", "INF")
    },
}
# strconv.ParseInt(s, 0, 64) (then ParseUint) on the text without its underscores; then, if it
# has yamlStyleFloat's shape, strconv.ParseFloat; a scalar starting with '.' is tried as a float.
_GO_INT = re.compile(r"([-+]?)(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)")
_GO_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_GO_DOT_FLOAT = re.compile(r"\.[0-9]+([eE][-+]?[0-9]+)?")
_MERGE = "<<"


class _Reader(yaml.SafeLoader):
    """Composes a YAML document into nodes, a plain scalar tagged _PLAIN (nothing is
    constructed: no dates, no bytes, no merged mappings)."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            return _PLAIN
        return super().resolve(kind, value, implicit)

    def compose_scalar_node(self, anchor: Any) -> yaml.ScalarNode:
        tag = self.peek_event().tag
        node = super().compose_scalar_node(anchor)
        if tag == "!":  # the non-specific tag: text, for yaml.v3 as for YAML
            node.tag = _STR_TAG
        return node


def _go_int(plain: str) -> int | None:
    found = _GO_INT.fullmatch(plain)
    if found is None:
        return None
    sign, body = found.groups()
    base = {"0x": 16, "0o": 8, "0b": 2}.get(body[:2].lower())
    number = int(body[2:], base) if base else int(body, 8 if body.startswith("0") else 10)
    number = -number if sign == "-" else number
    if -(2**63) <= number < 2**63 or (not sign and number < 2**64):
        return number
    return None


def _go_plain(text: str) -> Any:
    """A plain scalar as yaml.v3 decodes it into an interface{}: None, a bool, an int, a float
    or the text (a timestamp too: yaml.v3 keeps it as text there)."""
    if text in _GO_WORDS:
        return _GO_WORDS[text]
    if text[:1] == ".":
        return float(text) if _GO_DOT_FLOAT.fullmatch(text) else text
    if text[:1] in tuple("0123456789+-"):
        plain = text.replace("_", "")
        number = _go_int(plain)
        if number is not None:
            return number
        if _GO_FLOAT.fullmatch(plain) and math.isfinite(float(plain)):
            return float(plain)
    return text


def _go_float(value: float) -> str:
    """A float as yaml.v3 writes it: strconv.FormatFloat(f, 'g', -1, 64), .inf/.nan words."""
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    text = "".join(map(str, digits)).rstrip("0")
    minus = "-" if sign else ""
    if not text:
        return minus + "0"
    point = len(digits) + int(exponent)  # the value is 0.<digits> x 10**point
    if point - 1 < -4 or point - 1 >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{point - 1:+03d}"
    if point <= 0:
        return f"{minus}0.{'0' * -point}{text}"
    if point >= len(text):
        return minus + text + "0" * (point - len(text))
    return f"{minus}{text[:point]}.{text[point:]}"


def _pulumi_text(value: Any) -> str:
    """A decoded scalar as Pulumi hands it to the program: yaml.v3's spelling, null as ''."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    return str(value)


def _scalar(node: yaml.ScalarNode) -> tuple[Any, str | None]:
    """(the scalar as yaml.v3 decodes it into an interface{}, why Pulumi could not read it)."""
    tag, text = node.tag, node.value
    if tag == _PLAIN:
        return _go_plain(text), None
    if tag == _YAML_TAG + "binary":
        try:
            data = base64.b64decode(re.sub(r"[\r\n]", "", text), validate=True)
            return data.decode("utf-8"), None
        except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
            return text, "is !!binary, but not base64 of UTF-8 text; write the text itself"
    kinds = {"int": int, "float": (int, float), "bool": bool, "null": type(None)}
    kind = tag[len(_YAML_TAG) :] if tag.startswith(_YAML_TAG) else None
    if kind in kinds:
        value = _go_plain(text)
        ok = isinstance(value, kinds[kind]) and not (kind != "bool" and isinstance(value, bool))
        if not ok:
            return (
                text,
                f"is tagged !!{kind}, and yaml.v3 (Pulumi's reader) refuses {text!r} as one",
            )
        return float(value) if kind == "float" else value, None
    return text, None  # quoted, !!str, !!timestamp, a tag of another kind: text


def _is_merge(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _PLAIN and node.value == _MERGE


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == _PLAIN and _go_plain(node.value) is None:
        return "an empty value"
    return repr(node.value)


def _is_text(node: yaml.Node) -> bool:
    """Whether yaml.v3 reads the node as a string (as a mapping key must be here)."""
    if not isinstance(node, yaml.ScalarNode) or _is_merge(node):
        return False
    value, problem = _scalar(node)
    return isinstance(value, str) and problem is None


def _duplicate(key: str, first: int) -> str:
    # yaml.v3 refuses a mapping that gives a key twice, and Pulumi with it the whole file.
    return (
        f"{key}: is given twice (first on line {first}); Pulumi refuses a stack file that "
        "gives a key twice: keep one"
    )


_MERGE_KEYS = (
    "is a YAML merge key, which blueprints does not read in a stack file; write each key out"
)


def _object(node: yaml.Node, path: str, problems_: list[tuple[int, str]], active: set[int]) -> Any:
    """A mapping or list value as Pulumi hands it over: yaml.v3's values, its floats as they
    come back from Pulumi writing them as YAML and reading them again (1000.0 as 1000)."""
    line = node.start_mark.line + 1
    if isinstance(node, yaml.ScalarNode):
        value, problem = _scalar(node)
        if problem is not None:
            problems_.append((line, f"{path}: {problem}"))
        if isinstance(value, float):
            if not math.isfinite(value):
                problems_.append((line, f"{path}: {node.value} cannot be passed on as JSON"))
            value = _go_plain(_go_float(value))
        return value
    if id(node) in active:
        problems_.append((line, f"{path}: holds itself (a recursive alias)"))
        return None
    active.add(id(node))
    try:
        if isinstance(node, yaml.SequenceNode):
            return [_object(n, f"{path}[{i}]", problems_, active) for i, n in enumerate(node.value)]
        out: dict[str, Any] = {}
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if _is_merge(key_node):
                problems_.append((key_line, f"{path}.<<: {_MERGE_KEYS}"))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                problems_.append(
                    (key_line, f"{path}: has {_kind(key_node)} as a key; keys are text")
                )
                continue
            if key_node.value in seen:
                sub = f"{path}.{key_node.value}"
                problems_.append((key_line, _duplicate(sub, seen[key_node.value])))
                continue
            seen[key_node.value] = key_line
            key = _pulumi_text(_scalar(key_node)[0])
            out[key] = _object(value_node, f"{path}.{key}", problems_, active)
        return out
    finally:
        active.discard(id(node))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f":{mark.line + 1}" if mark else ""
    what = getattr(exc, "problem", None) or "invalid syntax"
    context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and cmark:
        what += f" ({context} from line {cmark.line + 1})"
    if "<block" in what or "mapping values are not allowed" in what:
        what += "; check the indentation and quote values holding ': '"
    return f"{where}: is not valid YAML: {what}"


def project_name(path: Path) -> str | None:
    """The name in the nearest Pulumi.yaml above `path` (a stack file); None without one."""
    for folder in path.resolve().parents:
        project = folder / "Pulumi.yaml"
        if project.is_file():
            try:
                data = fast_load(project.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                return None
            name = data.get("name") if isinstance(data, dict) else None
            return name if isinstance(name, str) and name else None
    return None


def load_stack_file(path: Path, shown: str) -> StackFile:
    """Read a stack file as Pulumi reads it (see _PLAIN), keeping the line of every key; its
    shape is checked here (a mapping, known top-level keys, `config:` a mapping of text keys,
    no key given twice, no merge keys, no number Pulumi would spell otherwise than written).
    SpecError names the file and line of each problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([f"{shown}: no such stack file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([f"{shown}: cannot be read ({exc.__class__.__name__})"]) from None
    reader = _Reader(text)
    try:
        root = reader.get_single_node()
    except yaml.YAMLError as exc:
        raise SpecError([f"{shown}{_yaml_problem(exc)}"]) from None
    finally:
        reader.dispose()
    needs = (
        "a stack file is a mapping whose `config:` sets at least "
        f"{NAMESPACE}:blueprint and {NAMESPACE}:target"
    )
    if root is None or _kind(root) == "an empty value":
        raise SpecError([f"{shown}: is empty; {needs}"])
    if not isinstance(root, yaml.MappingNode):
        raise SpecError([f"{shown}:{root.start_mark.line + 1}: is {_kind(root)}; {needs}"])
    problems_: list[str] = []
    config_node: yaml.MappingNode | None = None
    seen: dict[str, int] = {}
    for key_node, value_node in root.value:
        line = key_node.start_mark.line + 1
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else _kind(key_node)
        if _is_merge(key_node):
            problems_.append(f"{shown}:{line}: <<: {_MERGE_KEYS}")
            continue
        if key in seen:
            problems_.append(f"{shown}:{line}: {_duplicate(key, seen[key])}")
            continue
        seen[key] = line
        if key == "config":
            if isinstance(value_node, yaml.MappingNode):
                config_node = value_node
            elif _kind(value_node) != "an empty value":
                problems_.append(
                    f"{shown}:{line}: config: must be a mapping of key: value "
                    f"(got {_kind(value_node)})"
                )
        elif key not in STACK_FILE_KEYS:
            if ":" in key:
                hint = "a config key belongs under `config:`, indented"
            else:
                close = difflib.get_close_matches(key, STACK_FILE_KEYS, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                hint += "allowed: " + ", ".join(STACK_FILE_KEYS)
            problems_.append(f"{shown}:{line}: {key}: is not a stack file key; {hint}")
    config: dict[str, Any] = {}
    lines: dict[str, int] = {}
    if config_node is not None:
        for key_node, value_node in config_node.value:
            line = key_node.start_mark.line + 1
            if _is_merge(key_node):
                problems_.append(f"{shown}:{line}: <<: {_MERGE_KEYS}")
                continue
            if not _is_text(key_node):
                shown_key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                shown_key = shown_key if shown_key is not None else _kind(key_node)
                problems_.append(f"{shown}:{line}: config key {shown_key}: is not text; quote it")
                continue
            key = str(_scalar(key_node)[0])
            if key in lines:
                problems_.append(f"{shown}:{line}: {_duplicate(key, lines[key])}")
                continue
            lines[key] = line
            if isinstance(value_node, yaml.ScalarNode):
                value, problem = _scalar(value_node)
                config[key] = _pulumi_text(value)
                if problem is not None:
                    problems_.append(f"{shown}:{line}: {key}: {problem}")
                elif (
                    isinstance(value, (int, float))
                    and not isinstance(value, bool)
                    and config[key] != value_node.value
                ):
                    # 1.10 for a version, 010 for a number of seconds: not what was meant.
                    problems_.append(
                        f"{shown}:{line}: {key}: Pulumi reads the unquoted {value_node.value} "
                        f"as the number {config[key]} and passes '{config[key]}' on; write "
                        f"{config[key]}, or quote it ('{value_node.value}') to keep the text"
                    )
                continue
            found: list[tuple[int, str]] = []
            config[key] = _object(value_node, key, found, set())
            problems_ += [f"{shown}:{n}: {message}" for n, message in found]
            if isinstance(value_node, yaml.MappingNode):
                for sub_node, _ in value_node.value:
                    if isinstance(sub_node, yaml.ScalarNode) and not _is_merge(sub_node):
                        lines.setdefault(f"{key}.{sub_node.value}", sub_node.start_mark.line + 1)
    if problems_:
        raise SpecError(problems_)
    if not config and "environment" not in seen:
        raise SpecError([f"{shown}: sets no config; {needs}"])
    return StackFile(shown, config, lines, project_name(path))


def _secure(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"secure"}


@functools.cache
def provider_keys(namespace: str) -> tuple[str, ...]:
    """The stack config keys a provider's default instance reads, from its installed SDK."""
    if namespace == "aws":
        return AWS_KEYS
    module = importlib.import_module(f"pulumi_{namespace}.config.vars")
    names = [n for n, v in vars(module._ExportableConfig).items() if isinstance(v, property)]
    return tuple(sorted(to_camel(n) for n in names))


def _setting_names() -> dict[str, str]:
    """Every name a setting may be written as (camelCase, snake_case) -> its camelCase key."""
    names = {to_camel(f): to_camel(f) for f in StackSettings.model_fields}
    names.update({f: to_camel(f) for f in StackSettings.model_fields})
    names.update({k: k for k in NOT_SETTINGS})
    return names


def stack_file_problems(stack: StackFile) -> list[str]:
    """Keys of a stack file that nothing would read: without a namespace, in a namespace
    outside NAMESPACES, a provider key the provider does not have or that does not apply to
    the stack's cloud, and settings given encrypted (they are read as plain text)."""
    target = stack.config.get(f"{NAMESPACE}:target")
    cloud = {"hcloud": "hcloud", "aws": "aws", "localstack": "aws"}.get(str(target))
    settings = _setting_names()
    out = []
    for key, value in stack.config.items():
        where = stack.at(key)
        namespace, colon, name = key.partition(":")
        if not colon:
            if key in settings and stack.project == NAMESPACE:
                # Pulumi reads it as blueprints:key here, but only because of the project's
                # name: a project baked from this one has its own, and the key is lost there.
                out.append(
                    f"{where}: {key}: has no namespace; write {NAMESPACE}:{settings[key]} "
                    f"(Pulumi puts a key without one in the project's namespace, {NAMESPACE} "
                    "here, but a project baked from this one has a name of its own)"
                )
            elif key in settings:
                project = stack.project or "<project name>"
                out.append(
                    f"{where}: {key}: has no namespace; did you mean "
                    f"{NAMESPACE}:{settings[key]}? (Pulumi reads a key without one as "
                    f"{project}:{key}, which nothing reads)"
                )
            else:
                out.append(
                    f"{where}: {key}: has no namespace and is no setting; keys are written "
                    f"namespace:key, with the namespaces {', '.join(NAMESPACES)}"
                )
            continue
        if namespace == NAMESPACE:
            if name in NOT_SETTINGS or not _secure(value):
                continue
            out.append(
                f"{where}: {key}: is encrypted (secure:), but it is a setting, read as plain "
                f"text; set it with `pulumi config set {key} VALUE` (no --secret)"
            )
        elif namespace in PROVIDER_NAMESPACES:
            if cloud is not None and namespace != cloud:
                out.append(
                    f"{where}: {key}: applies to {namespace} stacks, and this stack's target "
                    f"is {target}; remove it from the stack file"
                )
                continue
            known = provider_keys(namespace)
            if name in known:
                continue
            if namespace == "aws":
                out.append(
                    f"{where}: {key}: is not read: the aws and localstack stacks make their "
                    f"own AWS provider, with the region from {NAMESPACE}:region and the "
                    "credentials from the environment (AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY); allowed here: aws:region"
                )
            else:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean {namespace}:{close[0]}? " if close else ""
                out.append(
                    f"{where}: {key}: unknown {namespace} provider key; {hint}allowed: "
                    + ", ".join(f"{namespace}:{k}" for k in known)
                )
        elif namespace != PULUMI_NAMESPACE:
            close = difflib.get_close_matches(namespace, NAMESPACES, n=1)
            hint = f"did you mean {close[0]}:{name}? " if close else ""
            out.append(
                f"{where}: {key}: unknown namespace {namespace}; {hint}allowed namespaces: "
                + ", ".join(NAMESPACES)
            )
    region = stack.config.get("aws:region")
    ours = stack.config.get(f"{NAMESPACE}:region", StackSettings.model_fields["region"].default)
    if cloud == "aws" and region is not None and region != ours:
        out.append(
            f"{stack.at('aws:region')}: aws:region: {region} differs from "
            f"{NAMESPACE}:region {ours}, where the servers are; make them equal or remove "
            "aws:region"
        )
    return out


def checked_settings(
    raw: dict[str, Any],
    source: str,
    file: StackFile | None,
    tables: Mapping[str, Any] | None = None,
    *,
    priced: bool = True,
) -> tuple[StackSettings, list[str]]:
    """The stack's settings checked as `pulumi up` checks them: the stack file's keys
    (stack_file_problems), the `blueprints:` settings (raw: keys without namespace, values as
    Pulumi hands them over) and, unless not `priced`, the server type and place against the
    price table (`tables`, else price_tables()). Returns the settings and the warnings;
    SpecError has one line per problem, by file and line."""
    found = stack_file_problems(file) if file is not None else []
    if file is not None:
        # An encrypted setting is reported above; its placeholder is not validated as well.
        prefix = f"{NAMESPACE}:"
        raw = {k: v for k, v in raw.items() if not _secure(file.config.get(prefix + k))}
    lines = setting_lines(file, raw) if file is not None else {}
    try:
        settings = parse_settings(raw, source, lines)
    except SpecError as exc:
        raise SpecError(_by_line(found + exc.lines, source)) from None
    errors, warnings = server_problems(settings, tables) if priced else ([], [])
    found += [
        (f"{source}:{lines[key]}" if key in lines else source) + f": {NAMESPACE}:{key}: {message}"
        for key, message in errors
    ]
    if found:
        raise SpecError(_by_line(found, source))
    return settings, warnings


def _by_line(problems_: list[str], source: str) -> list[str]:
    """Problems in the order of the file: by line, those naming no line first."""

    def line(problem: str) -> int:
        found = re.match(rf"{re.escape(source)}:([0-9]+): ", problem)
        return int(found.group(1)) if found else 0

    return sorted(problems_, key=line)


def read_stack_settings(
    path: Path, shown: str, tables: Mapping[str, Any] | None = None, *, priced: bool = True
) -> tuple[StackSettings, list[str]]:
    """A stack file's settings and warnings, checked as checked_settings does (against
    `tables`, else price_tables(); not at all when not `priced`), from the file alone (as
    `pulumi up` would read it: every value as text)."""
    file = load_stack_file(path, shown)
    prefix = f"{NAMESPACE}:"
    raw = {
        key[len(prefix) :]: config_text(value)
        for key, value in file.config.items()
        if key.startswith(prefix) and key[len(prefix) :] not in NOT_SETTINGS
    }
    return checked_settings(raw, shown, file, tables, priced=priced)


def setting_lines(stack: StackFile, raw: Mapping[str, Any]) -> dict[str, int]:
    """The line of each `blueprints:` setting (key without namespace) whose value in `raw`
    (as Pulumi hands it to the program: text, objects as JSON) is the one the file holds."""
    prefix = f"{NAMESPACE}:"
    out = {}
    for key, line in stack.lines.items():
        if not key.startswith(prefix) or "." in key:
            continue
        name = key[len(prefix) :]
        if name in raw and _same_value(raw[name], stack.config[key]):
            out[name] = line
    return out


def _same_value(given: Any, held: Any) -> bool:
    """Whether a value handed over (text, an object as JSON in any layout) is the file's."""
    if config_text(given) == config_text(held):
        return True
    if isinstance(held, (dict, list)) and isinstance(given, str):
        try:
            return json.loads(given) == json.loads(config_text(held))
        except ValueError:
            return False
    return False


def config_text(value: Any) -> str:
    """A config value as Pulumi hands it to a program: text (a scalar as yaml.v3 spells it, see
    _pulumi_text); objects and lists as JSON."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str)
    return _pulumi_text(value)


# ---------------------------------------------------------------------------------------------
# Server types and places, against the price table (blueprints/prices.yaml)

PRICES_FILE = "blueprints/prices.yaml"
# The price tables stacks are checked against when no caller names them: the shipped ones, or
# those `blueprints compare --live-prices` read, for the stacks it plans (see price_tables).
_PRICE_TABLES: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "blueprints_price_tables", default=None
)


def price_tables() -> Mapping[str, Any]:
    """The price tables in effect: those set by using_price_tables, else the shipped ones."""
    from blueprints.costs import shipped_tables

    return _PRICE_TABLES.get() or shipped_tables()


@contextlib.contextmanager
def using_price_tables(tables: Mapping[str, Any]) -> Iterator[None]:
    """Check server types and places against `tables` inside the block, in the programs that
    the offline plan runs there too (it runs them in a copy of the current context)."""
    token = _PRICE_TABLES.set(tables)
    try:
        yield
    finally:
        _PRICE_TABLES.reset(token)


# An EC2 instance type: family (generation digit included) and size, like t3.small, m7i.large.
AWS_TYPE = re.compile(r"([a-z][a-z0-9-]*[0-9][a-z0-9-]*)\.([a-z0-9-]+)")
# Graviton (arm64) families: a digit then `g` (t4g, m7gd, c6gn, im4gn, is4gen), and a1.
AWS_ARM_FAMILY = re.compile(r"a1|[a-z]+[0-9]+g[a-z]*")
# EC2 families built on Xen, not Nitro: their EBS volumes appear as /dev/xvd*, while the servers
# find the data volume by its NVMe name. The older generations (c1, cc2, m1, t1...) and T2, M4,
# C4, R4, X1, X1e, D2, H1, I2, I3, P2, P3, G3 (and g3s), F1; not i3en nor p3dn (Nitro, their
# family names differ), nor a .metal size (bare metal on Nitro, like i3.metal).
AWS_XEN_FAMILIES = (
    "c1", "c3", "c4", "cc1", "cc2", "cg1", "cr1", "d2", "f1", "g2", "g3", "g3s", "h1", "hi1",
    "hs1", "i2", "i3", "m1", "m2", "m3", "m4", "p2", "p3", "r3", "r4", "t1", "t2", "x1", "x1e",
)  # fmt: skip


def server_problems(
    settings: StackSettings, tables: Mapping[str, Any] | None = None
) -> tuple[list[tuple[str, str]], list[str]]:
    """The stack's server type and place checked against the price table: (errors as
    (setting key, message), warnings).

    hcloud: the type and the location must be in the table, which lists Hetzner's lines the
    blueprints are sized against. aws (and localstack): the type must be an EC2 type the
    servers can boot (x86, Nitro) unless an AMI is given; one outside the table is a warning,
    as the table holds a few of the hundreds of EC2 types, and so is a region outside it.
    """
    table = (tables or price_tables())[settings.cloud]
    size, errors, warnings = settings.size, [], []
    known = ", ".join(table.server_types)
    like = DEFAULT_SERVER_TYPE[(settings.blueprint, settings.cloud)]
    places = ", ".join(table.places)
    live = table.as_of == "live"  # Hetzner's price list, read by `compare --live-prices`
    if settings.cloud == "hcloud":
        if size not in table.server_types and live:
            errors.append(
                (
                    "serverType",
                    f"{size} is not a server type Hetzner's live price list has for {places}; "
                    f"allowed: {known}",
                )
            )
        elif size not in table.server_types:
            errors.append(
                (
                    "serverType",
                    f"{size} is not a Hetzner server type of the price table ({PRICES_FILE}); "
                    f"allowed: {known}; another type needs its vCPUs, memory and price added "
                    "there (`blueprints compare --live-prices` reads the types Hetzner offers "
                    "today)",
                )
            )
        elif size.startswith("cax"):
            warnings.append(
                f"{NAMESPACE}:serverType {size} is an Arm64 (Ampere) server: Hetzner boots the "
                f"arm64 build of image {settings.image}, and every container image of the app "
                "must be published for linux/arm64"
            )
        if settings.location not in table.places and live:
            errors.append(
                (
                    "location",
                    f"{settings.location}: Hetzner's live price list was read for {places}, "
                    "the location of the stacks compared with this one; compare the stacks "
                    "of one location at a time",
                )
            )
        elif settings.location not in table.places:
            errors.append(
                (
                    "location",
                    f"{settings.location} is not covered by the price table ({PRICES_FILE}): "
                    f"its server types and prices are Hetzner's in {places}, and Hetzner "
                    "offers other types at other prices elsewhere, so a server here could be "
                    f"neither checked nor priced; choose one of {places} (`blueprints compare "
                    f"--live-prices` reads Hetzner's list for {settings.location})",
                )
            )
        return errors, warnings
    match = AWS_TYPE.fullmatch(size)
    if match is None:
        hetzner = " (a Hetzner type; this stack runs on AWS)" if _is_hetzner(size) else ""
        errors.append(
            (
                "serverType",
                f"{size}{hetzner} is not an EC2 instance type like {like} (family.size); "
                f"priced: {known}",
            )
        )
        return errors, warnings
    family, kind = match.groups()
    if family in AWS_XEN_FAMILIES and kind != "metal":
        errors.append(
            (
                "serverType",
                f"{size} is a Xen-based EC2 type, whose EBS volumes appear as /dev/xvd*; the "
                "servers find the data volume by its NVMe name, which Nitro types give: choose "
                f"one like {like}",
            )
        )
    elif AWS_ARM_FAMILY.fullmatch(family) and settings.ami is None:
        errors.append(
            (
                "serverType",
                f"{size} is an Arm64 (Graviton) type, and the servers boot an amd64 Ubuntu "
                f"image; choose an x86 type like {like}, or set {NAMESPACE}:ami to an arm64 "
                "AMI",
            )
        )
    elif size not in table.server_types:
        warnings.append(
            f"{NAMESPACE}:serverType {size} is not in the price table ({PRICES_FILE}: {known}): "
            "its price, vCPUs and memory are not known here, so `blueprints compare` leaves it "
            "unpriced"
        )
    if settings.region not in table.places:
        warnings.append(
            f"{NAMESPACE}:region {settings.region}: the price table has AWS prices for {places} "
            "only, so this stack's costs are not known here"
        )
    return errors, warnings


def _is_hetzner(size: str) -> bool:
    from blueprints.costs import shipped_tables

    return size in shipped_tables()["hcloud"].server_types or bool(
        re.fullmatch(r"(cx|cpx|cax|ccx)[0-9]+", size)
    )
