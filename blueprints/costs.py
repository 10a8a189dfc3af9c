"""Monthly cost of planned resources, from the price table shipped in blueprints/prices.yaml.

Pricing works on what Pulumi sees: a resource's type token and its inputs (camelCase, as in
Pulumi state). The offline plan (`blueprints compare`) and preview documents (the merge-request
report's cost delta) both hand over exactly that, so one function prices both.

Only what the table names is priced; anything else that costs money (an unknown server type, a
location outside the table) is reported as unpriced, never guessed. Free resources (networks,
firewalls, attachments, keys) contribute nothing.

One item is not a Pulumi resource: the stack's backup object storage (BACKUP_STORAGE). What a
bucket costs depends on what it holds, which no resource says; `backup_storage` describes it
(bucket, cloud, place, data size, snapshots kept) and `price_resources` prices it like any
resource, in the "backups" category. `blueprints compare` adds it from the stack settings
(`stack_backup_storage`), the preview report from the release's backup configuration.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources as importlib_resources
from typing import Any
from urllib.parse import urlsplit

import yaml

CATEGORIES = ("servers", "volumes", "ips", "load balancers", "backups")

HCLOUD_SERVER = "hcloud:index/server:Server"
HCLOUD_VOLUME = "hcloud:index/volume:Volume"
HCLOUD_FLOATING_IP = "hcloud:index/floatingIp:FloatingIp"
HCLOUD_PRIMARY_IP = "hcloud:index/primaryIp:PrimaryIp"
HCLOUD_LB = "hcloud:index/loadBalancer:LoadBalancer"
AWS_INSTANCE = "aws:ec2/instance:Instance"
AWS_INSTANCE_STATE = "aws:ec2transitgateway/instanceState:InstanceState"
AWS_VOLUME = "aws:ebs/volume:Volume"
AWS_EIP = "aws:ec2/eip:Eip"
AWS_LB = "aws:lb/loadBalancer:LoadBalancer"
AWS_DLM = "aws:dlm/lifecyclePolicy:LifecyclePolicy"
AWS_EIP_ASSOCIATION = "aws:ec2/eipAssociation:EipAssociation"
# The bucket itself costs nothing; what it holds is priced on BACKUP_STORAGE.
AWS_BUCKET = "aws:s3/bucket:Bucket"
# Not a Pulumi resource (no provider has this type): the backup bucket's contents, see above.
BACKUP_STORAGE = "blueprints:backup/objectStorage:ObjectStorage"

# Types that bill nothing of their own (their cost, if any, is on a priced resource), by exact
# type or by prefix (ending in "/" or ":"). With strict pricing (the merge-request report) every
# other type the table cannot price is listed as not priced, so a total never reads as free
# when it is not known (an EKS cluster, a NAT gateway, an RDS instance, anything off AWS and
# Hetzner).
FREE_TYPES = (
    "pulumi:",
    "pulumi-python:dynamic:",
    "command:",
    "random:",
    "tls:",
    "kubernetes:",
    "nomad:",
    "aws:iam/",
    "aws:ec2/securityGroup",
    "aws:vpc/securityGroup",
    "aws:ec2/vpc:Vpc",
    "aws:ec2/subnet:Subnet",
    "aws:ec2/routeTable",
    "aws:ec2/route:Route",
    "aws:ec2/mainRouteTableAssociation:",
    "aws:ec2/internetGateway:",
    "aws:ec2/keyPair:",
    "aws:ec2/placementGroup:",
    "aws:ec2/volumeAttachment:",
    AWS_EIP_ASSOCIATION,
    AWS_INSTANCE_STATE,
    AWS_DLM,
    AWS_BUCKET,
    "aws:s3/bucketV2:",
    "aws:s3/bucketPublicAccessBlock:",
    "aws:s3/bucketVersioning",
    "aws:s3/bucketServerSideEncryption",
    "aws:s3/bucketLifecycleConfiguration",
    "aws:lb/targetGroup",
    "aws:lb/listener",
    "aws:route53/record:",
    "hcloud:index/network:",
    "hcloud:index/networkSubnet:",
    "hcloud:index/networkRoute:",
    "hcloud:index/firewall:",
    "hcloud:index/firewallAttachment:",
    "hcloud:index/sshKey:",
    "hcloud:index/placementGroup:",
    "hcloud:index/volumeAttachment:",
    "hcloud:index/floatingIpAssignment:",
    "hcloud:index/primaryIpAssignment:",
    "hcloud:index/rdns:",
    "hcloud:index/serverNetwork:",
    "hcloud:index/loadBalancerService:",
    "hcloud:index/loadBalancerTarget:",
    "hcloud:index/loadBalancerNetwork:",
)


def bills_nothing(type_: str) -> bool:
    """A type known to bill nothing of its own (FREE_TYPES)."""
    return any(type_ == f or type_.startswith(f) for f in FREE_TYPES)


# How big a stack's restic repository is assumed to be. restic stores each chunk once,
# deduplicated and compressed: the first snapshot holds the data, each further snapshot only the
# chunks that changed since. The model: the data volume full (the spec's data size, an upper
# bound; compression is not credited), and SNAPSHOT_CHANGE of it changed between two snapshots
# kept, so keep snapshots take data x (1 + SNAPSHOT_CHANGE x (keep - 1)).
SNAPSHOT_CHANGE = Decimal("0.1")
GB_PER_TB = 1000
BACKUP_STORAGE_PREFIX = "bucket "


class PriceError(Exception):
    """The price table cannot be read or fetched; one sentence for the user."""


@dataclass(frozen=True)
class ServerType:
    vcpu: int
    memory_gib: Decimal
    price: Decimal  # hcloud: per month; aws: per hour


@dataclass(frozen=True)
class PriceTable:
    """One cloud's prices; `source` and `as_of` say where they come from."""

    cloud: str
    currency: str
    source: str
    as_of: str
    note: str
    places: tuple[str, ...]  # hcloud locations / aws regions the prices hold for
    server_types: Mapping[str, ServerType]
    data: Mapping[str, Any]

    def decimal(self, *path: str) -> Decimal | None:
        value: Any = self.data
        for key in path:
            if not isinstance(value, Mapping) or key not in value:
                return None
            value = value[key]
        return Decimal(str(value))

    def describe(self) -> str:
        return f"{self.source}, {self.currency}, as of {self.as_of}"


def _table(cloud: str, raw: Mapping[str, Any]) -> PriceTable:
    try:
        kind = "server_types" if cloud == "hcloud" else "instance_types"
        servers = {
            str(name): ServerType(int(v[0]), Decimal(str(v[1])), Decimal(str(v[2])))
            for name, v in (raw.get(kind) or {}).items()
        }
        places = tuple(raw.get("locations") or raw.get("regions") or ())
        return PriceTable(
            cloud=cloud,
            currency=str(raw["currency"]),
            source=str(raw["source"]),
            as_of=str(raw["as_of"]),
            note=str(raw.get("note", "")).strip(),
            places=places,
            server_types=servers,
            data=raw,
        )
    except (KeyError, TypeError, IndexError, ValueError, ArithmeticError) as exc:
        raise PriceError(f"price table for {cloud} is malformed ({exc})") from None


@functools.cache
def shipped_tables() -> dict[str, PriceTable]:
    """The price tables shipped with the package, by cloud (hcloud, aws)."""
    text = importlib_resources.files("blueprints").joinpath("prices.yaml").read_text()
    raw = yaml.safe_load(text)
    return {cloud: _table(cloud, raw[cloud]) for cloud in ("hcloud", "aws")}


def cloud_of(type_: str) -> str | None:
    if type_.startswith("hcloud:"):
        return "hcloud"
    if type_.startswith("aws:"):
        return "aws"
    return None


# ---------------------------------------------------------------------------------------------
# Pricing


@dataclass(frozen=True)
class CostLine:
    resource: str
    category: str
    amount: Decimal  # per month, in currency
    currency: str
    detail: str


@dataclass(frozen=True)
class CostSummary:
    lines: tuple[CostLine, ...]
    unpriced: tuple[str, ...]  # "<resource>: why" for anything billable the table lacks
    tables: tuple[PriceTable, ...]  # the tables the lines came from

    @property
    def total(self) -> dict[str, Decimal]:
        totals: dict[str, Decimal] = {}
        for line in self.lines:
            totals[line.currency] = totals.get(line.currency, Decimal(0)) + line.amount
        return dict(sorted(totals.items()))

    def by_category(self) -> dict[str, Decimal]:
        """Monthly amount per category (all in one currency when the stack is on one cloud)."""
        out = {c: Decimal(0) for c in CATEGORIES}
        for line in self.lines:
            out[line.category] += line.amount
        return out


@dataclass
class _Pricer:
    tables: Mapping[str, PriceTable]
    lines: list[CostLine] = field(default_factory=list)
    unpriced: list[str] = field(default_factory=list)
    used: dict[str, PriceTable] = field(default_factory=dict)

    def add(self, cloud: str, resource: str, category: str, amount: Decimal, detail: str):
        table = self.tables[cloud]
        self.used[cloud] = table
        self.lines.append(CostLine(resource, category, amount, table.currency, detail))

    def missing(self, resource: str, why: str) -> None:
        self.unpriced.append(f"{resource}: {why}")


def _gib(value: Any) -> Decimal | None:
    """A size in GB/GiB, or None unless it is a finite, non-negative number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        return None
    try:
        size = Decimal(str(value))
    except (ArithmeticError, ValueError, TypeError):
        return None
    return size if size.is_finite() and size >= 0 else None


# ---------------------------------------------------------------------------------------------
# Backup object storage


def backup_repository_gb(data_gb: Decimal | int, keep: int) -> Decimal:
    """The assumed size of a restic repository of data_gb keeping keep snapshots (see
    SNAPSHOT_CHANGE)."""
    return Decimal(data_gb) * (1 + SNAPSHOT_CHANGE * (keep - 1))


def backup_storage_name(bucket: str) -> str:
    """The name a BACKUP_STORAGE item, and so its cost line, goes by."""
    return f"{BACKUP_STORAGE_PREFIX}{bucket}"


def backup_storage_lines(summary: CostSummary) -> tuple[CostLine, ...]:
    """The summary's lines for backup buckets' contents."""
    return tuple(
        line
        for line in summary.lines
        if line.category == "backups" and line.resource.startswith(BACKUP_STORAGE_PREFIX)
    )


def backup_storage(
    name: str, cloud: str, place: str | None, data_gb: Decimal | int | None, keep: Any
) -> tuple[str, str, dict[str, Any]]:
    """The BACKUP_STORAGE item named `name`: cloud "hcloud" or "aws", place the bucket's location
    or region (None: the table's), data_gb the app data backed up, keep the snapshots kept (a
    data size or keep that is not a number makes the item unpriced, never guessed)."""
    inputs: dict[str, Any] = {"cloud": cloud, "dataGb": data_gb, "keep": keep}
    if place is not None:
        inputs["location" if cloud == "hcloud" else "region"] = place
    return (BACKUP_STORAGE, name, inputs)


def stack_backup_storage(settings: Any, app: Any) -> tuple[str, str, dict[str, Any]] | None:
    """The BACKUP_STORAGE item of a stack (StackSettings, AppSpec); None without a bucket.

    The data backed up is the spec's data size (`AppSpec.data_size_gb`, the data volume); none
    when the spec turns backups off (a user's Hetzner bucket still bills its base price).
    """
    if settings.backup_bucket is None:
        return None
    found = settings.backup_storage()
    place = found[1] if found is not None else None
    data = app.data_size_gb if app.backups.enabled else 0
    name = backup_storage_name(settings.backup_bucket)
    return backup_storage(name, settings.cloud, place, data, app.backups.keep)


def bucket_place(endpoint: str) -> tuple[str, str | None] | None:
    """(cloud, location or region) of an S3 endpoint URL: Hetzner Object Storage
    (https://fsn1.your-objectstorage.com), AWS S3 (https://s3.eu-central-1.amazonaws.com), or
    LocalStack on this machine (priced as AWS in the table's region, as `compare` prices a
    LocalStack stack); None for any other S3 service."""
    host = (urlsplit(endpoint).hostname or "").lower()
    if match := re.fullmatch(r"([a-z0-9-]+)\.your-objectstorage\.com", host):
        return "hcloud", match.group(1)
    if match := re.fullmatch(r"s3[.-]([a-z0-9-]+)\.amazonaws\.com", host):
        return "aws", match.group(1)
    if host == "s3.amazonaws.com":
        return "aws", "us-east-1"
    if host in ("localhost", "127.0.0.1", "::1", "localstack") or host.endswith(
        ".localstack.cloud"
    ):
        return "aws", None
    return None


def _keep(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def _backup_storage(p: _Pricer, name: str, inputs: Mapping[str, Any]) -> None:
    cloud = inputs.get("cloud")
    if cloud not in p.tables:
        p.missing(name, f"backup storage ({cloud}) is not in the price table")
        return
    t = p.tables[cloud]
    place = inputs.get("location" if cloud == "hcloud" else "region")
    if isinstance(place, str) and t.places and place not in t.places:
        places = ", ".join(t.places)
        p.missing(name, f"backup bucket in {place}, which is not in the price table ({places})")
        return
    data, keep = _gib(inputs.get("dataGb")), _keep(inputs.get("keep"))
    if data is None or keep is None:
        p.missing(name, "backup data size or snapshots kept not known")
        return
    size = backup_repository_gb(data, keep)
    factor = 1 + SNAPSHOT_CHANGE * (keep - 1)
    assumed = (
        f"repository ~{size.normalize():f} GB assumed: {data.normalize():f} GB data x "
        f"{factor.normalize():f} for keep {keep} (restic keeps changed chunks only; "
        f"{SNAPSHOT_CHANGE * 100:.0f}% change per further snapshot)"
    )
    if cloud == "hcloud":
        base = t.decimal("object_storage", "base_month")
        included = t.decimal("object_storage", "included_storage_tb")
        extra = t.decimal("object_storage", "extra_storage_tb_hour")
        hours = t.decimal("object_storage", "hours_per_month") or Decimal(730)
        if base is None or included is None or extra is None:
            p.missing(name, "Hetzner Object Storage is not in the price table")
            return
        over_tb = max(size / GB_PER_TB - included, Decimal(0))
        p.add(
            "hcloud",
            name,
            "backups",
            base + over_tb * extra * hours,
            f"Hetzner Object Storage: base price (the account's; assumes this stack is its only "
            f"Object Storage user) with {included.normalize():f} TB included"
            + (f", {over_tb.normalize():f} TB over it" if over_tb else "")
            + f"; {assumed}",
        )
    else:
        per_gb = t.decimal("object_storage", "standard_gb_month")
        if per_gb is None:
            p.missing(name, "S3 storage is not in the price table")
            return
        p.add("aws", name, "backups", size * per_gb, f"S3 Standard; {assumed}")


def _hcloud(p: _Pricer, type_: str, name: str, inputs: Mapping[str, Any], ctx: dict) -> None:
    t = p.tables["hcloud"]
    location = inputs.get("location") or inputs.get("homeLocation")
    if isinstance(location, str) and t.places and location not in t.places:
        places = ", ".join(t.places)
        p.missing(name, f"location {location} is not in the price table ({places})")
        return
    if type_ == HCLOUD_SERVER:
        kind = inputs.get("serverType")
        server = t.server_types.get(str(kind))
        if server is None:
            p.missing(name, f"server type {kind} is not in the price table")
            return
        # Hetzner bills a server whatever its power state: a parked spare costs in full.
        p.add("hcloud", name, "servers", server.price, f"{kind}, billed running or off")
        nets = inputs.get("publicNets")
        ip_price = t.decimal("primary_ipv4_month")
        if nets is not None and not (
            isinstance(nets, list) and all(isinstance(n, Mapping) for n in nets)
        ):
            p.missing(name, "primary IPv4: publicNets is not known (secret or computed)")
        elif (not nets or any(n.get("ipv4Enabled", True) for n in nets)) and ip_price:
            # Hetzner gives a server a primary IPv4 unless publicNets turns it off.
            p.add("hcloud", name, "ips", ip_price, "primary IPv4")
        if inputs.get("backups"):
            percent = t.decimal("server_backup_percent") or Decimal(0)
            p.add("hcloud", name, "backups", server.price * percent / 100, f"{percent}% backups")
    elif type_ == HCLOUD_VOLUME:
        size, per_gb = _gib(inputs.get("size")), t.decimal("volume_gb_month")
        if size is None or per_gb is None:
            p.missing(name, "volume size or price unknown")
            return
        p.add("hcloud", name, "volumes", size * per_gb, f"{size} GB")
    elif type_ == HCLOUD_FLOATING_IP:
        kind = str(inputs.get("type", "ipv4"))
        price = t.decimal("floating_ip_month", kind)
        if price is None:
            p.missing(name, f"floating IP type {kind} is not in the price table")
            return
        p.add("hcloud", name, "ips", price, f"floating {kind}")
    elif type_ == HCLOUD_PRIMARY_IP:
        price = t.decimal("primary_ipv4_month") if inputs.get("type") == "ipv4" else Decimal(0)
        p.add("hcloud", name, "ips", price or Decimal(0), f"primary {inputs.get('type')}")
    elif type_ == HCLOUD_LB:
        kind = str(inputs.get("loadBalancerType"))
        price = t.decimal("load_balancer_types", kind)
        if price is None:
            p.missing(name, f"load balancer type {kind} is not in the price table")
            return
        p.add("hcloud", name, "load balancers", price, kind)


def _ref(value: Any) -> str | None:
    """An id another resource refers to, as a hashable key (None when not a plain value)."""
    return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None


def _region(inputs: Mapping[str, Any]) -> str | None:
    zone = inputs.get("availabilityZone")
    return zone[:-1] if isinstance(zone, str) and len(zone) > 1 else None


def _aws(p: _Pricer, type_: str, name: str, inputs: Mapping[str, Any], ctx: dict) -> None:
    t = p.tables["aws"]
    region = _region(inputs) or ctx.get("region")
    if region is not None and t.places and region not in t.places:
        p.missing(name, f"region {region} is not in the price table ({', '.join(t.places)})")
        return
    hours = t.decimal("hours_per_month") or Decimal(730)
    ip_hour = t.decimal("public_ipv4_hour")
    if type_ == AWS_INSTANCE:
        kind = inputs.get("instanceType")
        server = t.server_types.get(str(kind))
        if server is None:
            p.missing(name, f"instance type {kind} is not in the price table")
            return
        key = _ref(ctx["id"])
        stopped = (key is not None and key in ctx["stopped"]) or name in ctx["stopped_names"]
        if stopped:
            p.add("aws", name, "servers", Decimal(0), f"{kind}, stopped: no compute charge")
        else:
            p.add("aws", name, "servers", server.price * hours, f"{kind}, {hours} h")
            # An associated Elastic IP replaces the auto-assigned address (priced on the EIP).
            has_eip = key is not None and key in ctx["eip_instances"]
            if inputs.get("associatePublicIpAddress") and not has_eip and ip_hour is not None:
                p.add("aws", name, "ips", ip_hour * hours, "public IPv4")
        root = inputs.get("rootBlockDevice")
        if not isinstance(root, Mapping) or root.get("volumeSize") is None:
            p.missing(name, "root volume size is the AMI's default, not priced")
            return
        vtype = str(root.get("volumeType") or "gp2")
        size, per_gb = _gib(root.get("volumeSize")), t.decimal("ebs_gb_month", vtype)
        if size is None or per_gb is None:
            p.missing(name, f"root volume type {vtype} is not in the price table")
            return
        p.add("aws", name, "volumes", size * per_gb, f"root {size} GiB {vtype}")
    elif type_ == AWS_VOLUME:
        vtype = str(inputs.get("type") or "gp2")
        size, per_gb = _gib(inputs.get("size")), t.decimal("ebs_gb_month", vtype)
        if size is None or per_gb is None:
            p.missing(name, f"volume type {vtype} or its size is not in the price table")
            return
        p.add("aws", name, "volumes", size * per_gb, f"{size} GiB {vtype}")
        snap = t.decimal("snapshot_gb_month")
        tags = inputs.get("tags") if isinstance(inputs.get("tags"), Mapping) else {}
        if snap is not None and any(
            all(tags.get(k) == v for k, v in target.items()) for target in ctx["dlm_targets"]
        ):
            # Snapshots are incremental: one full copy is the floor; churn adds to it.
            p.add("aws", name, "backups", size * snap, f"snapshots, >= one {size} GiB copy")
    elif type_ == AWS_EIP:
        if ip_hour is not None:
            p.add("aws", name, "ips", ip_hour * hours, "Elastic IP")
    elif type_ == AWS_LB:
        kind = str(inputs.get("loadBalancerType") or "application")
        price = t.decimal("load_balancer_hour", kind)
        if price is None:
            p.missing(name, f"load balancer type {kind} is not in the price table")
            return
        p.add("aws", name, "load balancers", price * hours, f"{kind}, hourly charge only")


def price_resources(
    resources: Iterable[tuple[Any, ...]],
    tables: Mapping[str, PriceTable] | None = None,
    *,
    region: str | None = None,
    strict: bool = False,
) -> CostSummary:
    """Price (type, name, inputs[, id]) tuples; see the module docstring. region: the AWS
    region of the stack (its `aws:region` config) for resources that do not name a zone.
    strict: list every resource neither priced nor known to bill nothing as not priced."""
    tables = tables if tables is not None else shipped_tables()
    items = [(r[0], r[1], r[2] or {}, r[3] if len(r) > 3 else None) for r in resources]
    items = [(t, n, i if isinstance(i, Mapping) else {}, x) for t, n, i, x in items]
    # Resources that change another's bill: stopped instances, DLM snapshot targets.
    stopped: set[str] = set()
    eip_instances: set[str] = set()
    stopped_names: set[str] = set()
    dlm_targets: list[Mapping[str, Any]] = []
    for type_, name, inputs, _ in items:
        if not isinstance(inputs, Mapping):
            continue
        if type_ == AWS_INSTANCE_STATE and inputs.get("state") == "stopped":
            if _ref(inputs.get("instanceId")) is not None:
                stopped.add(str(inputs.get("instanceId")))
            if name.endswith("-power"):
                stopped_names.add(name[: -len("-power")])
        elif type_ == AWS_EIP_ASSOCIATION and _ref(inputs.get("instanceId")) is not None:
            eip_instances.add(str(inputs.get("instanceId")))
        elif type_ == AWS_DLM:
            details = inputs.get("policyDetails")
            if isinstance(details, Mapping) and isinstance(details.get("targetTags"), Mapping):
                dlm_targets.append(details["targetTags"])
    pricer = _Pricer(tables)
    for type_, name, inputs, id_ in items:
        if type_ == BACKUP_STORAGE:
            try:
                _backup_storage(pricer, name, inputs)
            except (TypeError, ValueError, AttributeError, ArithmeticError):
                pricer.missing(name, "an input it is priced by is secret or not known yet")
            continue
        if bills_nothing(type_):
            continue
        cloud = cloud_of(type_)
        if cloud not in tables:
            if strict and not bills_nothing(type_):
                pricer.missing(name, f"{type_} is not in the price table (hcloud and aws only)")
            continue
        ctx = {"id": id_, "stopped": stopped, "stopped_names": stopped_names, "region": region}
        ctx["dlm_targets"] = dlm_targets
        ctx["eip_instances"] = eip_instances
        before, unpriced = len(pricer.lines), len(pricer.unpriced)
        try:
            (_hcloud if cloud == "hcloud" else _aws)(pricer, type_, name, inputs, ctx)
        except (TypeError, ValueError, AttributeError, ArithmeticError):
            # An input that is a secret or not known until apply (a preview's "[secret]" or
            # unknown value) where a number or a mapping belongs: say so, never guess.
            del pricer.lines[before:]
            pricer.missing(name, "an input it is priced by is secret or not known yet")
        if strict and len(pricer.lines) == before and len(pricer.unpriced) == unpriced:
            pricer.missing(name, f"{type_} is not in the price table")
    return CostSummary(
        lines=tuple(pricer.lines),
        unpriced=tuple(pricer.unpriced),
        tables=tuple(pricer.used[c] for c in sorted(pricer.used)),
    )


def money(amount: Decimal, currency: str) -> str:
    """12.3456 EUR -> 'EUR 12.35' (display only; sums stay exact)."""
    return f"{currency} {amount.quantize(Decimal('0.01'))}"


# ---------------------------------------------------------------------------------------------
# Live prices (Hetzner's API)


def live_hcloud_table(
    token: str, endpoint: str | None = None, *, location: str = "fsn1"
) -> PriceTable:
    """Hetzner's current price list at `location`, in the shipped table's shape."""
    from hcloud import APIException, Client

    client = Client(token=token, api_endpoint=endpoint or "https://api.hetzner.cloud/v1")
    try:
        pricing = client.request(method="GET", url="/pricing")["pricing"]
        specs = {st.name: st for st in client.server_types.get_all()}
    except APIException as exc:
        raise PriceError(f"Hetzner's pricing API refused the request: {exc.message}") from None
    except (KeyError, TypeError):
        raise PriceError("Hetzner's pricing API answered in an unexpected shape") from None
    except Exception as exc:  # requests' connection errors and the like
        raise PriceError(
            f"cannot reach Hetzner's pricing API ({exc.__class__.__name__}); "
            "check the network or drop --live-prices"
        ) from None

    def monthly(entry: Mapping[str, Any]) -> str | None:
        for price in entry.get("prices") or []:
            if price.get("location") == location:
                return str(price["price_monthly"]["net"])
        return None

    try:
        servers = {
            e["name"]: [specs[e["name"]].cores, specs[e["name"]].memory, monthly(e)]
            for e in pricing.get("server_types") or []
            if e["name"] in specs and monthly(e) is not None
        }
        # Hetzner's pricing API has no Object Storage prices: the shipped table's stand in.
        shipped = shipped_tables()["hcloud"]
        storage = shipped.data.get("object_storage")
        raw = {
            "currency": pricing["currency"],
            "source": f"Hetzner Cloud API /pricing, net, location {location}",
            "as_of": "live",
            "note": (
                f"Object Storage prices are the shipped table's ({storage.get('as_of')}): "
                "Hetzner's pricing API has none."
                if isinstance(storage, Mapping)
                else ""
            ),
            "object_storage": storage,
            "locations": [location],
            "server_types": servers,
            "primary_ipv4_month": next(
                (monthly(e) for e in pricing.get("primary_ips") or [] if e["type"] == "ipv4"),
                None,
            ),
            "floating_ip_month": {
                e["type"]: monthly(e) for e in pricing.get("floating_ips") or [] if monthly(e)
            },
            "volume_gb_month": pricing["volume"]["price_per_gb_month"]["net"],
            "load_balancer_types": {
                e["name"]: monthly(e)
                for e in pricing.get("load_balancer_types") or []
                if monthly(e) is not None
            },
            "server_backup_percent": pricing["server_backup"]["percentage"],
            "snapshot_gb_month": pricing["image"]["price_per_gb_month"]["net"],
        }
    except (KeyError, TypeError, AttributeError):
        raise PriceError("Hetzner's pricing API answered in an unexpected shape") from None
    return _table("hcloud", raw)
