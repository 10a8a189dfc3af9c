"""`blueprints compare`: the four rungs of the ladder side by side, from the stacks themselves.

For one target, each blueprint's stack is planned offline (the same mock run as `blueprints
plan`) and its servers' files are unpacked (as `blueprints render` writes them). Every figure
comes from those two: VMs and cloud resources from the plan, cost from the plan priced with
blueprints/prices.yaml, moving parts and lines of configuration counted in the rendered files,
and the failure model from the stack's own timeouts (blueprints/failure.py). The single-VM
blueprint is compared twice, with a warm and with a cold spare (blueprints:spareMode), each
planned and priced as that mode, whichever the stack file sets. Two costs are not
in the plan and are priced from what the stack says instead: volumes claimed by k8s workloads
(from the rendered manifests) and the backup bucket's contents (from the stack's backupBucket
and the spec's data size and retention, costs.stack_backup_storage).

Capacity counts only the machines that serve the app (blueprints/capacity.py): not single-vm's
spare, warm or cold, nor the k8s control planes. Backups are a line of their own, outside the
monthly total, so every row's total prices the same thing (what runs the app) whatever backups
its stack takes. A stack that cannot be planned (a rung refusing the spec, a bad stack file)
is reported as failed, with why, and the others are compared all the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from blueprints import capacity, costs
from blueprints.failure import SPARE_MODES, FailureModel, failure_model
from blueprints.plan import (
    PlanError,
    find_project,
    list_stacks,
    plan_stack,
    read_project,
    unexpected_error,
)
from blueprints.settings import StackSettings, read_stack_settings, using_price_tables
from blueprints.spec import SpecError, load_spec
from blueprints.yaml_text import FastLoader, fast_load

LADDER = ("single-vm", "compose", "nomad", "k8s")
TARGETS = ("hcloud", "localstack", "aws")
NAMESPACE = "blueprints:"

# Packages whose installation starts a daemon someone has to keep patched.
PACKAGE_DAEMONS = {"docker.io": "dockerd (with containerd)"}
# What k3s runs in-cluster unless its config disables it.
K3S_PACKAGED = ("coredns", "local-storage", "metrics-server", "servicelb", "traefik")
K8S_WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")


class CompareError(Exception):
    """One sentence for the user."""


@dataclass(frozen=True)
class Part:
    kind: str  # daemon, scheduled job, container, nomad task, workload, add-on, run separately
    name: str


@dataclass(frozen=True)
class Row:
    blueprint: str
    stack: str
    target: str
    vms: int
    # What serves the app: how many of the VMs, their vCPU and RAM (None: a type the price
    # table lacks). Not single-vm's spare, not the k8s control planes.
    serving: int
    vcpu: int | None
    memory_gib: Decimal | None
    cloud_resources: int
    cost: costs.CostSummary
    parts: tuple[Part, ...]
    config_files: int
    config_lines: int
    failure: FailureModel
    notes: tuple[str, ...]
    spare: str | None = None  # single-vm: the spare mode this row was planned with
    fit: capacity.Fit | None = None  # what the app needs of the serving machines

    @property
    def label(self) -> str:
        """The row's name in tables: the blueprint, and the spare mode where it has one."""
        return self.blueprint if self.spare is None else f"{self.blueprint} ({self.spare} spare)"

    @property
    def currency(self) -> str:
        return next(iter(self.cost.total), "")

    @property
    def backup_lines(self) -> tuple[costs.CostLine, ...]:
        """What the stack's backups cost: its bucket's contents, snapshots, server backups."""
        return tuple(line for line in self.cost.lines if line.category == "backups")

    @property
    def backups(self) -> Decimal:
        """Backups per month, outside `monthly`."""
        return sum((line.amount for line in self.backup_lines), Decimal(0))

    @property
    def monthly(self) -> Decimal:
        """Per month without backups: what runs the app, the same basis on every row."""
        return sum(self.cost.total.values(), Decimal(0)) - self.backups

    @property
    def with_backups(self) -> Decimal:
        return sum(self.cost.total.values(), Decimal(0))


@dataclass(frozen=True)
class Failed:
    """A row that could not be compared, and why (one line)."""

    label: str
    stack: str
    reason: str


@dataclass(frozen=True)
class Comparison:
    target: str
    app: str
    rows: tuple[Row, ...]
    tables: tuple[costs.PriceTable, ...]
    failed: tuple[Failed, ...] = ()


# ---------------------------------------------------------------------------------------------
# Stacks


def _stack_settings(
    root: Path, stacks_dir: Path, stack: str, *, priced: bool = True
) -> StackSettings:
    path = stacks_dir / f"Pulumi.{stack}.yaml"
    rel = path.relative_to(root) if path.is_relative_to(root) else path
    # A stack that cannot be compared is an error, not a silently missing row; its file is
    # checked as `pulumi up` checks it (SpecError, by file and line).
    return read_stack_settings(path, str(rel), priced=priced)[0]


def stack_settings(root: Path, stack: str) -> StackSettings:
    """The settings of one stack of the project at root (CompareError when there is no such
    stack, SpecError naming the setting when its settings do not validate)."""
    _, stacks_dir, _ = read_project(root)
    if not (stacks_dir / f"Pulumi.{stack}.yaml").is_file():
        raise CompareError(f"no stack {stack} in {stacks_dir.relative_to(root)}/")
    return _stack_settings(root, stacks_dir, stack)


def _raw_target(path: Path) -> str | None:
    """The blueprints:target a stack file names, read loosely (None when it names none)."""
    try:
        config = (yaml.safe_load(path.read_text()) or {}).get("config") or {}
        value = config.get(f"{NAMESPACE}target")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _one_line(exc: Exception) -> str:
    """An error's lines as one line (several problems joined by '; ')."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def choose_stacks(
    root: Path, target: str, failed: list[Failed] | None = None, *, priced: bool = True
) -> tuple[dict[str, tuple[str, StackSettings]], dict[str, list[str]]]:
    """blueprint -> (stack, its settings) for this target (first by name when several);
    blueprint -> notes. A stack file whose settings do not validate is an error (SpecError),
    or, given `failed`, added there when it is (or may be) a stack of this target. Not
    `priced`: server types and places are not checked against a price table."""
    _, stacks_dir, _ = read_project(root)
    found: dict[str, list[str]] = {}
    settings_of: dict[str, StackSettings] = {}
    for stack in list_stacks(root):
        try:
            settings = _stack_settings(root, stacks_dir, stack, priced=priced)
            settings_of[stack] = settings
        except SpecError as exc:
            if failed is None:
                raise
            named = _raw_target(stacks_dir / f"Pulumi.{stack}.yaml")
            if named in (None, target) or (target == "aws" and named == "localstack"):
                failed.append(Failed(stack, stack, _one_line(exc)))
            continue
        found.setdefault(f"{settings.blueprint}/{settings.target}", []).append(stack)
    chosen: dict[str, tuple[str, StackSettings]] = {}
    notes: dict[str, list[str]] = {b: [] for b in LADDER}
    for blueprint in LADDER:
        candidates = found.get(f"{blueprint}/{target}", [])
        if not candidates and target == "aws":
            # LocalStack stacks run the same AWS program; priced as AWS either way.
            candidates = found.get(f"{blueprint}/localstack", [])
            if candidates:
                notes[blueprint].append(f"no aws stack; compared {candidates[0]} (same program)")
        if candidates:
            chosen[blueprint] = (candidates[0], settings_of[candidates[0]])
            if len(candidates) > 1:
                others = ", ".join(candidates[1:])
                notes[blueprint].append(f"compared {candidates[0]}; also here: {others}")
    if not chosen and not failed:
        raise CompareError(
            f"no stack with target {target} in {stacks_dir.relative_to(root)}/; "
            f"a stack file sets blueprints:target to one of {', '.join(TARGETS)}"
        )
    return chosen, notes


def hcloud_location(root: Path, target: str) -> str:
    """The location of the stacks compared for target (the first, if they differ)."""
    # Not against a price table: this picks the one --live-prices reads (any location).
    chosen, _ = choose_stacks(root, target, [], priced=False)
    locations = sorted({settings.location for _, settings in chosen.values()})
    return locations[0] if locations else StackSettings.model_fields["location"].default


# ---------------------------------------------------------------------------------------------
# Rendered files


def _unit_type(text: str) -> str:
    match = re.search(r"^Type=(\S+)", text, re.M)
    return match.group(1) if match else "simple"


# What the k8s rung sends through the Kubernetes API, as `blueprints render` writes it.
KUBE_RELEASE = "release/k8s/"


def _is_manifest(key: str) -> bool:
    """Kubernetes objects: sent through the API (release/k8s/), or k3s auto-deploy manifests
    in a server's files (a project's own)."""
    if not key.endswith((".yaml", ".yml")):
        return False
    name = key.rsplit("/", 1)[-1]
    return (key.startswith(KUBE_RELEASE) and not name.startswith("helm-")) or "/manifests/" in key


class _Manifests:
    """Each rendered manifest's documents, parsed once however many counts read them."""

    def __init__(self) -> None:
        self._docs: dict[str, list[Any]] = {}

    def docs(self, key: str, text: str) -> list[Any]:
        if key not in self._docs:
            self._docs[key] = list(yaml.load_all(text, Loader=FastLoader))
        return self._docs[key]


def moving_parts(files: Mapping[str, str], manifests: _Manifests | None = None) -> tuple[Part, ...]:
    """Distinct things that run and need upgrading, counted in the servers' rendered files.

    `files` maps "<server>/<path on the VM>" to text, as `blueprints render` writes them.
    """
    manifests = manifests or _Manifests()
    parts: set[Part] = set()
    for key, text in files.items():
        _, _, path = key.partition("/")
        name = path.rsplit("/", 1)[-1]
        if path == "user-data.yaml":
            doc = fast_load(text) or {}
            for package in doc.get("packages") or []:
                if str(package) in PACKAGE_DAEMONS:
                    parts.add(Part("daemon", PACKAGE_DAEMONS[str(package)]))
        elif path.startswith("etc/systemd/system/") and name.endswith(".service"):
            # Oneshot units are setup steps or the work of a timer, not something running.
            if _unit_type(text) != "oneshot":
                parts.add(Part("daemon", name[: -len(".service")]))
        elif path.startswith("etc/systemd/system/") and name.endswith(".timer"):
            parts.add(Part("scheduled job", name[: -len(".timer")]))
        elif name in ("compose.yaml", "docker-compose.yaml"):
            services = (fast_load(text) or {}).get("services") or {}
            parts.update(Part("container", str(s)) for s in services)
        elif name.endswith(".nomad.hcl"):
            job = re.search(r'^job\s+"([^"]+)"', text, re.M)
            tasks = list(re.finditer(r'^\s*task\s+"([^"]+)"', text, re.M))
            for i, task in enumerate(tasks):
                body = text[task.end() : tasks[i + 1].start() if i + 1 < len(tasks) else None]
                # A lifecycle helper (waiting for dependencies) is the same small task in
                # every job that has it: one part, not one per job.
                helper = re.search(r"^\s*lifecycle\s*\{", body, re.M) is not None
                owner = "" if helper else f"{job.group(1) if job else '?'}/"
                parts.add(Part("nomad task", owner + task.group(1)))
        elif key.startswith(KUBE_RELEASE) and name.startswith("helm-"):
            # A Helm release Pulumi installs (release/k8s/helm-<name>.yaml).
            parts.add(Part("add-on", str((fast_load(text) or {}).get("name", name))))
        elif _is_manifest(key):
            for doc in manifests.docs(key, text):
                if not isinstance(doc, dict):
                    continue
                kind, meta = doc.get("kind"), doc.get("metadata") or {}
                if kind in K8S_WORKLOADS:
                    parts.add(
                        Part("workload", f"{meta.get('namespace', 'default')}/{meta['name']}")
                    )
                elif kind == "HelmChart":
                    parts.add(Part("add-on", str(meta.get("name"))))
        elif path == "etc/rancher/k3s/config.yaml":
            server = key.partition("/")[0]
            if f"{server}/etc/systemd/system/k3s.service" not in files:
                continue  # an agent: no packaged components of its own
            disabled = set((fast_load(text) or {}).get("disable") or [])
            for component in K3S_PACKAGED:
                if component not in disabled:
                    parts.add(Part("add-on", f"{component} (packaged with k3s)"))
    return tuple(sorted(parts, key=lambda p: (p.kind, p.name)))


def config_size(files: Mapping[str, str]) -> tuple[int, int]:
    """(files, lines) of generated configuration, each distinct file once (not per server).

    Keys and certificates are generated material, not configuration; user-data.yaml and a
    release's documents (release.yaml, secrets.yaml) only wrap the other files, so neither is
    counted; nor are the Python programs blueprints ships unchanged to every stack (the release
    agent, nomad-node-ready): they are code, like Nomad or Docker themselves.
    """
    seen: dict[str, int] = {}
    for key, text in files.items():
        _, _, path = key.partition("/")
        wrapper = path in ("user-data.yaml", "release.yaml", "secrets.yaml")
        program = text.startswith(("#!/usr/bin/env python3\n", "#!/usr/bin/python3\n"))
        if wrapper or program or text.lstrip().startswith("-----BEGIN"):
            continue
        digest = hashlib.sha256(f"{path}\0{text}".encode()).hexdigest()
        seen[digest] = len(text.splitlines())
    return len(seen), sum(seen.values())


def claimed_volumes(
    files: Mapping[str, str], manifests: _Manifests | None = None
) -> dict[str, int]:
    """PersistentVolumeClaims in rendered manifests: claim name -> GiB requested.

    The CSI driver creates these volumes at runtime, so they are not in the plan; they cost
    like any other volume.
    """
    manifests = manifests or _Manifests()
    claims: dict[str, int] = {}
    for key, text in files.items():
        if not _is_manifest(key):
            continue
        for doc in manifests.docs(key, text):
            if not isinstance(doc, dict):
                continue
            spec = doc.get("spec") or {}
            if doc.get("kind") == "PersistentVolumeClaim":
                # a claim of its own (a volume several services mount): one volume
                claims[doc["metadata"]["name"]] = _gib(spec)
            if doc.get("kind") != "StatefulSet":
                continue
            for claim in spec.get("volumeClaimTemplates") or []:
                gib = _gib(claim["spec"])
                for i in range(int(spec.get("replicas", 1))):
                    claims[f"{claim['metadata']['name']}-{doc['metadata']['name']}-{i}"] = gib
    return dict(sorted(claims.items()))


def _gib(claim_spec: Mapping[str, Any]) -> int:
    size = str(claim_spec["resources"]["requests"]["storage"])
    return int(size.removesuffix("Gi")) if size.endswith("Gi") else 0


# ---------------------------------------------------------------------------------------------
# One row


def _row(
    root: Path,
    blueprint: str,
    stack: str,
    settings: StackSettings,
    spec: Path | None,
    tables: Mapping[str, costs.PriceTable],
    notes: list[str],
    spare: str | None = None,
) -> Row:
    from blueprints.render.unpack import SERVER_TYPES, stack_files

    overrides: dict[str, Any] = {}
    if spec is not None:
        overrides["blueprints:spec"] = str(spec)
    notes = list(notes)
    if spare is not None:
        # Planned (and so priced) as this spare mode, whatever the stack file sets.
        notes.append(_spare_note(settings, spare))
        overrides["blueprints:spareMode"] = spare
        settings = settings.model_copy(update={"spare_mode": spare})
    plan = plan_stack(stack, root, overrides)
    app = load_spec(spec if spec is not None else root / settings.spec)
    files = stack_files(plan)
    servers = [r for r in plan.resources if r.type in SERVER_TYPES]
    cloud = settings.cloud
    table = tables[cloud]
    # Capacity: the serving machines only (every server of a stack has the stack's type).
    serving = min(capacity.serving(blueprint), len(servers))
    kinds = {str(s.inputs.get("serverType") or s.inputs.get("instanceType")) for s in servers}
    sizes = [table.server_types.get(kind) for kind in sorted(kinds)]
    vcpu: int | None = None
    memory: Decimal | None = None
    if len(sizes) == 1 and sizes[0] is not None:
        vcpu, memory = serving * sizes[0].vcpu, serving * sizes[0].memory_gib
    fit = capacity.check(app, settings, tables)
    notes += [f"{line} (the stack sets blueprints:overcommit)" for line in fit.lines()]
    notes += [fit.unknown] if fit.unknown else []
    priced: list[tuple[Any, ...]] = [
        (r.type, r.name, r.plain_inputs(), r.id) for r in plan.resources if r.custom
    ]
    manifests = _Manifests()
    claims = claimed_volumes(files, manifests)
    if claims:
        volume_type = "hcloud:index/volume:Volume" if cloud == "hcloud" else "aws:ebs/volume:Volume"
        for claim, gib in claims.items():
            # Hetzner's CSI driver rounds claims up to its 10 GB minimum.
            size = max(gib, 10) if cloud == "hcloud" else gib
            inputs = {"size": size, "location": settings.location, "type": "gp3"}
            priced.append((volume_type, f"pvc {claim}", inputs))
        notes.append(f"volumes from {len(claims)} PersistentVolumeClaim(s) priced as volumes")
    # The backup bucket's contents: no resource says what they are, the settings and spec do.
    storage = costs.stack_backup_storage(settings, app)
    if storage is not None:
        priced.append(storage)
    cost = costs.price_resources(priced, tables)
    notes += [
        f"backups: {line.resource}: {line.detail}" for line in costs.backup_storage_lines(cost)
    ]
    if cloud == "aws" and table.places and settings.region not in table.places:
        notes.append(
            f"runs in {settings.region}, priced with {', '.join(table.places)} prices (the table's)"
        )
    file_count, lines = config_size(files)
    failure = failure_model(settings, app)
    parts = moving_parts(files, manifests)
    parts += tuple(Part("run separately", name) for name in failure.outside)
    return Row(
        blueprint=blueprint,
        stack=stack,
        target=settings.target,
        vms=len(servers),
        serving=serving,
        vcpu=vcpu,
        memory_gib=memory,
        cloud_resources=sum(1 for r in plan.resources if costs.cloud_of(r.type) and r.custom),
        cost=cost,
        parts=parts,
        config_files=file_count,
        config_lines=lines,
        failure=failure,
        notes=tuple(notes),
        spare=spare,
        fit=fit,
    )


def _spare_note(settings: StackSettings, spare: str) -> str:
    if settings.spare_mode is None:
        runs = f"the stack runs a {settings.spare} spare (blueprints:spareMode unset: "
        runs += f"the {settings.cloud} default)"
    else:
        runs = f"the stack runs a {settings.spare} spare (blueprints:spareMode: {settings.spare})"
    if spare == settings.spare:
        return runs
    return f"planned with blueprints:spareMode: {spare}; {runs}"


def _label(blueprint: str, spare: str | None) -> str:
    """A row's name: the blueprint, and the spare mode it is compared in."""
    return blueprint if spare is None else f"{blueprint} ({spare} spare)"


def _modes(blueprint: str) -> tuple[str | None, ...]:
    """The spare modes a blueprint is compared in (None: it has no spare)."""
    return SPARE_MODES if blueprint == "single-vm" else (None,)


def _app_name(root: Path, chosen: Mapping[str, tuple[str, StackSettings]]) -> str:
    """The app's name, from the first compared stack whose spec loads."""
    for _, settings in chosen.values():
        try:
            return load_spec(root / settings.spec).name
        except SpecError:
            continue
    return "the app"


def compare(
    target: str = "hcloud",
    *,
    project_dir: Path | None = None,
    spec: Path | None = None,
    tables: Mapping[str, costs.PriceTable] | None = None,
    step: Callable[[str], Any] | None = None,
    jobs: int = 1,
) -> Comparison:
    """Plan and compare the target's stacks. Each row is planned on its own: one that cannot be
    (a rung refusing the spec, a bad stack file) is in `failed` with why, the others are rows.
    `step(text)` is called before each plan (progress), or with `jobs` > 1 (that many worker
    processes, see blueprints.parallel) as each row comes back, in the order of the rows."""
    if target not in TARGETS:
        raise CompareError(f"unknown target {target!r}; allowed: {', '.join(TARGETS)}")
    root = (project_dir or find_project()).resolve()
    if spec is not None:
        spec = spec.resolve()
        app_name = load_spec(spec).name  # a bad spec fails here, with the spec's own message
    tables = dict(tables or costs.shipped_tables())
    failed: list[Failed] = []
    rows: list[Row] = []
    # Server types and places are checked against these tables (live ones with --live-prices),
    # here and in the program each row plans.
    with using_price_tables(tables):
        chosen, notes = choose_stacks(root, target, failed)
        pieces = [(b, stack, spare) for b, (stack, _) in chosen.items() for spare in _modes(b)]

        def text(piece: tuple[str, str, str | None]) -> str:
            _, stack, spare = piece
            return stack + ("" if spare is None else f" with a {spare} spare")

        def one(piece: tuple[str, str, str | None]) -> Row | Failed:
            b, stack, spare = piece
            label = _label(b, spare)
            settings = chosen[b][1]
            try:
                return _row(root, b, stack, settings, spec, tables, notes[b], spare)
            except (PlanError, SpecError, CompareError) as exc:
                return Failed(label, stack, _one_line(exc))
            except Exception as exc:  # a bug: this row's failure, named, as plan does it
                return Failed(label, stack, unexpected_error(exc))

        if jobs <= 1 or len(pieces) <= 1:
            outcomes = []
            for piece in pieces:
                if step is not None:
                    step(text(piece))
                outcomes.append(one(piece))
        else:
            paths = [spec] if spec is not None else [root / s.spec for _, s in chosen.values()]
            outcomes = _in_workers(pieces, one, text, paths, step, jobs)
        for outcome in outcomes:
            (rows if isinstance(outcome, Row) else failed).append(outcome)
    if spec is None:
        app_name = _app_name(root, chosen)
    used = {t.cloud: t for row in rows for t in row.cost.tables}
    return Comparison(
        target=target,
        app=app_name,
        rows=tuple(rows),
        tables=tuple(used[c] for c in sorted(used)),
        failed=tuple(failed),
    )


def _in_workers(
    pieces: list[tuple[str, str, str | None]],
    one: Callable[..., Row | Failed],
    text: Callable[[tuple[str, str, str | None]], str],
    paths: list[Path],
    step: Callable[[str], Any] | None,
    jobs: int,
) -> list[Row | Failed]:
    """The rows planned in `jobs` forked worker processes (blueprints.parallel), in order: the
    k8s row (the largest plan) in a worker of its own, the others beside it. The specs at
    `paths` are loaded before (load_spec keeps them), once for all workers."""
    # What every worker needs, loaded once here rather than once in each of them (as plan_each
    # does: Pulumi's mock runtime and the offline mocks).
    import blueprints.render.unpack  # noqa: F401
    from blueprints import parallel
    from blueprints.plan import _mocks_module

    _mocks_module()

    for path in paths:
        with contextlib.suppress(SpecError):  # the row says why, as it would in this process
            load_spec(path)
    keys = ["k8s" if b == "k8s" else "" for b, _, _ in pieces]
    outcomes: list[Row | Failed] = []
    for piece, outcome, why in parallel.run(pieces, one, keys=keys, jobs=jobs):
        if step is not None:
            step(text(piece))
        if outcome is None:
            b, stack, spare = piece
            outcome = Failed(_label(b, spare), stack, f"not compared: {why}")
        outcomes.append(outcome)
    return outcomes


__all__ = [
    "CompareError",
    "Comparison",
    "Failed",
    "PlanError",
    "Row",
    "compare",
    "moving_parts",
    "stack_settings",
]
