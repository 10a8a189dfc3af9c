"""Offline previews: `blueprints diff --base REF` compares two offline plans of the same stacks.

The stacks are planned twice under Pulumi's mock runtime (blueprints/plan.py), once as they are
at a git ref and once as they are in the working tree, and the two plans are turned into
documents of the same shape as `pulumi preview --json` (PreviewDigest), so the report module
reads them like real previews. No cloud account, no Pulumi backend, no Pulumi CLI.

How the two sides are planned
- The base ref is read with `git archive` (no worktree, the repository is not touched) into a
  temporary directory that is removed afterwards, also on errors and Ctrl-C.
- Each side is planned in its own `python -c plan_dump.py` subprocess, both at once, with the
  side's project directory as cwd. When that tree holds its own `blueprints/` package (this
  repository), it is first on PYTHONPATH, so each ref is evaluated with its own code; a baked
  project (no `blueprints/` directory) uses the installed blueprints for both sides.
- Each stack is planned on its own (offline_diff). One that cannot be planned in the working
  tree (a rung refusing the spec, a bad stack file) is a failed preview of that stack, with
  why, never read as "no changes". One that cannot be planned only at the base (the change
  fixes it) is diffed against an empty base, with a warning: what it replaces or deletes where
  it runs is unknown (the report and --fail-on treat that as for a failed preview). Paths in
  the base's messages are written REF:path, not as the temporary copy's.
- `--spec FILE` (spec=) plans the working tree's stacks with that app spec instead of each
  stack's own blueprints:spec; the base is planned as it was at the ref, with the spec its
  stacks named there. The diff then shows what the spec would change in what the base deploys.

How two plans become a preview
- Resources are matched by URN (stack, project, parent type chain, type, name), as Pulumi
  matches them; only-new -> create, only-old -> delete.
- For matched resources the inputs are compared leaf by leaf (detailedDiff paths such as
  `labels.stack` or `rules[1].port`). A change is a replacement when the property is in
  REPLACE_ON_CHANGE for the resource type (what the provider marks ForceNew / "forces
  replacement"), or in the resource's own replaceOnChanges option; ignoreChanges is honoured.
- Pulumi's providers decide replacements at preview time; offline this table stands in for
  them. A type missing from the table is diffed as update-only; a diagnostic says so.
- A replaced resource gets a new id. Every other resource whose inputs hold that id gets the
  property as unknown (Pulumi's unknown sentinel), which may force its own replacement (a volume
  attachment of a replaced server is replaced too), repeated until nothing changes.
- Secrets stay secret: the plans carry keyed digests of secret values (see plan_dump.py), so a
  changed secret shows as a changed "[secret]" property; documents only hold "[secret]".
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
SECRET_MASK = "[secret]"
# What `pulumi preview --json` writes for a value not known until apply (resource.UnknownValue
# serialized by pkg/resource/stack/checkpoint.go as plugin.UnknownStringValue).
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
ROOT_TYPE = "pulumi:pulumi:Stack"
TEMP_PREFIX = "blueprints-diff-"
PLAN_TIMEOUT_SECONDS = 900

# Input properties whose change makes the provider replace the resource (camelCase, as in the
# Pulumi SDKs; a dotted path covers a nested field). Sources:
#  [hc]  hetznercloud/terraform-provider-hcloud, `ForceNew: true` in the resource schema
#        (internal/<resource>/resource*.go), which pulumi-hcloud bridges unchanged;
#  [hc*] same provider, resource without an update function (every argument ForceNew);
#  [aws] Terraform AWS provider resource schema, `ForceNew` / registry docs "Forces new
#        resource" (pulumi-aws bridges it; Pulumi registry shows these as "forces replacement");
#  [rnd] terraform-provider-random: every argument `RequiresReplace` (registry docs: "changing
#        any argument generates a new value");
#  [tls] terraform-provider-tls: arguments are `RequiresReplace` (earlyRenewalHours is not);
#  [cmd] pulumi/pulumi-command (a native provider, not bridged): in the v1 schema only
#        `triggers` is tagged replaceOnChanges (provider/pkg/provider/common/inputs.go), and the
#        SDKs also pass it as the `triggers[*]` replaceOnChanges option, so a trigger change
#        replaces the resource whatever its docs say about `update`. Any other input (stdin,
#        environment, the commands, the secret connection) changes in place: the provider's
#        Update runs the `update` command, or `create` again when there is none
#        (remote/commandController.go; SDK docs: "If an `update` command isn't provided, then
#        `create` will also be run when the resource's inputs are modified").
#  [nmd] hashicorp/terraform-provider-nomad (bridged by pulumi-nomad): nomad_variable has
#        `path` and `namespace` ForceNew; nomad_job has no ForceNew argument, and its
#        CustomizeDiff forces a new job only when the jobspec's job ID or namespace changes
#        (nomad/resource_job.go), which the blueprints never do for a kept job: a changed
#        jobspec is an update, that is a new version of the job and a Nomad deployment.
#  [k8s] pulumi/pulumi-kubernetes (native): provider/pkg/provider/diff.go, forceNewProperties:
#        metadata.name and metadata.namespace for every kind, plus per kind the fields below;
#        helm.sh/v3 Release replaces on name and namespace only (helm_release.go, Diff). A
#        Secret's data would replace too unless the provider has enableSecretMutable, which the
#        k8s rung sets; a custom resource (any other group) replaces on its metadata only.
#  [s3]  Terraform AWS provider, aws_s3_bucket: bucket, bucket_prefix and object_lock_enabled
#        are ForceNew.
REPLACE_ON_CHANGE: dict[str, tuple[str, ...]] = {
    # -- Hetzner Cloud --
    "hcloud:index/server:Server": ("datacenter", "image", "location", "sshKeys", "userData"),
    "hcloud:index/volume:Volume": ("location",),  # [hc]; size grows in place
    "hcloud:index/floatingIp:FloatingIp": ("homeLocation", "type"),  # [hc]
    "hcloud:index/floatingIpAssignment:FloatingIpAssignment": ("floatingIpId", "serverId"),  # [hc*]
    "hcloud:index/volumeAttachment:VolumeAttachment": (
        "automount",
        "serverId",
        "volumeId",
    ),  # [hc*]
    "hcloud:index/network:Network": (),  # [hc] ipRange changes in place (change_ip_range)
    "hcloud:index/networkSubnet:NetworkSubnet": (  # [hc]
        "ipRange",
        "networkId",
        "networkZone",
        "type",
        "vswitchId",
    ),
    "hcloud:index/placementGroup:PlacementGroup": ("type",),  # [hc]
    "hcloud:index/sshKey:SshKey": ("publicKey",),  # [hc]
    "hcloud:index/firewall:Firewall": (),  # [hc] rules and labels update in place
    "hcloud:index/loadBalancer:LoadBalancer": ("ipv4Id", "ipv6Id", "location", "networkZone"),
    "hcloud:index/loadBalancerNetwork:LoadBalancerNetwork": (  # [hc*]
        "ip",
        "loadBalancerId",
        "networkId",
        "subnetId",
    ),
    "hcloud:index/loadBalancerService:LoadBalancerService": (  # [hc]
        "listenPort",
        "loadBalancerId",
        "protocol",
    ),
    "hcloud:index/loadBalancerTarget:LoadBalancerTarget": (  # [hc]
        "ip",
        "labelSelector",
        "loadBalancerId",
        "serverId",
    ),
    # -- AWS --
    "aws:ec2/instance:Instance": (  # [aws]; userData only with userDataReplaceOnChange
        "ami",
        "associatePublicIpAddress",
        "availabilityZone",
        "ebsBlockDevices",
        "ephemeralBlockDevices",
        "hostId",
        "keyName",
        "networkInterfaces",
        "placementGroup",
        "privateIp",
        "rootBlockDevice.encrypted",
        "rootBlockDevice.kmsKeyId",
        "securityGroups",
        "subnetId",
        "tenancy",
    ),
    "aws:ebs/volume:Volume": (  # [aws]; size, type, iops change in place
        "availabilityZone",
        "encrypted",
        "kmsKeyId",
        "outpostArn",
        "snapshotId",
    ),
    "aws:ec2/eip:Eip": ("address", "customerOwnedIpv4Pool", "domain", "publicIpv4Pool"),
    "aws:ec2/eipAssociation:EipAssociation": (  # [aws]
        "allocationId",
        "allowReassociation",
        "instanceId",
        "networkInterfaceId",
        "privateIpAddress",
        "publicIp",
    ),
    "aws:ec2/volumeAttachment:VolumeAttachment": ("deviceName", "instanceId", "volumeId"),
    "aws:ec2/vpc:Vpc": ("cidrBlock", "ipv4IpamPoolId"),  # [aws]
    "aws:ec2/subnet:Subnet": ("availabilityZone", "availabilityZoneId", "cidrBlock", "vpcId"),
    "aws:ec2/internetGateway:InternetGateway": (),  # [aws] vpcId re-attaches in place
    "aws:ec2/routeTable:RouteTable": ("vpcId",),  # [aws]
    "aws:ec2/routeTableAssociation:RouteTableAssociation": ("gatewayId", "subnetId"),  # [aws]
    "aws:ec2/securityGroup:SecurityGroup": ("description", "name", "namePrefix", "vpcId"),
    "aws:ec2/keyPair:KeyPair": ("keyName", "keyNamePrefix", "publicKey"),  # [aws]
    "aws:ec2/placementGroup:PlacementGroup": (  # [aws]
        "name",
        "partitionCount",
        "spreadLevel",
        "strategy",
    ),
    "aws:lb/loadBalancer:LoadBalancer": ("internal", "loadBalancerType", "name", "namePrefix"),
    "aws:lb/targetGroup:TargetGroup": (  # [aws]
        "ipAddressType",
        "name",
        "namePrefix",
        "port",
        "protocol",
        "protocolVersion",
        "targetType",
        "vpcId",
    ),
    "aws:lb/targetGroupAttachment:TargetGroupAttachment": (  # [aws]
        "availabilityZone",
        "port",
        "targetGroupArn",
        "targetId",
    ),
    "aws:lb/listener:Listener": ("loadBalancerArn",),  # [aws]
    "aws:iam/role:Role": ("name", "namePrefix", "path"),  # [aws]
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment": ("policyArn", "role"),  # [aws]
    "aws:dlm/lifecyclePolicy:LifecyclePolicy": (),  # [aws] all in place
    "aws:ec2transitgateway/instanceState:InstanceState": ("instanceId",),  # [aws]
    # blueprints.targets.hcloud_power: a server's power, kept by the program on hcloud
    "pulumi-python:dynamic/blueprints:ServerPower": ("serverId",),
    # -- commands over SSH (the release channel) and on the machine running Pulumi --
    "command:remote:Command": ("triggers",),  # [cmd]
    "command:remote:CopyToRemote": ("triggers",),  # [cmd] source and remotePath in place
    "command:local:Command": ("triggers",),  # [cmd]
    # -- Nomad's API (the nomad rung's release) --
    "nomad:index/job:Job": (),  # [nmd]
    "nomad:index/variable:Variable": ("namespace", "path"),  # [nmd]
    # -- the Kubernetes API (the k8s rung's release) --
    "kubernetes:core/v1:Namespace": ("metadata.name",),  # [k8s]
    "kubernetes:core/v1:Secret": ("metadata.name", "metadata.namespace", "type"),  # [k8s]
    "kubernetes:core/v1:Service": ("metadata.name", "metadata.namespace", "spec.clusterIP"),
    "kubernetes:apps/v1:Deployment": ("metadata.name", "metadata.namespace", "spec.selector"),
    "kubernetes:apps/v1:StatefulSet": (  # [k8s]
        "metadata.name",
        "metadata.namespace",
        "spec.podManagementPolicy",
        "spec.revisionHistoryLimit",
        "spec.selector",
        "spec.serviceName",
        "spec.volumeClaimTemplates",
    ),
    "kubernetes:policy/v1:PodDisruptionBudget": ("metadata.name", "metadata.namespace"),  # [k8s]
    "kubernetes:networking.k8s.io/v1:Ingress": ("metadata.name", "metadata.namespace"),  # [k8s]
    "kubernetes:networking.k8s.io/v1:NetworkPolicy": (
        "metadata.name",
        "metadata.namespace",
    ),  # [k8s]
    "kubernetes:storage.k8s.io/v1:StorageClass": ("metadata.name", "parameters", "provisioner"),
    "kubernetes:helm.cattle.io/v1:HelmChartConfig": (
        "metadata.name",
        "metadata.namespace",
    ),  # [k8s]
    "kubernetes:cert-manager.io/v1:ClusterIssuer": ("metadata.name", "metadata.namespace"),  # [k8s]
    "kubernetes:helm.sh/v3:Release": ("name", "namespace"),  # [k8s]
    # the backups' CronJobs and what their pods use (a CronJob's spec, a ConfigMap's data and a
    # Role's rules change in place; a RoleBinding's roleRef cannot)
    "kubernetes:batch/v1:CronJob": ("metadata.name", "metadata.namespace"),  # [k8s]
    # a task's Job (its pod template cannot change once created) and a shared volume's claim
    "kubernetes:batch/v1:Job": (  # [k8s]
        "metadata.name",
        "metadata.namespace",
        "spec.template",
    ),
    "kubernetes:core/v1:PersistentVolumeClaim": (  # [k8s]
        "metadata.name",
        "metadata.namespace",
        "spec.accessModes",
        "spec.storageClassName",
    ),
    "kubernetes:core/v1:ConfigMap": ("metadata.name", "metadata.namespace"),  # [k8s]
    "kubernetes:core/v1:ServiceAccount": ("metadata.name", "metadata.namespace"),  # [k8s]
    "kubernetes:rbac.authorization.k8s.io/v1:Role": (  # [k8s]
        "metadata.name",
        "metadata.namespace",
    ),
    "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding": (  # [k8s]
        "metadata.name",
        "metadata.namespace",
        "roleRef",
    ),
    "aws:s3/bucket:Bucket": ("bucket", "bucketPrefix", "objectLockEnabled"),  # [s3]
    # -- generated secrets and certificates --
    "random:index/randomBytes:RandomBytes": ("*",),  # [rnd]
    "random:index/randomPassword:RandomPassword": ("*",),  # [rnd]
    "random:index/randomUuid:RandomUuid": ("*",),  # [rnd]
    "tls:index/privateKey:PrivateKey": ("*",),  # [tls]
    "tls:index/certRequest:CertRequest": ("*",),  # [tls]
    "tls:index/selfSignedCert:SelfSignedCert": (  # [tls]
        "allowedUses",
        "dnsNames",
        "ipAddresses",
        "isCaCertificate",
        "privateKeyPem",
        "subject",
        "uris",
        "validityPeriodHours",
    ),
    "tls:index/locallySignedCert:LocallySignedCert": (  # [tls]
        "allowedUses",
        "caCertPem",
        "caPrivateKeyPem",
        "certRequestPem",
        "isCaCertificate",
        "validityPeriodHours",
    ),
}
# [aws] user data replaces the instance only when the program asks for it (pulumi-aws
# `userDataReplaceOnChange`); otherwise AWS stops, updates and starts the instance.
USER_DATA_REPLACE_FLAG = {
    "aws:ec2/instance:Instance": ("userDataReplaceOnChange", ("userData", "userDataBase64"))
}


class DiffError(Exception):
    """`blueprints diff` cannot run; the message is one sentence."""


# ---------------------------------------------------------------------------------------------
# git


@dataclass(frozen=True)
class Base:
    ref: str
    commit: str
    repo_root: Path
    project_rel: Path  # the project directory relative to the repository root


def _git(args: Sequence[str], cwd: Path, *, binary: bool = False) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=not binary,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"},
            check=False,
        )
    except FileNotFoundError:
        raise DiffError(
            "git is not installed; `blueprints diff --base` reads the base from git"
        ) from None


def resolve_base(project_dir: Path, ref: str) -> Base:
    """Check that project_dir is in a git repository and ref names a commit."""
    if not ref or ref.startswith("-") or "\n" in ref:
        raise DiffError(f"--base {ref!r} is not a git ref; give a branch, tag or commit")
    top = _git(["rev-parse", "--show-toplevel"], project_dir)
    if top.returncode != 0:
        raise DiffError(
            f"{project_dir} is not inside a git repository; `blueprints diff --base` compares "
            "the working tree with a commit of its git history"
        )
    root = Path(top.stdout.strip()).resolve()
    found = _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], root)
    if found.returncode != 0:
        raise DiffError(
            f"--base {ref!r} is not a commit in {root} (fetch it first in a shallow CI clone, "
            "e.g. git fetch origin $CI_MERGE_REQUEST_TARGET_BRANCH_NAME)"
        )
    return Base(ref, found.stdout.strip(), root, project_dir.resolve().relative_to(root))


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    """A temporary directory for one run, removed afterwards whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def extract_base(base: Base, dest: Path) -> Path | None:
    """Write the base commit's copy of the project into dest; None if it had no project there."""
    rel = base.project_rel.as_posix()
    pulumi_yaml = "Pulumi.yaml" if rel == "." else f"{rel}/Pulumi.yaml"
    if _git(["cat-file", "-e", f"{base.commit}:{pulumi_yaml}"], base.repo_root).returncode != 0:
        return None
    args = ["archive", "--format=tar", base.commit]
    if rel != ".":
        args += ["--", rel]
    archive = _git(args, base.repo_root, binary=True)
    if archive.returncode != 0:
        detail = archive.stderr.decode(errors="replace").strip().splitlines()[:1]
        raise DiffError(f"git archive {base.ref} failed: {' '.join(detail) or 'no output'}")
    try:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise DiffError(f"cannot unpack {base.ref} into {dest}: {exc}") from None
    return dest / rel


# ---------------------------------------------------------------------------------------------
# planning one side


@dataclass
class Side:
    label: str  # "main" or "working tree", for messages
    project: str | None
    stacks: list[str]
    plans: dict[str, dict[str, Any]]
    # Stacks of this side that could not be planned -> why (the PlanError's message).
    errors: dict[str, str] = field(default_factory=dict)


WORKING_TREE = "working tree"


def where(label: str) -> str:
    """A side's label as a place: "in the working tree", "at origin/main"."""
    return "in the working tree" if label == WORKING_TREE else f"at {label}"


# A line plan_dump.py prints on stdout before planning a stack (for progress).
PROGRESS_PREFIX = "blueprints-diff: planning "
# Where plan_dump.py reads --spec from (the working-tree side only).
SPEC_VARIABLE = "BLUEPRINTS_DIFF_SPEC"
# progress(side's label, stack): called as each side starts planning a stack.
Progress = Callable[[str, str], Any]


def _dump_source() -> str:
    return (Path(__file__).with_name("plan_dump.py")).read_text(encoding="utf-8")


@dataclass
class _Running:
    """One side's plan_dump.py subprocess, its stdout followed for progress lines."""

    proc: subprocess.Popen
    out: Path
    log: Path
    label: str
    follower: threading.Thread


def _start_plan(
    project_dir: Path,
    out: Path,
    stacks: Sequence[str],
    key: str,
    label: str,
    *,
    spec: Path | None = None,
    progress: Progress | None = None,
) -> _Running:
    env = dict(os.environ)
    env["BLUEPRINTS_DIFF_KEY"] = key
    env.pop(SPEC_VARIABLE, None)
    if spec is not None:
        env[SPEC_VARIABLE] = str(spec)
    if (project_dir / "blueprints" / "__init__.py").is_file():
        paths = [str(project_dir), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(paths)
    cmd = [sys.executable, "-c", _dump_source(), str(out), str(project_dir), *stacks]
    log = out.with_suffix(".log")
    with log.open("w", encoding="utf-8") as stderr:
        proc = subprocess.Popen(
            cmd,
            cwd=project_dir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            errors="replace",
        )

    def follow() -> None:
        # Read all of stdout (the program may print too), so the child never blocks on it.
        for line in proc.stdout:
            if progress is not None and line.startswith(PROGRESS_PREFIX):
                with contextlib.suppress(Exception):
                    progress(label, line[len(PROGRESS_PREFIX) :].strip())

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    return _Running(proc, out, log, label, follower)


def _stop(running: _Running) -> None:
    if running.proc.poll() is None:
        running.proc.kill()
        running.proc.wait()
    running.follower.join(timeout=5)


def _finish_plan(running: _Running) -> Side:
    proc, out, label = running.proc, running.out, running.label
    try:
        proc.wait(timeout=PLAN_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        _stop(running)
        raise DiffError(f"planning the {label} took longer than {PLAN_TIMEOUT_SECONDS} s") from None
    running.follower.join(timeout=5)
    if proc.returncode != 0 or not out.is_file():
        stderr = running.log.read_text(encoding="utf-8", errors="replace")
        last = [line for line in stderr.strip().splitlines() if line.strip()][-1:]
        raise DiffError(
            f"planning the {label} failed (exit {proc.returncode}): {' '.join(last) or 'no output'}"
        )
    data = json.loads(out.read_text(encoding="utf-8"))
    if data.get("fatal"):
        raise DiffError(f"{label}: {data['fatal']}")
    errors = {
        str(stack): str(message).strip() or "cannot be planned"
        for stack, message in sorted((data.get("errors") or {}).items())
    }
    return Side(
        label, data.get("project"), list(data.get("stacks", [])), data.get("plans", {}), errors
    )


def _at_ref(message: str, root: Path, ref: str) -> str:
    """A base-side message with the temporary copy's paths written as git does, REF:path (the
    copy is gone when the report is read, and its name changes with every run)."""
    for prefix in dict.fromkeys((str(root.resolve()), str(root))):
        message = message.replace(prefix + os.sep, f"{ref}:")
    return message


def plan_sides(
    project_dir: Path,
    base: Base,
    stacks: Sequence[str],
    work: Path,
    *,
    spec: Path | None = None,
    progress: Progress | None = None,
) -> tuple[Side, Side]:
    """(base side, working-tree side); both planned at the same time in subprocesses. `spec`
    (absolute) replaces each stack's own spec on the working-tree side only."""
    key = secrets.token_hex(32)
    head_out, base_out = work / "head.json", work / "base.json"
    # The working tree starts planning first: the base is extracted meanwhile.
    head = _start_plan(
        project_dir.resolve(), head_out, stacks, key, WORKING_TREE, spec=spec, progress=progress
    )
    try:
        base_dir = extract_base(base, work / "base")
        if base_dir is not None:
            running = _start_plan(base_dir, base_out, stacks, key, base.ref, progress=progress)
            try:
                old = _finish_plan(running)
            finally:
                _stop(running)
            old.errors = {s: _at_ref(m, work / "base", base.ref) for s, m in old.errors.items()}
            # Not needed any more: removed while the working tree may still be planning (the
            # workspace removes whatever is left in any case).
            shutil.rmtree(work / "base", ignore_errors=True)
        else:
            old = Side(base.ref, None, [], {})
        new = _finish_plan(head)
    finally:
        _stop(head)
    return old, new


# ---------------------------------------------------------------------------------------------
# two plans -> one preview document


def is_secret(value: Any) -> bool:
    return isinstance(value, Mapping) and value.get(SIG_KEY) == SECRET_SIG


def masked(value: Any) -> Any:
    """Digests and secret wrappers -> "[secret]" (what `pulumi preview --json` shows)."""
    if is_secret(value):
        return SECRET_MASK
    if isinstance(value, Mapping):
        return {k: masked(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _join(path: str, key: str) -> str:
    if _IDENT.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def _top(path: str) -> str:
    m = re.match(r'^([^.\[]+)|^\["((?:[^"\\]|\\.)*)"\]', path)
    if not m:
        return path
    return m.group(1) if m.group(1) is not None else json.loads(f'"{m.group(2)}"')


def diff_inputs(old: Any, new: Any, path: str = "") -> dict[str, str]:
    """Changed leaf paths -> add | delete | update (secrets are compared as wholes)."""
    out: dict[str, str] = {}
    if old == new:
        return out
    if (
        isinstance(old, Mapping)
        and isinstance(new, Mapping)
        and not is_secret(old)
        and not is_secret(new)
    ):
        for key in sorted(set(old) | set(new)):
            sub = _join(path, str(key))
            if key not in old:
                out[sub] = "add"
            elif key not in new:
                out[sub] = "delete"
            else:
                out.update(diff_inputs(old[key], new[key], sub))
    elif isinstance(old, list) and isinstance(new, list) and path:
        for i in range(max(len(old), len(new))):
            sub = f"{path}[{i}]"
            if i >= len(old):
                out[sub] = "add"
            elif i >= len(new):
                out[sub] = "delete"
            else:
                out.update(diff_inputs(old[i], new[i], sub))
    else:
        out[path] = "update"
    return out


_SEGMENT = re.compile(r'\["((?:[^"\\]|\\.)*)"\]|\[(\d+|\*)\]|\.?([^.\[]+)')


def _segments(path: str) -> list[str] | None:
    """A property path (`a.b`, `a[0]`, `a["b.c"]`, `triggers[*]`) as its segments; list
    indexes as digit strings, `*` as a wildcard; None when it does not parse."""
    out: list[str] = []
    pos = 0
    while pos < len(path):
        m = _SEGMENT.match(path, pos)
        if m is None or m.end() == pos:
            return None
        quoted, index, plain = m.groups()
        out.append(json.loads(f'"{quoted}"') if quoted is not None else (index or plain))
        pos = m.end()
    return out


def _match(rule: list[str], path: list[str]) -> bool:
    return all(r in ("*", p) for r, p in zip(rule, path, strict=False))


def _covers(rule: str, path: str) -> bool:
    """The rule names the changed path or one of its parents (wildcards `*` and `[*]`)."""
    if rule == "*":
        return True
    r, p = _segments(rule), _segments(path)
    if r is None or p is None:
        return path == rule or path.startswith((f"{rule}.", f"{rule}["))
    return len(r) <= len(p) and _match(r, p)


def _forces(rule: str, path: str) -> bool:
    """A change at `path` forces replacement under `rule`: the rule covers it, or the changed
    value holds what the rule names (a whole `triggers` list added under `triggers[*]`)."""
    if _covers(rule, path):
        return True
    r, p = _segments(rule), _segments(path)
    return r is not None and p is not None and len(p) < len(r) and _match(r, p)


def replace_rules(type_: str, inputs: Mapping[str, Any], options: Sequence[str]) -> list[str]:
    rules = list(REPLACE_ON_CHANGE.get(type_, ()))
    flag = USER_DATA_REPLACE_FLAG.get(type_)
    if flag and inputs.get(flag[0]) is True:
        rules += flag[1]
    return rules + list(options)


@dataclass
class _Res:
    """One resource of one side, with its URN and the bits a preview state needs."""

    urn: str
    data: dict[str, Any]
    parent_urn: str
    inputs: dict[str, Any] = field(default_factory=dict)


def _index(side_plan: Mapping[str, Any] | None, stack: str, project: str) -> dict[str, _Res]:
    if not side_plan:
        return {}
    resources = side_plan["resources"]
    by_name: dict[str, dict] = {}
    for r in resources:  # a component and a custom resource may share a name: prefer the parent
        if r["name"] not in by_name or not r.get("custom", True):
            by_name[r["name"]] = r
    root = root_urn(stack, project)

    def chain(r: dict, seen: frozenset = frozenset()) -> list[str]:
        parent = by_name.get(r.get("parent") or "")
        if parent is None or parent["name"] in seen or parent is r:
            return [r["type"]]
        return [*chain(parent, seen | {r["name"]}), r["type"]]

    out: dict[str, _Res] = {}
    for r in resources:
        types = chain(r)
        urn = f"urn:pulumi:{stack}::{project}::{'$'.join(types)}::{r['name']}"
        parent = by_name.get(r.get("parent") or "")
        parent_urn = (
            f"urn:pulumi:{stack}::{project}::{'$'.join(chain(parent))}::{parent['name']}"
            if parent is not None
            else root
        )
        out[urn] = _Res(urn, r, parent_urn, dict(r.get("inputs") or {}))
    return out


def root_urn(stack: str, project: str) -> str:
    return f"urn:pulumi:{stack}::{project}::{ROOT_TYPE}::{project}-{stack}"


def _provider_ref(res: _Res, stack: str, project: str, index: dict[str, _Res]) -> str:
    if not res.data.get("custom", True):
        return ""
    name = res.data.get("provider")
    if name:
        for other in index.values():
            if other.data["name"] == name and other.data["type"].startswith("pulumi:providers:"):
                return f"{other.urn}::{other.data.get('id') or UNKNOWN}"
    package = res.data["type"].split(":", 1)[0]
    return f"urn:pulumi:{stack}::{project}::pulumi:providers:{package}::default::{UNKNOWN}"


def _state(
    res: _Res, stack: str, project: str, index: dict[str, _Res], *, known_id: bool
) -> dict[str, Any]:
    d = res.data
    names = {r.data["name"]: r.urn for r in index.values()}
    state: dict[str, Any] = {
        "urn": res.urn,
        "custom": bool(d.get("custom", True)),
        "type": d["type"],
        "inputs": masked(res.inputs),
        "outputs": {"id": d["id"]} if known_id and d.get("custom", True) and d.get("id") else {},
        "parent": res.parent_urn,
        "protect": bool(d.get("protect")),
        "dependencies": sorted({names[n] for n in d.get("dependsOn", []) if n in names}),
    }
    if known_id and d.get("custom", True) and d.get("id"):
        state["id"] = d["id"]
    provider = _provider_ref(res, stack, project, index)
    if provider:
        state["provider"] = provider
    if d.get("deletedWith") in names:
        state["deletedWith"] = names[d["deletedWith"]]
    return state


def _substitute(value: Any, ids: set[str]) -> tuple[Any, bool]:
    """Replace references to the given ids by UNKNOWN; report whether any was found."""
    if is_secret(value):
        return value, False
    if isinstance(value, Mapping):
        changed, out = False, {}
        for k, v in value.items():
            out[k], c = _substitute(v, ids)
            changed = changed or c
        return out, changed
    if isinstance(value, list):
        changed, items = False, []
        for v in value:
            item, c = _substitute(v, ids)
            items.append(item)
            changed = changed or c
        return items, changed
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value) in ids:
        return UNKNOWN, True
    return value, False


@dataclass
class _Change:
    op: str
    detailed: dict[str, dict[str, Any]]
    diff_reasons: list[str]
    replace_reasons: list[str]


def _compare(old: _Res, new: _Res) -> _Change:
    ignore = list(new.data.get("ignoreChanges") or [])
    changes = {
        path: kind
        for path, kind in diff_inputs(old.inputs, new.inputs).items()
        if not any(_covers(rule, path) for rule in ignore)
    }
    if not changes:
        return _Change("same", {}, [], [])
    rules = replace_rules(new.data["type"], new.inputs, new.data.get("replaceOnChanges") or [])
    detailed, replace = {}, set()
    for path, kind in sorted(changes.items()):
        forces = any(_forces(rule, path) for rule in rules)
        if forces:
            replace.add(_top(path))
        detailed[path] = {"kind": f"{kind}-replace" if forces else kind, "inputDiff": True}
    return _Change(
        "replace" if replace else "update",
        detailed,
        sorted({_top(p) for p in changes}),
        sorted(replace),
    )


def _protected(urn: str, name: str, verb: str) -> dict[str, Any]:
    """The error `pulumi preview` reports for a protected resource it would have to remove."""
    return {
        "urn": urn,
        "message": f"{name} is protected: Pulumi refuses to {verb} it until its protect option "
        "is removed (blueprints:protectData: false for this stack)",
        "severity": "error",
    }


def build_document(
    stack: str,
    old_plan: Mapping[str, Any] | None,
    new_plan: Mapping[str, Any] | None,
    *,
    old_project: str | None,
    new_project: str | None,
    base_label: str,
) -> dict[str, Any]:
    """One stack's `pulumi preview --json`-shaped document from two offline plans."""
    old_project = old_project or new_project or "project"
    new_project = new_project or old_project
    old = _index(old_plan, stack, old_project)
    new = _index(new_plan, stack, new_project)

    # Replacements give new ids; whoever refers to them sees an unknown value. Repeat until
    # no further resource is replaced.
    changes: dict[str, _Change] = {}
    replaced: set[str] = set()
    while True:
        for urn, res in new.items():
            if urn in old:
                changes[urn] = _compare(old[urn], res)
        now = {
            str(old[u].data.get("id"))
            for u, c in changes.items()
            if c.op == "replace" and old[u].data.get("id")
        }
        if now == replaced:
            break
        replaced = now
        for res in new.values():
            res.inputs, _ = _substitute(res.inputs, replaced)

    steps: list[dict[str, Any]] = []
    summary: dict[str, int] = {}
    diagnostics: list[dict[str, Any]] = []

    def count(op: str) -> None:
        summary[op] = summary.get(op, 0) + 1

    root_old = root_urn(stack, old_project) if old_plan is not None else None
    root_new = root_urn(stack, new_project) if new_plan is not None else None
    for urn, plan in ((root_old, old_plan), (root_new, new_plan)):
        if urn is None or (urn == root_old and urn == root_new and plan is new_plan):
            continue  # the same root on both sides is one step, written for the old side
        state = {
            "urn": urn,
            "custom": False,
            "type": ROOT_TYPE,
            "inputs": {},
            "outputs": masked(plan.get("outputs") or {}),
            "protect": False,
        }
        if root_old == root_new:
            new_state = {**state, "outputs": masked(new_plan.get("outputs") or {})}
            step = {"op": "same", "urn": urn, "provider": "", "oldState": state}
            step["newState"] = new_state
        elif plan is old_plan:
            step = {"op": "delete", "urn": urn, "provider": "", "oldState": state}
        else:
            step = {"op": "create", "urn": urn, "provider": "", "newState": state}
        steps.append(step)
        count(step["op"])

    unknown_types: set[str] = set()
    for urn, res in new.items():
        type_ = res.data["type"]
        if (
            res.data.get("custom", True)
            and not type_.startswith("pulumi:providers:")
            and type_ not in REPLACE_ON_CHANGE
        ):
            unknown_types.add(type_)
        provider = _provider_ref(res, stack, new_project, new)
        if urn not in old:
            steps.append(
                {
                    "op": "create",
                    "urn": urn,
                    "provider": provider,
                    "newState": _state(res, stack, new_project, new, known_id=False),
                }
            )
            count("create")
            continue
        change = changes[urn]
        count(change.op)
        if change.op == "same":
            # As `pulumi preview --json --show-sames` does: the report needs unchanged
            # resources to price a change (a stopped instance) and to find the volume's server.
            steps.append(
                {
                    "op": "same",
                    "urn": urn,
                    "provider": provider,
                    "oldState": _state(old[urn], stack, old_project, old, known_id=True),
                    "newState": _state(res, stack, new_project, new, known_id=True),
                }
            )
            continue
        step = {
            "op": change.op,
            "urn": urn,
            "provider": provider,
            "oldState": _state(old[urn], stack, old_project, old, known_id=True),
            "newState": _state(res, stack, new_project, new, known_id=change.op != "replace"),
            "diffReasons": change.diff_reasons,
            "replaceReasons": change.replace_reasons,
            "detailedDiff": change.detailed,
        }
        steps.append(step)
        if change.op == "replace" and old[urn].data.get("protect"):
            diagnostics.append(_protected(urn, res.data["name"], "replace"))
        if change.op == "replace" and res.data.get("deleteBeforeReplace"):
            diagnostics.append(
                {
                    "urn": urn,
                    "message": f"{res.data['name']} is deleted before its replacement is "
                    "created (deleteBeforeReplace): expect downtime",
                    "severity": "warning",
                }
            )
    for urn, res in old.items():
        if urn in new:
            continue
        steps.append(
            {
                "op": "delete",
                "urn": urn,
                "provider": _provider_ref(res, stack, old_project, old),
                "oldState": _state(res, stack, old_project, old, known_id=True),
            }
        )
        count("delete")
        if res.data.get("protect"):
            diagnostics.append(_protected(urn, res.data["name"], "delete"))

    anchor = root_new or root_old
    diagnostics.insert(
        0,
        {
            "urn": anchor,
            "message": f"offline preview: {base_label} and the working tree planned under "
            "Pulumi's mock runtime; replacements follow blueprints' table of properties that "
            "force replacement, not the provider",
            "severity": "info",
        },
    )
    if unknown_types:
        diagnostics.append(
            {
                "urn": anchor,
                "message": "no replacement rules for "
                + ", ".join(sorted(unknown_types))
                + "; their changes are shown as updates",
                "severity": "warning",
            }
        )
    for note in (new_plan or {}).get("notes", []):
        diagnostics.append({"urn": anchor, "message": note, "severity": "info"})
    return {
        "config": {},
        "steps": steps,
        "diagnostics": diagnostics,
        "changeSummary": dict(sorted(summary.items())),
    }


# ---------------------------------------------------------------------------------------------
# the whole run


def choose_stacks(requested: Sequence[str], old: Side, new: Side) -> list[str]:
    known = sorted(set(old.stacks) | set(new.stacks))
    if not requested:
        return known
    for stack in requested:
        if stack not in known:
            raise DiffError(
                f"unknown stack {stack!r}: neither the working tree nor {old.label} has "
                f"stacks/Pulumi.{stack}.yaml; stacks: {', '.join(known) or 'none'}"
            )
    return list(dict.fromkeys(requested))


def failed_document(stack: str, reasons: Sequence[tuple[str, str]], project: str) -> dict:
    """The preview of a stack that could not be planned: no steps, one error per side that
    failed (`pulumi preview --json` of a failed preview has that shape), so the report shows
    the stack as failed with why, and --fail-on never reads it as a stack without changes."""
    urn = root_urn(stack, project)
    return {
        "config": {},
        "steps": [],
        "diagnostics": [
            {
                "urn": urn,
                "message": f"{stack} could not be planned {where(label)}, so it was not "
                f"diffed: {message}",
                "severity": "error",
            }
            for label, message in reasons
        ],
        "changeSummary": {},
    }


def against_nothing(document: dict, stack: str, label: str, message: str, project: str) -> dict:
    """The document of a stack planned in the working tree but not at the base (label): its
    working-tree plan against an empty base, every resource a create, with a warning saying
    why. What it replaces or deletes where it is deployed is unknown: the report says so and
    --fail-on fails on it (build_report's against_nothing)."""
    diagnostic = {
        "urn": root_urn(stack, project),
        "message": f"{stack} could not be planned {where(label)}, so it is shown against "
        f"nothing (every resource as created): {message}",
        "severity": "warning",
    }
    return {**document, "diagnostics": [diagnostic, *document["diagnostics"]]}


@dataclass
class OfflineDiff:
    """offline_diff's result: a preview document per stack (a failed one for each stack that
    could not be planned in the working tree), stack -> [(side's label, why)] for those
    stacks, and stack -> (base's label, why) for the stacks that could be planned in the
    working tree only (their documents are against an empty base)."""

    documents: list[tuple[str, dict[str, Any]]]
    failed: dict[str, list[tuple[str, str]]]
    against_nothing: dict[str, tuple[str, str]] = field(default_factory=dict)


def offline_diff(
    project_dir: Path,
    base_ref: str,
    stacks: Sequence[str] = (),
    *,
    spec: Path | None = None,
    progress: Progress | None = None,
) -> OfflineDiff:
    """Compare base_ref with the working tree of project_dir, stack by stack. A stack that
    cannot be planned in the working tree is a failed preview (not diffed); one that cannot be
    planned only at the base is diffed against nothing. `spec`: plan the working tree with this
    app spec instead of each stack's own."""
    base = resolve_base(project_dir, base_ref)
    spec = Path(spec).resolve() if spec is not None else None
    with workspace() as work:
        old, new = plan_sides(project_dir, base, list(stacks), work, spec=spec, progress=progress)
    chosen = choose_stacks(stacks, old, new)
    documents: list[tuple[str, dict[str, Any]]] = []
    failed: dict[str, list[tuple[str, str]]] = {}
    baseless: dict[str, tuple[str, str]] = {}
    for stack in chosen:
        if stack in new.errors:
            # The working tree is what is merged: not diffed, exit 2 (also fails at the base?).
            reasons = [(s.label, s.errors[stack]) for s in (old, new) if stack in s.errors]
            failed[stack] = reasons
            project = new.project or old.project or "project"
            documents.append((stack, failed_document(stack, reasons, project)))
            continue
        document = build_document(
            stack,
            old.plans.get(stack),
            new.plans.get(stack),
            old_project=old.project,
            new_project=new.project,
            base_label=base.ref,
        )
        if stack in old.errors:
            # Broken at the base only (this change may be its fix): shown against nothing.
            baseless[stack] = (old.label, old.errors[stack])
            project = new.project or old.project or "project"
            document = against_nothing(document, stack, old.label, old.errors[stack], project)
        documents.append((stack, document))
    return OfflineDiff(documents, failed, baseless)


def offline_documents(
    project_dir: Path, base_ref: str, stacks: Sequence[str] = (), *, spec: Path | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """[(stack, preview document)] comparing base_ref with the working tree of project_dir;
    DiffError when a stack cannot be planned on either side (offline_diff reports it instead)."""
    result = offline_diff(project_dir, base_ref, stacks, spec=spec)
    unplanned = [(s, r[0]) for s, r in result.failed.items()]
    unplanned += list(result.against_nothing.items())
    for stack, (label, message) in unplanned:
        raise DiffError(f"{label}: stack {stack}: {message.splitlines()[0]}")
    return result.documents
