"""Offline plan: evaluate a stack in-process under Pulumi's mock runtime.

This reads stacks/Pulumi.<stack>.yaml, sets its config, runs the entry point named in
Pulumi.yaml (the file `pulumi up` runs) with `pulumi.runtime.set_mocks`, and records every
resource registration: type, name, parent, inputs and options. Cloud-assigned values (ids, IP
addresses) are fake but derived from the resource's type and name, so the same stack always
plans to the same bytes, and flipping one setting changes only what depends on it.

Secrets: encrypted config values (`secure:`) cannot be decrypted without Pulumi, and a secret
the spec needs but the stack does not set is filled in too; both become visible placeholders,
still marked secret, so nothing real ever reaches a plan or a rendered file.
"""

from __future__ import annotations

import base64
import contextvars
import functools
import hashlib
import ipaddress
import json
import logging
import re
import runpy
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from blueprints.yaml_text import fast_load

PROJECT_NAME_DEFAULT = "blueprints"
SECRET_MASK = "[secret]"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
SIG_KEY = "4dabf18193072939515e22adb298388d"


class PlanError(Exception):
    """The stack cannot be planned; the message is one or more user-facing lines."""


@dataclass
class PlannedResource:
    stack: str
    type: str
    name: str
    parent: str | None
    inputs: dict[str, Any]
    id: str
    custom: bool
    protect: bool = False
    delete_before_replace: bool = False
    deleted_with: str | None = None
    retain_on_delete: bool = False
    provider: str | None = None
    depends_on: list[str] = field(default_factory=list)
    # Resource options `blueprints diff` honours (property paths, as the program gave them).
    replace_on_changes: list[str] = field(default_factory=list)
    ignore_changes: list[str] = field(default_factory=list)

    def public_inputs(self) -> dict[str, Any]:
        """Inputs with every secret value replaced by a mask."""
        return mask_secrets(self.inputs)

    def plain_inputs(self) -> dict[str, Any]:
        """Inputs with secret wrappers removed (values as the program passed them)."""
        return unwrap_secrets(self.inputs)

    def as_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "type": self.type,
            "name": self.name,
            "parent": self.parent,
            "inputs": self.public_inputs(),
        }


@dataclass
class Plan:
    stack: str
    resources: list[PlannedResource]
    outputs: dict[str, Any]
    notes: list[str]
    # The program's look-ups (invokes), in the order it made them: (token, arguments, the name
    # of the provider asked, None for the default one).
    lookups: list[tuple[str, dict[str, Any], str | None]] = field(default_factory=list)

    def public_outputs(self) -> dict[str, Any]:
        return mask_secrets(self.outputs)

    def of_type(self, type_: str) -> list[PlannedResource]:
        return [r for r in self.resources if r.type == type_]

    def get(self, name: str) -> PlannedResource:
        for r in self.resources:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def custom(self) -> list[PlannedResource]:
        return [r for r in self.resources if r.custom]


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG


def mask_secrets(value: Any) -> Any:
    if is_secret(value):
        return SECRET_MASK
    if isinstance(value, dict):
        return {k: mask_secrets(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value


def unwrap_secrets(value: Any) -> Any:
    if is_secret(value):
        return unwrap_secrets(value.get("value"))
    if isinstance(value, dict):
        return {k: unwrap_secrets(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [unwrap_secrets(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Deterministic fake cloud values


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\0".join(parts).encode()).digest()


def fake_ip(*parts: str) -> str:
    """An address in TEST-NET-3 (203.0.113.0/24): documentation space, never a real host."""
    return str(ipaddress.ip_address("203.0.113.0") + 1 + _digest(*parts)[0] % 254)


def fake_id(type_: str, name: str) -> str:
    d = _digest(type_, name)
    if type_.startswith("hcloud:"):
        return str(10_000_000 + int.from_bytes(d[:4], "big") % 90_000_000)
    hexid = d.hex()[:17]
    prefixes = {
        "aws:ec2/instance:Instance": "i-",
        "aws:ebs/volume:Volume": "vol-",
        "aws:ec2/eip:Eip": "eipalloc-",
        "aws:ec2/vpc:Vpc": "vpc-",
        "aws:ec2/subnet:Subnet": "subnet-",
        "aws:ec2/securityGroup:SecurityGroup": "sg-",
        "aws:ec2/internetGateway:InternetGateway": "igw-",
        "aws:ec2/routeTable:RouteTable": "rtb-",
        "aws:ec2/eipAssociation:EipAssociation": "eipassoc-",
        "aws:ec2/keyPair:KeyPair": "key-",
        "aws:ec2/placementGroup:PlacementGroup": "pg-",
    }
    return prefixes.get(type_, f"{name}-") + hexid


def _fake_pem(label: str, name: str) -> str:
    """A PEM-shaped placeholder naming the resource it stands for (k8s)."""
    return f"-----BEGIN {label}-----\nOFFLINE-{name}\n-----END {label}-----\n"


def _fake_openssh_key(name: str) -> str:
    """An OpenSSH ed25519 public key line in the right format whose 32 key bytes are a digest
    of the resource's name: stable across plans, and no private key exists for it."""
    blob = b"".join(
        len(part).to_bytes(4, "big") + part for part in (b"ssh-ed25519", _digest("ssh", name))
    )
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} offline-{name}"


def fake_outputs(type_: str, name: str, id_: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """The computed properties the blueprints read, as the provider would report them.

    A provider reports a new resource's inputs back as its state, and so does this, except for
    Kubernetes objects (KubeObject in the k8s rung): nothing reads one back, and echoing every
    manifest made a second copy of the whole app at each plan (at 2,000 services, a fifth of
    the k8s plan's time and 27 MiB). Their outputs are unknown in a plan, as computed values
    are in a preview."""
    if _echo_skipped(type_):
        return {}
    state = dict(inputs)
    arn = f"arn:aws:offline:::{name}/{id_}"
    extra: dict[str, dict[str, Any]] = {
        "hcloud:index/server:Server": {
            "ipv4Address": fake_ip(type_, name),
            "ipv6Address": "2001:db8::1",
            "status": "running",
        },
        "hcloud:index/floatingIp:FloatingIp": {"ipAddress": fake_ip(type_, name)},
        "hcloud:index/volume:Volume": {"linuxDevice": f"/dev/disk/by-id/scsi-0HC_Volume_{id_}"},
        "hcloud:index/loadBalancer:LoadBalancer": {"ipv4": fake_ip(type_, name)},
        "aws:ec2/instance:Instance": {"publicIp": fake_ip(type_, name), "arn": arn},
        "aws:ec2/eip:Eip": {"publicIp": fake_ip(type_, name), "allocationId": id_},
        "aws:ec2/keyPair:KeyPair": {"keyName": inputs.get("keyName", name)},
        "aws:lb/loadBalancer:LoadBalancer": {"arn": arn, "dnsName": f"{name}.elb.offline"},
        "aws:lb/targetGroup:TargetGroup": {"arn": arn},
        "aws:ec2/placementGroup:PlacementGroup": {"name": inputs.get("name", name)},
        # -- compose --
        "aws:iam/role:Role": {"arn": f"arn:aws:iam::000000000000:role/{inputs.get('name', name)}"},
        "aws:dlm/lifecyclePolicy:LifecyclePolicy": {"arn": arn},
        # -- nomad --
        # Visible placeholders (the tls ones are shared with k8s below): the ACL bootstrap
        # token and the gossip key of a plan are never real.
        "random:index/randomUuid:RandomUuid": {"result": f"<secret:{name}>"},
        "random:index/randomBytes:RandomBytes": {
            "base64": f"<secret:{name}>",
            "hex": f"<secret:{name}>",
        },
        # -- k8s --
        # A stack reading its own earlier outputs: a plan has no earlier update.
        "pulumi:pulumi:StackReference": {"outputs": {}, "secretOutputNames": []},
        # Visible placeholders, not key material: a plan never holds a real key or token.
        "random:index/randomPassword:RandomPassword": {"result": f"offline-{name}"},
        "tls:index/privateKey:PrivateKey": {
            "privateKeyPem": _fake_pem("PRIVATE KEY", name),
            "publicKeyPem": _fake_pem("PUBLIC KEY", name),
            "privateKeyOpenssh": _fake_pem("OPENSSH PRIVATE KEY", name),
            "publicKeyOpenssh": _fake_openssh_key(name),
        },
        "tls:index/selfSignedCert:SelfSignedCert": {"certPem": _fake_pem("CERTIFICATE", name)},
        "tls:index/certRequest:CertRequest": {
            "certRequestPem": _fake_pem("CERTIFICATE REQUEST", name)
        },
        "tls:index/locallySignedCert:LocallySignedCert": {
            "certPem": _fake_pem("CERTIFICATE", name)
        },
    }
    state.update(extra.get(type_, {}))
    return state


# A look-up answerer: (invoke token, its arguments) -> the provider's answer, or None for the
# default answer. A caller says with one what the cloud holds (a volume attached to the spare).
# An answer may also be (outputs, [(property, reason), ...]): the look-up fails with the reason,
# as a provider's data source does when nothing matches.
Lookup = Callable[[str, dict[str, Any]], Any]

# The default answers to the look-ups a program makes of the cloud before it decides anything:
# nothing exists yet (a first deploy), so a plan does not depend on any real cloud.
EMPTY_LOOKUPS: dict[str, dict[str, Any]] = {
    "hcloud:index/getVolumes:getVolumes": {"volumes": []},
    "hcloud:index/getServers:getServers": {"servers": []},
    "hcloud:index/getFloatingIps:getFloatingIps": {"floatingIps": []},
    "hcloud:index/getPlacementGroups:getPlacementGroups": {"placementGroups": []},
    "aws:ebs/getEbsVolumes:getEbsVolumes": {"ids": []},
    "aws:ec2/getEips:getEips": {"allocationIds": [], "publicIps": []},
    "aws:ec2/getInstances:getInstances": {
        "ids": [],
        "ipv6Addresses": [],
        "privateIps": [],
        "publicIps": [],
    },
}
# Singular look-ups that fail when nothing matches, with the provider's words.
EMPTY_FAILURES: dict[str, str] = {
    "aws:ec2/getKeyPair:getKeyPair": "no matching EC2 Key Pair found",
}


@functools.cache
def _mocks_module():
    # Imported lazily: `blueprints validate` and `--help` should not pay for Pulumi's import.
    import pulumi
    from pulumi.runtime import mocks as pm

    class OfflineMocks(pm.Mocks):
        def __init__(self, lookup: Lookup | None = None):
            self.lookup = lookup
            self.calls: list[tuple[str, dict[str, Any], str | None]] = []
            # What each created resource reports, by id: a look-up of one answers with it.
            self.by_id: dict[str, dict[str, Any]] = {}

        def new_resource(self, args: pm.MockResourceArgs):
            # A read (a StackReference) comes without the custom flag but with an id.
            if not args.custom and not args.resource_id:
                return "", {}
            id_ = fake_id(args.typ, args.name)
            outputs = fake_outputs(args.typ, args.name, id_, args.inputs)
            if args.typ == "aws:ec2/instance:Instance":  # what getInstance is asked about
                self.by_id[id_] = outputs
            return id_, outputs

        def call(self, args: pm.MockCallArgs):
            arguments = _plain(dict(args.args))
            provider = args.provider.split("::")[-2] if args.provider else None
            self.calls.append((args.token, arguments, provider))
            if self.lookup is not None:
                answer = self.lookup(args.token, arguments)
                if answer is not None:
                    return answer
            if args.token == "aws:ec2/getAmi:getAmi":
                return {"id": "ami-0offline0ubuntu2404", "architecture": "x86_64"}
            if args.token == "aws:ec2/getInstance:getInstance":
                found = self.by_id.get(str(arguments.get("instanceId")), {})
                return {"id": arguments.get("instanceId"), "publicIp": found.get("publicIp")}
            if args.token in EMPTY_LOOKUPS:
                return json.loads(json.dumps(EMPTY_LOOKUPS[args.token]))
            if args.token in EMPTY_FAILURES:
                return {}, [("", EMPTY_FAILURES[args.token])]
            return {"id": f"{args.token}-offline"}

    class RecordingMonitor(pm.MockMonitor):
        def __init__(self, mocks: pm.Mocks, stack: str):
            super().__init__(mocks)
            self.stack = stack
            self.records: list[PlannedResource] = []
            self.names_by_urn: dict[str, str] = {}

        def ReadResource(self, request):
            # A read (the k8s rung's StackReference to itself) is no planned resource, but
            # others may depend on it: name it like one.
            response = super().ReadResource(request)
            self.names_by_urn[response.urn] = request.name
            return response

        def RegisterResource(self, request):
            # pm.MockMonitor.RegisterResource, but the inputs deserialized once for the mocks
            # and the record, and no copy of every resource's outputs kept for the
            # pulumi:pulumi:getResource invoke, which no program here makes (at thousands of
            # resources, a sixth of a plan's memory and time).
            from pulumi.runtime import rpc
            from pulumi.runtime.proto import resource_pb2
            from pulumi.runtime.sync_await import _ensure_event_loop, _sync_await

            if request.type == "pulumi:pulumi:Stack":
                return super().RegisterResource(request)
            urn = self.make_urn(request.parent, request.type, request.name)
            _ensure_event_loop()  # resource references are deserialized on this thread's loop
            inputs = rpc.deserialize_properties(request.object)
            plain = _plain(inputs)
            id_, state = self.mocks.new_resource(
                pm.MockResourceArgs(
                    typ=request.type,
                    name=request.name,
                    inputs=inputs,
                    provider=request.provider,
                    resource_id=request.importId,
                    custom=request.custom or False,
                    transforms=pm._resolve_callbacks(request.transforms),
                )
            )
            outputs = _sync_await(rpc.serialize_properties(state, {}))
            response = resource_pb2.RegisterResourceResponse(urn=urn, id=id_, object=outputs)
            self.names_by_urn[response.urn] = request.name
            provider = request.provider.split("::")[-2] if request.provider else None
            self.records.append(
                PlannedResource(
                    stack=self.stack,
                    type=request.type,
                    name=request.name,
                    parent=self.names_by_urn.get(request.parent),
                    inputs=plain,
                    id=response.id,
                    custom=bool(request.custom),
                    protect=bool(request.protect),
                    delete_before_replace=bool(request.deleteBeforeReplace),
                    deleted_with=self.names_by_urn.get(request.deletedWith),
                    retain_on_delete=bool(request.retainOnDelete),
                    provider=provider,
                    depends_on=sorted(self.names_by_urn.get(u, u) for u in request.dependencies),
                    replace_on_changes=sorted(request.replaceOnChanges),
                    ignore_changes=sorted(request.ignoreChanges),
                )
            )
            return response

    return pulumi, pm, OfflineMocks, RecordingMonitor


def _echo_skipped(type_: str) -> bool:
    """Kubernetes objects sent as they are stored (not the helm Release or the provider)."""
    return type_.startswith("kubernetes:") and type_ != "kubernetes:helm.sh/v3:Release"


def _plain(value: Any, _intern: Callable[[str], str] = sys.intern) -> Any:
    """Deserialized protobuf values -> plain JSON-able Python (floats that are ints -> int).

    Keys are interned: protobuf hands out a new string for every key of every object, and the
    same few hundred names (metadata, labels, ...) were 24 MB at 6,000 Kubernetes objects."""
    if isinstance(value, dict):
        return {_intern(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# ---------------------------------------------------------------------------------------------
# Stack files


def find_project(start: Path | None = None) -> Path:
    """The nearest directory (from start, default cwd) holding Pulumi.yaml."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "Pulumi.yaml").is_file():
            return d
    raise PlanError(f"{here}: no Pulumi.yaml here or above; run inside a blueprints project")


def read_project(project_dir: Path) -> tuple[str, Path, Path]:
    """(project name, stack config dir, program path) from Pulumi.yaml."""
    path = project_dir / "Pulumi.yaml"
    try:
        data = fast_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PlanError(f"{path}: cannot be read as YAML ({exc.__class__.__name__})") from None
    name = str(data.get("name") or PROJECT_NAME_DEFAULT)
    stacks = project_dir / str(data.get("stackConfigDir") or ".")
    main = project_dir / str(data.get("main") or ".")
    return name, stacks, main


def list_stacks(project_dir: Path) -> list[str]:
    _, stacks_dir, _ = read_project(project_dir)
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in stacks_dir.glob("Pulumi.*.yaml"))


def _config_value(value: Any) -> str:
    """Pulumi hands config to programs as strings; objects and lists as JSON. The stack file's
    values come as Pulumi reads them (settings.load_stack_file); overrides may be any."""
    from blueprints.settings import config_text

    return config_text(value)


def _placeholder(key: str) -> str:
    return f"<secret:{key}>"


def _replace_secure(value: Any, key: str, notes: list[str]) -> tuple[Any, bool]:
    """Replace `{secure: ...}` leaves with placeholders; report whether any were found."""
    if isinstance(value, dict) and set(value) == {"secure"}:
        notes.append(f"{key} is encrypted; planned with a placeholder")
        return _placeholder(re.split(r"[:.]", key)[-1]), True
    if isinstance(value, dict):
        found = False
        out = {}
        for k, v in value.items():
            out[k], f = _replace_secure(v, f"{key}.{k}", notes)
            found = found or f
        return out, found
    if isinstance(value, list):
        found = False
        items = []
        for i, v in enumerate(value):
            item, f = _replace_secure(v, f"{key}[{i}]", notes)
            items.append(item)
            found = found or f
        return items, found
    return value, False


def read_stack_file(
    stacks_dir: Path, stack: str, project_dir: Path
) -> tuple[Path, Path, dict[str, Any]]:
    """(path, path as shown, its `config:` mapping) of stacks/Pulumi.<stack>.yaml."""
    path = stacks_dir / f"Pulumi.{stack}.yaml"
    rel = path.relative_to(project_dir) if path.is_relative_to(project_dir) else path
    if not path.is_file():
        known = ", ".join(list_stacks(project_dir)) or "none"
        raise PlanError(f"{rel}: no such stack file; stacks here: {known}")
    # Its shape (YAML, a mapping, `config:` of text keys, none twice), each problem by line.
    from blueprints.settings import load_stack_file
    from blueprints.spec import SpecError

    try:
        return path, rel, load_stack_file(path, str(rel)).config
    except SpecError as exc:
        raise PlanError(str(exc)) from None


def load_stack_config(
    project: str,
    stacks_dir: Path,
    stack: str,
    project_dir: Path,
    overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, str], list[str], list[str]]:
    """(config for the program, secret keys, notes) from stacks/Pulumi.<stack>.yaml."""
    _, rel, file_config = read_stack_file(stacks_dir, stack, project_dir)
    notes: list[str] = []
    config: dict[str, Any] = {}
    secret_keys: list[str] = []
    entries = {**file_config, **(overrides or {})}
    for raw_key, value in entries.items():
        if not isinstance(raw_key, str):
            raise PlanError(f"{rel}: config key {raw_key!r} is not a string; quote it")
        key = raw_key if ":" in raw_key else f"{project}:{raw_key}"
        value, secret = _replace_secure(value, key, notes)
        config[key] = value
        if secret:
            secret_keys.append(key)

    # A secret the spec needs but the stack does not set: plan with a placeholder, as
    # `pulumi up` would stop and ask for it. The keys are in the `blueprints:` namespace whatever
    # the project is called (a baked project has its own name), where blueprints.stack reads them.
    secrets_key = "blueprints:secrets"
    spec_path = project_dir / str(config.get("blueprints:spec", "examples/app.yaml"))
    try:
        from blueprints.spec import load_spec

        needed = load_spec(spec_path).secret_names()
    except Exception:
        needed = []
    given = config.get(secrets_key)
    if given is not None and not isinstance(given, dict):
        raise PlanError(f"{rel}: {secrets_key}: must be a map of NAME: value")
    given = dict(given or {})
    raw_secrets = entries.get(secrets_key) or entries.get("secrets") or {}
    # (anything but a map is refused above, or by the program: `secrets:` without a namespace)
    plain = sorted(
        k
        for k, v in (raw_secrets.items() if isinstance(raw_secrets, dict) else ())
        if not (isinstance(v, dict) and set(v) == {"secure"})
    )
    if plain:
        notes.append(
            "stored in plain text in the stack file, use `pulumi config set --secret`: "
            + ", ".join(f"{secrets_key}.{k}" for k in plain)
        )
    missing = [n for n in needed if n not in given]
    if missing:
        notes.append(
            "not set in the stack, planned with placeholders: "
            + ", ".join(f"{secrets_key}.{n}" for n in missing)
        )
        given.update({n: _placeholder(n) for n in missing})
    from blueprints.settings import BACKUP_SECRET_KEY

    snapshot_key = f"blueprints:{BACKUP_SECRET_KEY}"
    if "blueprints:backupBucket" in config and snapshot_key not in config:
        notes.append(f"not set in the stack, planned with a placeholder: {snapshot_key}")
        config[snapshot_key] = _placeholder(BACKUP_SECRET_KEY)
        secret_keys.append(snapshot_key)
    if given or secrets_key in config:
        config[secrets_key] = given
        if secrets_key not in secret_keys:
            secret_keys.append(secrets_key)

    return {k: _config_value(v) for k, v in sorted(config.items())}, sorted(secret_keys), notes


# ---------------------------------------------------------------------------------------------
# Running a stack


def plan_stack(
    stack: str,
    project_dir: Path | None = None,
    overrides: dict[str, Any] | None = None,
    lookup: Lookup | None = None,
    *,
    spec: Path | None = None,
) -> Plan:
    """Evaluate one stack under the mock runtime and return what it would create.

    `overrides` replaces stack config entries (e.g. {"blueprints:active": "spare"}), as
    `pulumi config set` would, without touching the file. `lookup` answers the program's
    look-ups of the cloud (invokes; see Lookup); unanswered, the cloud holds nothing yet.
    `spec` plans this app spec instead of the stack's own `blueprints:spec` (`--spec`).
    """
    project_dir = (project_dir or find_project()).resolve()
    if spec is not None:
        # Absolute: the program reads blueprints:spec relative to the project directory.
        overrides = {**(overrides or {}), "blueprints:spec": str(Path(spec).resolve())}
    project, stacks_dir, main = read_project(project_dir)
    config, secret_keys, notes = load_stack_config(
        project, stacks_dir, stack, project_dir, overrides
    )
    # Each run gets a copy of the current context: Pulumi keeps its runtime state (config,
    # settings, root resource) in context variables, so stacks planned one after another in
    # one process cannot see each other's state.
    return contextvars.copy_context().run(
        _run, project, stack, project_dir, main, config, secret_keys, notes, lookup
    )


def _run(
    project: str,
    stack: str,
    project_dir: Path,
    main: Path,
    config: dict[str, str],
    secret_keys: list[str],
    notes: list[str],
    lookup: Lookup | None = None,
) -> Plan:
    pulumi, pm, offline_mocks, recording_monitor = _mocks_module()
    from pulumi.runtime import settings as ps
    from pulumi.runtime.config import set_all_config
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    set_all_config(config, secret_keys)
    ps.ROOT.set(None)
    mocks = offline_mocks(lookup)
    monitor = recording_monitor(mocks, stack)
    logger = _note_logger(stack, notes)
    pm.set_mocks(mocks, project=project, stack=stack, preview=True, monitor=monitor, logger=logger)
    ps.SETTINGS.root_directory = str(project_dir)
    ps.SETTINGS.rpc_manager.clear()
    ps.SETTINGS.outputs.clear()

    def program() -> None:
        sys.path.insert(0, str(project_dir))
        try:
            runpy.run_path(str(main), run_name="__main__")
        finally:
            sys.path.remove(str(project_dir))

    # Pulumi records the Python stack of every resource's creation for the engine to show
    # (source positions); nothing reads them offline, and walking the stack was a tenth of a
    # plan. Only while this plan runs: a real `pulumi up` never comes through here.
    from pulumi.runtime import resource as pr
    from pulumi.runtime import rpc
    from pulumi.runtime.proto import source_pb2

    stack_trace, pr._get_stack_trace = pr._get_stack_trace, source_pb2.StackTrace
    # The same answer without the garbage cycle Pulumi's version leaves on every call (a nested
    # function that refers to itself): millions of them at thousands of resources, and the
    # CLI runs without the cyclic collector (cli.main).
    contains_unknowns, rpc.contains_unknowns = rpc.contains_unknowns, _contains_unknowns
    try:
        _sync_await(run_pulumi_func(program))
        root = ps.get_root_resource()
        outputs = {}
        for key, value in (getattr(root, "outputs", {}) or {}).items():
            out = pulumi.Output.from_input(value)
            resolved = _plain(_sync_await(out.future(with_unknowns=True)))
            secret = _sync_await(out.is_secret())
            outputs[key] = {SIG_KEY: SECRET_SIG, "value": resolved} if secret else resolved
    except pulumi.RunError as exc:
        raise PlanError(str(exc)) from None
    except Exception as exc:
        raise PlanError(f"stack {stack}: the program failed: {exc}") from exc
    finally:
        pr._get_stack_trace = stack_trace
        rpc.contains_unknowns = contains_unknowns
    resources = sorted(monitor.records, key=lambda r: (r.type, r.name))
    return Plan(stack=stack, resources=resources, outputs=outputs, notes=notes, lookups=mocks.calls)


def _contains_unknowns(value: Any) -> bool:
    """pulumi.runtime.rpc.contains_unknowns: whether an unknown value is anywhere in `value`
    (through dicts and lists, each object looked at once)."""
    from pulumi.runtime import known_types

    seen: set[int] = set()
    pending = [value]
    while pending:
        val = pending.pop()
        if known_types.is_unknown(val):
            return True
        if id(val) in seen:
            continue
        seen.add(id(val))
        if isinstance(val, dict):
            pending.extend(val.values())
        elif isinstance(val, list):
            pending.extend(val)
    return False


class _Notes(logging.Handler):
    def __init__(self, notes: list[str]):
        super().__init__(logging.INFO)
        self.notes = notes

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.notes:
            self.notes.append(message)


def _note_logger(stack: str, notes: list[str]) -> logging.Logger:
    """Where the program's pulumi.log.info/warn/error go: the plan's notes (not stderr)."""
    logger = logging.getLogger(f"blueprints.plan.{stack}")
    logger.handlers[:] = [_Notes(notes)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def plan_all(project_dir: Path | None = None, stacks: list[str] | None = None) -> list[Plan]:
    project_dir = (project_dir or find_project()).resolve()
    return [plan_stack(s, project_dir) for s in (stacks or list_stacks(project_dir))]


@dataclass
class Outcome:
    """Planning several stacks, each on its own: the plans, in the order asked, and why each
    stack that could not be planned failed (stack -> one message: the PlanError's, or the
    type and message of an unexpected error)."""

    plans: list[Plan]
    failed: dict[str, str]


def plan_each(
    stacks: list[str],
    project_dir: Path | None = None,
    *,
    spec: Path | None = None,
    step: Callable[[str], Any] | None = None,
    jobs: int = 1,
) -> Outcome:
    """Plan every stack although some cannot be planned (a rung refusing the spec, a bad stack
    file): one stack's failure never hides the others. `step(stack)` is called before each
    stack is planned, or with `jobs` > 1 (that many worker processes, see blueprints.parallel)
    as each one's plan comes back, in the order of `stacks`."""
    from blueprints import parallel

    project_dir = (project_dir or find_project()).resolve()

    def one(stack: str) -> tuple[Plan | None, str | None]:
        try:
            return plan_stack(stack, project_dir, spec=spec), None
        except PlanError as exc:
            return None, str(exc).strip() or "cannot be planned"
        except Exception as exc:  # a bug: this stack's failure, not the run's, and named
            return None, unexpected_error(exc)

    plans: list[Plan] = []
    failed: dict[str, str] = {}

    def record(stack: str, result: tuple[Plan | None, str | None] | None, why: str | None):
        plan, problem = result if result is not None else (None, f"not planned: {why}")
        if plan is not None:
            plans.append(plan)
        else:
            failed[stack] = problem or "cannot be planned"

    if jobs <= 1 or len(stacks) <= 1:
        for stack in stacks:
            if step is not None:
                step(stack)
            record(stack, one(stack), None)
        return Outcome(plans, failed)
    # What every worker needs, imported once here rather than once in each of them.
    _mocks_module()
    try:
        stacks_dir: Path | None = read_project(project_dir)[1]
    except PlanError:
        stacks_dir = None  # each stack's plan says why
    keys = [_cloud_key(stacks_dir, s) for s in stacks]
    for stack, result, why in parallel.run(stacks, one, keys=keys, jobs=jobs):
        if step is not None:
            step(stack)
        record(stack, result, why)
    return Outcome(plans, failed)


def _cloud_key(stacks_dir: Path | None, stack: str) -> str:
    """What a stack's plan imports besides the common part: its target's provider SDK. Read
    loosely (a stack file that cannot be read fails in its own plan, with its own message)."""
    if stacks_dir is None:
        return stack
    try:
        text = (stacks_dir / f"Pulumi.{stack}.yaml").read_text(encoding="utf-8")
        config = (fast_load(text) or {}).get("config") or {}
        return str(next((v for k, v in config.items() if str(k).endswith("target")), stack))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError, TypeError):
        return stack


def unexpected_error(exc: Exception) -> str:
    """One line for an error nothing expected: its type, where it was raised, its message."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if frames:
        path = Path(frames[-1].filename)
        package = Path(__file__).resolve().parent
        shown = path.relative_to(package.parent) if path.is_relative_to(package) else path.name
        where = f" at {shown}:{frames[-1].lineno}"
    message = " ".join(str(exc).split()) or "no message"
    return (
        f"unexpected {type(exc).__name__}{where}: {message} (a bug in blueprints: please "
        "report it with this line)"
    )
