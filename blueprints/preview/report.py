"""Markdown report of `pulumi preview --json` documents, for one merge-request note.

Layout, most important first: a per-stack summary table (with the monthly cost delta when the
price table covers the resources), a warning block naming every stateful resource that would be
replaced or deleted (the table: stateful.yaml, beside this file), a review list of replaced or
deleted resources of types the table does not know, then per stack its diagnostics and one
collapsible block per changed resource with property-level changes.

Safety rules:
- Secret values never appear: Pulumi's secret wrapper and its "[secret]" placeholder are masked,
  and so is any property whose old or new value (input or output) is secret at any depth.
- Every user-controlled string (stack, resource and property names, values, messages) is shown
  as code: a backtick span sized past the longest backtick run in markdown context, HTML-escaped
  inside `<code>` in HTML context (summaries). So `</details>`, pipes, `@mentions` or `#refs` in
  a value can neither break the layout nor ping anybody.
- The report stays under `limit` characters: property values are dropped first, then whole
  resources (a visible line says how many), never the summary table or the warnings.
- Same documents, same bytes: Pulumi's step order is kept; everything else is sorted.

Releases (the release channel, blueprints/release/CONTRACT.md): a `command:remote:Command` whose
stdin is a release document is shown as what the app changes, not as a changed string: one line
per changed service (image, replicas, container definition), secrets/volumes/units, then a
unified diff per changed file; the same lines head the stack's section, outside the collapsed
block. A stdin that is not a readable release document (garbage, not known until apply, secret)
keeps the generic rendering, with one line saying why; a SECRETS document is never shown, even
when a preview holds it unmasked.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import html
import itertools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import replace as _replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from blueprints.preview.document import (
    ROOT_STACK_TYPE,
    SECRET_MASK,
    Diagnostic,
    Preview,
    PreviewError,
    PropertyDiff,
    State,
    Step,
    Urn,
    is_secret,
    mask_secrets,
    parse_preview,
)
from blueprints.release.bundle import BundleError, parse_release
from blueprints.rungs.k8s.marks import HOLDS_LABEL, SECRETS_DIGEST

MARKER = "<!-- blueprints:preview-report -->"
GITLAB_NOTE_LIMIT = 1_000_000  # characters GitLab accepts in one note
DEFAULT_TITLE = "Pulumi preview"
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # Pulumi's "known after apply" sentinel

COLUMNS = ("create", "update", "replace", "delete", "same", "other")

# The summary column of each op. A replacement is several steps of one resource (replace,
# create-replacement, delete-replaced, in either order); it is grouped and counted once.
CATEGORY = {
    "same": "same",
    "create": "create",
    "update": "update",
    "delete": "delete",
    "replace": "replace",
    "create-replacement": "replace",
    "delete-replaced": "replace",
    "import-replacement": "replace",  # the old resource is deleted, an imported one takes over
    "import": "other",
    "read": "other",
    "read-replacement": "other",
    "discard-replaced": "other",
    "refresh": "other",
    "discard": "other",
    "remove-pending-replace": "other",
}
REPLACE_FAMILY = frozenset(
    {"replace", "create-replacement", "delete-replaced", "import-replacement"}
)
READ_REPLACE_FAMILY = frozenset({"read-replacement", "discard-replaced"})
# Steps that are parts of a logical one; Pulumi's changeSummary does not count them either.
PHYSICAL_ONLY = frozenset({"create-replacement", "delete-replaced", "discard-replaced"})

OP_NOTES = {
    "read": "reads an existing resource Pulumi does not manage; nothing changes",
    "read-replacement": "re-reads an external resource whose id changed; nothing is deleted",
    "refresh": "refreshes the recorded state from the cloud; nothing changes",
    "discard": "forgets a read (external) resource; the cloud resource stays",
    "import": "adopts an existing cloud resource into the stack; nothing is created",
    "import-replacement": "replaces the resource by an imported one; the old one is deleted",
    "remove-pending-replace": "drops a resource left pending replacement from the state",
    "delete": "removed from the program; deleted",
}

# Stateful resources: losing one loses data, an address clients use or an identity others trust.
# The table is blueprints/preview/stateful.yaml (documented there, per provider); users add types
# with `blueprints-stateful.yaml` in the current directory or `--stateful FILE` (read_stateful),
# or build_report(stateful=...).
STATEFUL_FILE = Path(__file__).with_name("stateful.yaml")
USER_STATEFUL_FILE = "blueprints-stateful.yaml"
DATA_LOSS = "data loss"  # Danger.level: the warning block, Report.data_loss, --fail-on data-loss
REVIEW = "review"  # Danger.level: listed for review; never data loss by itself
_TOKEN = re.compile(r"^[A-Za-z0-9_.-]+:[^:\s]+:[^:\s]+$")
_AZURE_VERSION = re.compile(r"^(azure-native:[^:/]+)/v[0-9]+[a-z]*:")


@dataclass(frozen=True)
class StatefulTable:
    """Type token -> what it holds (stateful: data loss on replace or delete; identity: data
    loss on replace, review on delete), and the types known to hold nothing (stateless)."""

    stateful: Mapping[str, str]
    identity: Mapping[str, str]
    stateless: frozenset[str]  # exact tokens, or a prefix ending in "*"

    def merged(self, other: StatefulTable) -> StatefulTable:
        listed = set(other.stateful) | set(other.identity)
        return StatefulTable(
            stateful={
                **{k: v for k, v in self.stateful.items() if k not in other.identity},
                **other.stateful,
            },
            identity={
                **{k: v for k, v in self.identity.items() if k not in other.stateful},
                **other.identity,
            },
            stateless=frozenset(t for t in self.stateless if t not in listed) | other.stateless,
        )

    def is_stateless(self, type_: str) -> bool:
        if type_ in self.stateful or type_ in self.identity:
            return False
        return type_ in self.stateless or any(
            p.endswith("*") and type_.startswith(p[:-1]) for p in self.stateless
        )


def _type_key(type_: str) -> str:
    """The table's key of a type: an azure-native token pinned to an API version matches the
    unversioned one (azure-native:storage/v20230101:StorageAccount -> azure-native:storage:...)."""
    return _AZURE_VERSION.sub(r"\1:", type_)


def parse_stateful(data: Any, source: str) -> StatefulTable:
    """A stateful table (the shape of stateful.yaml) -> StatefulTable; PreviewError on a bad one."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise PreviewError(f"{source}: expected a mapping with stateful, identity, stateless")
    extra = sorted(str(k) for k in data if k not in ("stateful", "identity", "stateless"))
    if extra:
        raise PreviewError(
            f"{source}: unknown section {extra[0]!r}; the sections are stateful, identity "
            "(type: what it holds) and stateless (a list of types)"
        )
    sections: dict[str, dict[str, str]] = {}
    for name in ("stateful", "identity"):
        section = data.get(name) or {}
        if not isinstance(section, Mapping):
            raise PreviewError(f"{source}: {name}: expected a mapping of type token: what it holds")
        entries = {}
        for key, what in section.items():
            if not isinstance(key, str) or not _TOKEN.match(key):
                raise PreviewError(
                    f"{source}: {name}: {key!r} is not a Pulumi type token "
                    "(package:module:Type, e.g. aws:rds/instance:Instance)"
                )
            if not isinstance(what, str) or not what.strip():
                raise PreviewError(f"{source}: {name}.{key}: say what it holds (a short phrase)")
            entries[_type_key(key)] = " ".join(what.split())
        sections[name] = entries
    stateless = data.get("stateless") or []
    if not isinstance(stateless, list) or not all(
        isinstance(t, str) and _TOKEN.match(t) for t in stateless
    ):
        raise PreviewError(f"{source}: stateless: expected a list of Pulumi type tokens")
    return StatefulTable(
        stateful=sections["stateful"],
        identity=sections["identity"],
        stateless=frozenset(_type_key(t) for t in stateless),
    )


def read_stateful(path: str | Path | None) -> StatefulTable | None:
    """The user's table: `path` (which must exist), else blueprints-stateful.yaml in the current
    directory when there is one, else None. PreviewError on a missing or bad file."""
    import yaml

    where = Path(path) if path is not None else Path(USER_STATEFUL_FILE)
    if path is None and not where.is_file():
        return None
    try:
        text = where.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PreviewError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PreviewError(f"{where}: cannot be read ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise PreviewError(f"{where}: is not valid YAML{at}") from None
    return parse_stateful(data, str(where))


def _load_default() -> StatefulTable:
    import yaml

    return parse_stateful(
        yaml.safe_load(STATEFUL_FILE.read_text(encoding="utf-8")), "stateful.yaml"
    )


DEFAULT_TABLE = _load_default()
STATEFUL = DEFAULT_TABLE.stateful
IDENTITY = DEFAULT_TABLE.identity
# A server labelled (hcloud labels, AWS tags) `holds: <what>` keeps state of its own that a
# replacement loses or must rebuild: the k8s rung's control planes (an etcd member) and, on AWS,
# its workers (k3s local-path volumes).
HOLDS_TEXT = {
    "etcd": "an etcd member (cluster state; replaced nodes rejoin one at a time)",
    "local-volumes": "local volumes (k3s local-path data on its own disk)",
}
# Not stateful: a Command holds no data; a changed stdin updates it in place (see offline.py).
RELEASE_TYPES = frozenset({"command:remote:Command"})
SERVERS = frozenset({"hcloud:index/server:Server", "aws:ec2/instance:Instance"})
# Where a server is named as the holder of a volume: attachment (server key), or the volume.
HOLDER_KEYS = {
    "hcloud:index/volumeAttachment:VolumeAttachment": "serverId",
    "aws:ec2/volumeAttachment:VolumeAttachment": "instanceId",
    "hcloud:index/volume:Volume": "serverId",
}

VALUE_LIMIT = 400  # characters of one shown value
DIFF_LINES = 120  # lines of one multi-line text diff
DIAGNOSTIC_LIMIT = 4000  # characters of one diagnostic message
DIAGNOSTICS_PER_STACK = 50
RELEASE_HEAD_LINES = 20  # summary lines of one release in the stack's (never trimmed) head
RELEASE_TEXT_LIMIT = 8_000_000  # characters of a stdin read as a release document


# ---------------------------------------------------------------------------------------------
# Model


@dataclass(frozen=True)
class Change:
    """What happens to one resource: one step, or the grouped steps of one replacement."""

    stack: str
    urn: str
    type: str
    name: str
    kind: str  # the op shown: "replace" for a whole replacement family, else the step's op
    category: str  # the summary column
    ops: tuple[str, ...]
    index: int  # position of its first step in the document
    old: State | None
    new: State | None
    diffs: tuple[PropertyDiff, ...] | None
    diff_reasons: tuple[str, ...]
    replace_reasons: tuple[str, ...]

    @property
    def protect(self) -> bool:
        return bool((self.old and self.old.protect) or (self.new and self.new.protect))


@dataclass(frozen=True)
class Danger:
    """A stateful resource that would be replaced or deleted (level DATA_LOSS), or one whose
    type nobody said holds no data (level REVIEW)."""

    stack: str
    name: str
    type: str
    kind: str  # replace, delete, import-replacement
    what: str  # volume, EBS volume, floating IP, primary IP, elastic IP, server
    holder: str | None  # for a server: the attachment (or volume) naming it
    reasons: tuple[str, ...]
    protect: bool
    retain_on_delete: bool
    index: int
    # For a server: what it holds itself (HOLDS_LABEL), as a phrase.
    state: str | None = None
    level: str = DATA_LOSS


@dataclass(frozen=True)
class CostDelta:
    delta: Mapping[str, Decimal]  # currency -> monthly amount (after - before)
    unpriced: tuple[str, ...]  # "name: why"
    # A backup bucket's contents are in it (estimated, see backup_storage_items).
    backup_storage: bool = False


@dataclass(frozen=True)
class StackSummary:
    stack: str
    counts: Mapping[str, int]  # COLUMNS -> count
    other_ops: Mapping[str, int]  # op -> count of the "other" column
    errors: int
    warnings: int
    dangers: tuple[Danger, ...]
    cost: CostDelta | None
    changes: tuple[Change, ...]
    diagnostics: tuple[Diagnostic, ...]
    maybe_corrupt: bool
    reviews: tuple[Danger, ...] = ()  # level REVIEW: listed, not data loss
    # `blueprints diff`: the base (this label) could not be planned; shown against nothing.
    against_nothing: str | None = None

    @property
    def unknown(self) -> bool:
        """What this stack replaces or deletes is not known: its preview failed, or it is
        shown against nothing. Its cost delta is unknown too."""
        return bool(self.errors or self.against_nothing)


@dataclass(frozen=True)
class Report:
    markdown: str
    data_loss: bool
    stacks: tuple[StackSummary, ...]
    trimmed_resources: int = 0  # resources whose details were left out to fit the limit
    trimmed_values: int = 0  # resources shown without property values to fit the limit

    @property
    def dangers(self) -> tuple[Danger, ...]:
        return tuple(d for s in self.stacks for d in s.dangers)

    @property
    def reviews(self) -> tuple[Danger, ...]:
        """Replaced or deleted resources of types the table does not know: to review."""
        return tuple(d for s in self.stacks for d in s.reviews)

    @property
    def failed(self) -> tuple[str, ...]:
        """Stacks whose preview reported errors: their changes may be incomplete."""
        return tuple(s.stack for s in self.stacks if s.errors)

    @property
    def against_nothing(self) -> tuple[str, ...]:
        """Stacks shown against nothing (`blueprints diff`, the base could not be planned)."""
        return tuple(s.stack for s in self.stacks if s.against_nothing and not s.errors)


# ---------------------------------------------------------------------------------------------
# Grouping and classification


def group_changes(stack: str, preview: Preview) -> tuple[Change, ...]:
    """One Change per resource operation, in Pulumi's step order."""
    groups: dict[tuple[str, str | int], list[Step]] = {}
    for step in preview.steps:
        if step.op in REPLACE_FAMILY:
            key: tuple[str, str | int] = (step.urn, "replace")
        elif step.op in READ_REPLACE_FAMILY:
            key = (step.urn, "read-replace")
        else:
            key = (step.urn, step.index)
        groups.setdefault(key, []).append(step)
    changes = [_change(stack, steps) for steps in groups.values()]
    return tuple(sorted(changes, key=lambda c: c.index))


def _change(stack: str, steps: list[Step]) -> Change:
    ops = tuple(s.op for s in steps)
    first = steps[0]
    if REPLACE_FAMILY & set(ops):
        kind = "import-replacement" if "import-replacement" in ops else "replace"
        category = "replace"
    elif READ_REPLACE_FAMILY & set(ops):
        kind, category = "read-replacement", "other"
    else:
        kind, category = first.op, CATEGORY.get(first.op, "other")

    def pick(attr: str, prefer: Iterable[str]):
        order = {op: i for i, op in enumerate(prefer)}
        for s in sorted(steps, key=lambda s: (order.get(s.op, len(order)), s.index)):
            value = getattr(s, attr)
            if value:
                return value
        return None

    old = pick("old", ("replace", "delete-replaced", "import-replacement", "discard-replaced"))
    new = pick("new", ("replace", "create-replacement", "import-replacement", "read-replacement"))
    diffs = pick("detailed_diff", ("replace", "create-replacement", "update"))
    reasons: list[str] = []
    diff_reasons: list[str] = []
    for s in steps:
        reasons += [r for r in s.replace_reasons if r not in reasons]
        diff_reasons += [r for r in s.diff_reasons if r not in diff_reasons]
    return Change(
        stack=stack,
        urn=first.urn,
        type=first.type,
        name=first.name,
        kind=kind,
        category=category,
        ops=ops,
        index=first.index,
        old=old,
        new=new,
        diffs=diffs,
        diff_reasons=tuple(diff_reasons),
        replace_reasons=tuple(reasons),
    )


def _scalar_ref(value: Any) -> str | None:
    if isinstance(value, bool) or is_secret(value) or value == UNKNOWN:
        return None
    if isinstance(value, (str, int)) and str(value):
        return str(value)
    return None


def _holders(changes: Sequence[Change]) -> dict[str, str]:
    """Server id or URN -> the name of what attaches a volume to it (attachment or volume)."""
    found: dict[str, str] = {}
    for c in changes:
        key = HOLDER_KEYS.get(c.type)
        if key is None:
            continue
        for state in (c.old, c.new):
            if state is None:
                continue
            refs = [_scalar_ref(state.inputs.get(key)), _scalar_ref(state.outputs.get(key))]
            refs += list(state.property_dependencies.get(key, ()))
            if state.deleted_with and c.type != "hcloud:index/volume:Volume":
                refs.append(state.deleted_with)
            for ref in refs:
                if ref:
                    found.setdefault(ref, c.name)
    return found


def _server_refs(c: Change) -> list[str]:
    refs = [c.urn]
    for state in (c.old, c.new):
        if state is not None:
            refs += [state.urn, state.id or "", _scalar_ref(state.outputs.get("id")) or ""]
    return [r for r in refs if r]


def _holds(c: Change) -> str | None:
    """What a server holds itself, from its HOLDS_LABEL label or tag (old state first)."""
    for state in (c.old, c.new):
        if state is None:
            continue
        for key in ("labels", "tags"):
            found = state.inputs.get(key)
            value = found.get(HOLDS_LABEL) if isinstance(found, Mapping) else None
            if isinstance(value, str) and value:
                return HOLDS_TEXT.get(value, value)
    return None


STATEFUL_SET = "kubernetes:apps/v1:StatefulSet"


def _claim_templates(state: State | None) -> list[str]:
    """The claim template names of a StatefulSet's state (its pods' claims are named after
    them): a replace that drops one leaves the pods' data behind (a volume becoming shared by
    several services on the k8s rung moves to a claim of its own)."""
    spec = state.inputs.get("spec") if state is not None else None
    templates = spec.get("volumeClaimTemplates") if isinstance(spec, Mapping) else None
    if not isinstance(templates, list):
        return []
    names = []
    for t in templates:
        meta = t.get("metadata") if isinstance(t, Mapping) else None
        name = meta.get("name") if isinstance(meta, Mapping) else None
        if isinstance(name, str):
            names.append(name)
    return names


def _meta(state: State | None, key: str) -> str | None:
    meta = state.inputs.get("metadata") if state is not None else None
    value = meta.get(key) if isinstance(meta, Mapping) else None
    return value if isinstance(value, str) and value and value != UNKNOWN else None


def _stateful_set_loss(c: Change) -> str | None:
    """What a StatefulSet's replace or delete loses (its pods' claims, as a phrase), or None when
    its pods keep them. Fails closed: a spec it cannot read loses them."""
    spec = c.old.inputs.get("spec") if c.old is not None else None
    if not isinstance(spec, Mapping):
        return "volume claims of its pods, if it has any (its spec cannot be read)"
    claims = _claim_templates(c.old)
    if not claims:
        return None
    names = ", ".join(claims)
    policy = spec.get("persistentVolumeClaimRetentionPolicy")
    if isinstance(policy, Mapping) and policy.get("whenDeleted") == "Delete":
        return (
            f"volume claims of its pods ({names}), which are deleted with it "
            "(persistentVolumeClaimRetentionPolicy.whenDeleted: Delete)"
        )
    if c.kind == "delete":
        return None  # the claims outlive it, data included
    left = [n for n in claims if n not in _claim_templates(c.new)]
    if left:
        return (
            f"volume claims of its pods ({', '.join(left)}); its new pods mount other, "
            "new claims and the old ones stay unmounted with the data"
        )
    old_name, new_name = _meta(c.old, "name"), _meta(c.new, "name")
    same_place = _meta(c.old, "namespace") == _meta(c.new, "namespace")
    if old_name is None or old_name != new_name or not same_place:
        return (
            f"volume claims of its pods ({names}); the replacement is not named the same "
            "(metadata.name, namespace), so its pods start on new, empty claims"
        )
    return None


def find_dangers(
    changes: Sequence[Change], table: StatefulTable = DEFAULT_TABLE
) -> tuple[Danger, ...]:
    """Replaces and deletes that lose data, in step order (level DATA_LOSS): types of the
    stateful table, identities replaced, servers that hold a volume or cluster state,
    StatefulSets whose pods lose their claims, protected resources. Then (level REVIEW)
    replaces and deletes of types the table does not know, and deletes of identities."""
    holders = _holders(changes)
    out = []
    for c in changes:
        if c.kind not in ("replace", "delete", "import-replacement"):
            continue
        key = _type_key(c.type)
        level = DATA_LOSS
        what = table.stateful.get(key)
        holder = None
        state = None
        if what is None and key in table.identity:
            what = table.identity[key]
            if c.kind == "delete":
                level = REVIEW
        if what is None and c.type in SERVERS:
            holder = next((holders[r] for r in _server_refs(c) if r in holders), None)
            state = _holds(c)
            if holder is not None or state is not None:
                what = "server"
        if key == STATEFUL_SET and what is not None:
            state = _stateful_set_loss(c)
            if state is None:
                what = None
        if what is None and c.protect:
            what = "protected resource"
        elif what is not None and c.protect:
            level = DATA_LOSS
        component = any(s is not None and not s.custom for s in (c.old, c.new))
        known = key in table.stateful or key in table.identity or table.is_stateless(key)
        if what is None and not component and not known:
            what, level = "resource of a type not known to hold no data", REVIEW
        if what is None:
            continue
        before = c.old or c.new
        out.append(
            Danger(
                stack=c.stack,
                name=c.name,
                type=c.type,
                kind=c.kind,
                what=what,
                holder=holder,
                reasons=c.replace_reasons,
                protect=bool(before and before.protect),
                retain_on_delete=bool(before and before.retain_on_delete),
                index=c.index,
                state=state,
                level=level,
            )
        )
    return tuple(out)


def _counts(changes: Sequence[Change], summary: Mapping[str, int]) -> tuple[dict, dict]:
    counts = dict.fromkeys(COLUMNS, 0)
    other: dict[str, int] = {}
    for c in changes:
        counts[c.category] += 1
        if c.category == "other":
            other[c.kind] = other.get(c.kind, 0) + 1
    # `pulumi preview --json` leaves out unchanged resources unless --show-sames is given; its
    # changeSummary still counts them. Take the larger of both for every column.
    from_summary = dict.fromkeys(COLUMNS, 0)
    for op, n in summary.items():
        if op not in PHYSICAL_ONLY:
            from_summary[CATEGORY.get(op, "other")] += n
    for col in COLUMNS:
        counts[col] = max(counts[col], from_summary[col])
    return counts, dict(sorted(other.items()))


# ---------------------------------------------------------------------------------------------
# Cost


def _pricer() -> Callable[[Iterable[tuple]], Any] | None:
    """blueprints.costs.price_resources, or None when it is not available."""
    try:
        from blueprints.costs import price_resources
    except ImportError:
        return None
    return price_resources


# The backup configuration a release carries (blueprints/backup/node_files.py, CONFIG): its
# repository names the bucket and its endpoint, its keep how many snapshots stay.
BACKUP_CONFIG = "/etc/blueprints/backup/config.json"
RELEASE_COMMAND = "command:remote:Command"
DATA_VOLUMES = ("hcloud:index/volume:Volume", "aws:ebs/volume:Volume")


def _backup_repositories(resources: Sequence[tuple]) -> dict[str, Any]:
    """repository -> snapshots kept, for every backup configuration a release among `resources`
    carries (a stdin that is no readable release document carries none)."""
    found: dict[str, Any] = {}
    for type_, _, inputs, _ in resources:
        stdin = inputs.get("stdin") if type_ == RELEASE_COMMAND else None
        if not isinstance(stdin, str) or stdin in (UNKNOWN, SECRET_MASK):
            continue
        read = _read_release_text(stdin)
        file = read.body["files"].get(BACKUP_CONFIG) if read.body else None
        if not isinstance(file, Mapping):
            continue
        try:
            config = json.loads(file["text"])
        except (ValueError, TypeError, KeyError):
            continue
        if isinstance(config, Mapping) and isinstance(config.get("repository"), str):
            found.setdefault(config["repository"], config.get("keep"))
    return found


def backup_storage_items(resources: Sequence[tuple]) -> list[tuple]:
    """The backup buckets' contents (blueprints.costs.BACKUP_STORAGE), which no resource prices:
    one item per backup repository the releases configure, its bucket and place read from the
    repository URL (s3:<endpoint>/<bucket>/<folder>), the data it backs up from the stack's
    volumes (the data volume blueprints-backup reads). A stack without backup storage has none."""
    from blueprints.costs import (
        BACKUP_STORAGE,
        backup_storage,
        backup_storage_name,
        bucket_place,
    )

    repositories = _backup_repositories(resources)
    if not repositories:
        return []
    sizes = [inputs.get("size") for type_, _, inputs, _ in resources if type_ in DATA_VOLUMES]
    known = all(isinstance(v, int) and not isinstance(v, bool) for v in sizes)
    data = sum(sizes) if sizes and known else None
    items: list[tuple] = []
    for repository, keep in sorted(repositories.items()):
        # restic's s3:<endpoint>/<bucket>/<folder>, the endpoint with or without its scheme
        where = repository.removeprefix("s3:").split("://", 1)[-1]
        endpoint, _, path = where.partition("/")
        name = backup_storage_name(path.split("/")[0])
        place = bucket_place(f"https://{endpoint}")
        if place is None:
            # Not an S3 service the table prices: say so through the pricer (unpriced).
            items.append((BACKUP_STORAGE, name, {"cloud": f"at {endpoint}"}))
            continue
        items.append(backup_storage(name, place[0], place[1], data, keep))
    return items


def cost_delta(changes: Sequence[Change], region: str | None = None) -> CostDelta | None:
    """Monthly price of the new states minus that of the old states they replace, the backup
    buckets' contents included (backup_storage_items, on each side). region: the stack's
    `aws:region`. Strict: a resource neither priced nor known to bill nothing is listed as not
    priced (and the total marked partial), never counted as free."""
    pricer = _pricer()
    if pricer is None:
        return None

    def price(resources: Iterable[tuple]) -> Any:
        return pricer(resources, region=region, strict=True)

    def priced(state: State, name: str) -> tuple:
        return (state.type, name, mask_secrets(dict(state.inputs)), state.id)

    def billable(state: State | None) -> bool:
        return state is not None and state.custom and not state.type.startswith("pulumi:")

    # Unchanged resources are priced on both sides: they cancel out, but they can change what
    # a changed one costs (a stopped instance's InstanceState, the volume a snapshot policy
    # targets). `--show-sames` puts them in the document.
    same = [
        priced(st, c.name)
        for c in changes
        if c.category == "same" and billable(st := c.new or c.old)  # type: ignore[arg-type]
    ]
    after = same + [
        priced(c.new, c.name)
        for c in changes
        if c.category in ("create", "update", "replace") and billable(c.new)
    ]
    before = same + [
        priced(c.old, c.name)
        for c in changes
        if c.category in ("delete", "update", "replace") and billable(c.old)
    ]
    try:
        storage = (backup_storage_items(after), backup_storage_items(before))
    except ImportError:  # an older blueprints.costs without backup storage
        storage = ([], [])
    after += storage[0]
    before += storage[1]
    a_total, a_unpriced = _price_all(price, after)
    b_total, b_unpriced = _price_all(price, before)
    currencies = sorted(set(a_total) | set(b_total))
    delta = {cur: a_total.get(cur, Decimal(0)) - b_total.get(cur, Decimal(0)) for cur in currencies}
    unpriced = tuple(sorted(set(a_unpriced) | set(b_unpriced)))
    return CostDelta(delta=delta, unpriced=unpriced, backup_storage=any(storage))


def _price_all(price, resources: list[tuple]) -> tuple[dict[str, Decimal], list[str]]:
    """Priced together, so one resource can change another's price (a stopped instance's
    InstanceState, a snapshot policy's target volume); inputs that are secret or not known
    until apply come back as unpriced, never as a guess."""
    summary = price(resources)
    return dict(summary.total), list(summary.unpriced)


def format_delta(delta: Mapping[str, Decimal]) -> str:
    if not delta:
        return "0"
    parts = []
    for cur, amount in sorted(delta.items()):
        q = amount.quantize(Decimal("0.01"))
        parts.append(f"{'±' if q == 0 else ('+' if q > 0 else '-')}{abs(q)} {cur}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Escaping

_CONTROL = {i: f"\\u{i:04x}" for i in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
for _cp in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0xFEFF):
    _CONTROL[_cp] = f"\\u{_cp:04x}"


def one_line(text: str) -> str:
    """Control, line-separator and bidi characters as visible escapes."""
    return str(text).translate(_CONTROL)


def code(text: str) -> str:
    """An inline code span that shows `text` literally, whatever it contains."""
    text = one_line(text)
    if text == "":
        return "*(empty)*"
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text[0] in "` " or text[-1] in "` " else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def html_code(text: str) -> str:
    """<code> with HTML-escaped text, for raw HTML context (<summary>)."""
    text = one_line(text)
    return f"<code>{html.escape(text, quote=True)}</code>" if text else "<i>(empty)</i>"


def cell_code(text: str) -> str:
    """Code in a table cell: pipes and backslashes as entities, so cells cannot be split."""
    text = one_line(text)
    if "|" not in text and "\\" not in text:
        return code(text)
    safe = "".join(c if c.isalnum() or c in " -_./:=" else f"&#{ord(c)};" for c in text)
    return f"<code>{safe}</code>"


def fenced(text: str, indent: str = "", info: str = "") -> str:
    """A fenced code block longer than any backtick run in `text`."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    lines = [f"{indent}{fence}{info}"]
    lines += [f"{indent}{line}" if line else "" for line in text.split("\n")]
    lines.append(f"{indent}{fence}")
    return "\n".join(lines)


def md_text(text: str) -> str:
    """Plain text with markdown punctuation backslash-escaped (for the caller's title)."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~&:@$%])", r"\\\1", one_line(text))


# ---------------------------------------------------------------------------------------------
# Property values


def parse_path(path: str) -> list[str | int] | None:
    """Pulumi property path (a.b[0]["c.d"]) -> segments; None when it does not parse."""
    out: list[str | int] = []
    i, n = 0, len(path)
    decoder = json.JSONDecoder()
    while i < n:
        ch = path[i]
        if ch == "[":
            if i + 1 < n and path[i + 1] == '"':
                try:
                    key, end = decoder.raw_decode(path, i + 1)
                except json.JSONDecodeError:
                    return None
                if end >= n or path[end] != "]":
                    return None
                out.append(str(key))
                i = end + 1
            else:
                end = path.find("]", i)
                if end < 0 or not path[i + 1 : end].isdigit():
                    return None
                out.append(int(path[i + 1 : end]))
                i = end + 1
        elif ch == ".":
            if not out or i + 1 >= n:
                return None
            i += 1
        else:
            end = i
            while end < n and path[end] not in ".[":
                end += 1
            out.append(path[i:end])
            i = end
    return out or None


_MISSING = object()


def lookup(tree: Any, segments: Sequence[str | int]) -> tuple[Any, bool]:
    """(value or _MISSING, whether a secret was met on the way or at the end)."""
    value = tree
    for seg in segments:
        if is_secret(value):
            return _MISSING, True
        in_map = isinstance(value, Mapping) and isinstance(seg, str) and seg in value
        in_list = isinstance(value, list) and isinstance(seg, int) and 0 <= seg < len(value)
        if not (in_map or in_list):
            return _MISSING, False
        value = value[seg]
    return value, _contains_secret(value)


def _contains_secret(value: Any) -> bool:
    if is_secret(value):
        return True
    if isinstance(value, Mapping):
        return any(_contains_secret(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_secret(v) for v in value)
    return False


@dataclass(frozen=True)
class PropertyChange:
    path: str
    kind: str
    old: Any  # _MISSING when absent
    new: Any
    secret: bool

    @property
    def replaces(self) -> bool:
        return self.kind.endswith("-replace")


BOOKKEEPING = frozenset({"__defaults", "__meta", "__inputs", "__provider", "@isPulumiResource"})


def _bookkeeping(key: Any, top: bool = False) -> bool:
    """A key providers or the engine keep for themselves (a bridged provider's `__defaults`):
    never a property anyone set. Any `__` key at the top of the inputs; the known ones deeper."""
    return isinstance(key, str) and (key in BOOKKEEPING or (top and key.startswith("__")))


def _strip(value: Any) -> Any:
    """The value without bookkeeping keys, at any depth."""
    if isinstance(value, Mapping) and not is_secret(value):
        return {k: _strip(v) for k, v in value.items() if not _bookkeeping(k)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _hidden_path(path: str) -> bool:
    segments = parse_path(path) or [path]
    return _bookkeeping(segments[0], top=True) or any(_bookkeeping(s) for s in segments[1:])


def _input_diffs(c: Change) -> tuple[PropertyDiff, ...]:
    """Changed top-level inputs of old vs new (Pulumi sent no detailedDiff), reasons included."""
    old = _strip(
        {k: v for k, v in c.old.inputs.items() if not _bookkeeping(k, True)} if c.old else {}
    )
    new = _strip(
        {k: v for k, v in c.new.inputs.items() if not _bookkeeping(k, True)} if c.new else {}
    )
    replace = set(c.replace_reasons)
    out = {}
    for key in sorted(set(old) | set(new) | set(c.diff_reasons) | replace):
        if key in old and key in new and old[key] == new[key] and key not in c.diff_reasons:
            continue
        if key in replace or key in c.diff_reasons or (key in old) == (key in new):
            kind = "update"
        else:
            kind = "add" if key in new else "delete"
        if key in replace:
            kind += "-replace"
        out[key] = PropertyDiff(key, kind, True)
    return tuple(out.values())


def property_changes(c: Change) -> list[PropertyChange]:
    """The changed properties of one resource, sorted by path, secrets flagged, bookkeeping
    keys left out."""
    diffs = c.diffs
    if not diffs and c.old is not None and c.new is not None:
        diffs = _input_diffs(c)
    if not diffs:
        paths = list(c.diff_reasons) or list(c.replace_reasons)
        if paths:
            replace = set(c.replace_reasons)
            diffs = tuple(
                PropertyDiff(p, "update-replace" if p in replace else "update", True)
                for p in sorted(set(paths))
            )
        elif c.kind in ("create", "import", "read", "create-replacement") and c.new:
            # Bridged providers keep bookkeeping such as `__defaults` in the inputs: not a
            # property anyone set.
            diffs = tuple(
                PropertyDiff(k, "add", True) for k in sorted(c.new.inputs) if not k.startswith("__")
            )
        else:
            return []
    out = []
    for d in diffs:
        if _hidden_path(d.path):
            continue
        segments = parse_path(d.path) or [d.path]
        trees = []
        if c.old is not None:
            trees += [c.old.inputs, c.old.outputs]
        if c.new is not None:
            trees += [c.new.inputs, c.new.outputs]
        secret = any(lookup(t, segments)[1] for t in trees)
        top = segments[0]
        for state in (c.old, c.new):
            if state is not None and top in state.additional_secret_outputs:
                secret = True
        old: Any = _MISSING
        if c.old is not None and not d.kind.startswith("add"):
            source = c.old.inputs if d.input_diff else c.old.outputs
            old = lookup(source, segments)[0]
            if old is _MISSING and not d.input_diff:
                old = lookup(c.old.inputs, segments)[0]
        new: Any = _MISSING
        if c.new is not None and not d.kind.startswith("delete"):
            new = lookup(c.new.inputs, segments)[0]
        out.append(PropertyChange(d.path, d.kind, old, new, secret))
    return out


KNOWN_AFTER_APPLY = "(known after apply)"
WRAP = 100  # characters of one line of a long value in a diff


def _json(value: Any, indent: int | None = None) -> str:
    """A value as JSON: secrets masked, bookkeeping keys left out, unknowns named."""
    seps = (",", ": ") if indent else (", ", ": ")
    text = json.dumps(
        _strip(mask_secrets(value)),
        sort_keys=True,
        ensure_ascii=False,
        indent=indent,
        separators=seps,
    )
    return text.replace(json.dumps(UNKNOWN), KNOWN_AFTER_APPLY)


def _diff_text(value: Any) -> str:
    """A value as lines to diff: a string as itself (JSON in it pretty-printed), anything else
    as pretty-printed JSON; lines longer than WRAP wrapped, so a change in a long line shows."""
    if isinstance(value, str) and value != UNKNOWN:
        text = value
        if text.lstrip()[:1] in ("{", "["):
            try:
                text = _json(json.loads(text), indent=2)
            except ValueError:
                text = value
    else:
        text = _json(value, indent=2)
    lines = []
    for line in text.split("\n"):
        lines += [line[i : i + WRAP] for i in range(0, len(line), WRAP)] or [""]
    return "\n".join(lines)


def show_value(value: Any) -> str:
    """One value as a code span: JSON, masked, unknowns named, long ones cut."""
    if value is _MISSING:
        return "*(none)*"
    if value == UNKNOWN:
        return f"*{KNOWN_AFTER_APPLY}*"
    text = _json(value)
    if len(text) > VALUE_LIMIT:
        text = f"{text[:VALUE_LIMIT]}… ({len(text)} characters)"
    return code(text)


def _text_diff(old: str, new: str) -> str | None:
    """A unified diff of two multi-line strings, or None when it does not help."""
    if "\n" not in old and "\n" not in new:
        return None
    return _unified(_diff_text(old), _diff_text(new), "old", "new")


def _unified(old: str, new: str, old_name: str, new_name: str) -> str:
    """difflib's unified diff, cut to DIFF_LINES lines of VALUE_LIMIT characters, escaped."""
    lines = list(
        difflib.unified_diff(
            old.splitlines(), new.splitlines(), old_name, new_name, n=2, lineterm=""
        )
    )
    if len(lines) > DIFF_LINES:
        lines = [*lines[:DIFF_LINES], f"... ({len(lines) - DIFF_LINES} more diff lines)"]
    lines = [line if len(line) <= VALUE_LIMIT else line[:VALUE_LIMIT] + "…" for line in lines]
    return "\n".join(one_line(line.replace(UNKNOWN, KNOWN_AFTER_APPLY)) for line in lines)


KIND_WORDS = {
    "add": "added",
    "add-replace": "added, forces replacement",
    "update": "changed",
    "update-replace": "changed, forces replacement",
    "delete": "removed",
    "delete-replace": "removed, forces replacement",
}


def _property_line(p: PropertyChange, values: bool) -> str:
    word = KIND_WORDS.get(p.kind, p.kind)
    head = f"- {code(p.path)} ({one_line(word) if word in KIND_WORDS.values() else code(word)})"
    if p.secret:
        return f"{head}: {SECRET_MASK}"
    if not values:
        return head
    if p.kind.startswith("add"):
        return f"{head}: {show_value(p.new)}"
    if p.kind.startswith("delete"):
        return f"{head}: was {show_value(p.old)}"
    if p.old is _MISSING and p.new is _MISSING:
        return f"{head}: values not reported"
    if isinstance(p.old, str) and isinstance(p.new, str):
        diff = _text_diff(p.old, p.new)
        if diff is not None:
            return f"{head}:\n\n{fenced(diff, indent='  ', info='diff')}\n"
    both = p.old is not _MISSING and p.new is not _MISSING and UNKNOWN not in (p.old, p.new)
    if both and max(len(_json(p.old)), len(_json(p.new))) > VALUE_LIMIT // 2:
        # Long values: the changed lines, not two cut prefixes that look the same.
        diff = _unified(_diff_text(p.old), _diff_text(p.new), "old", "new")
        if diff:
            return f"{head}:\n\n{fenced(diff, indent='  ', info='diff')}\n"
    return f"{head}: {show_value(p.old)} → {show_value(p.new)}"


# ---------------------------------------------------------------------------------------------
# Releases: a Command whose stdin is a release document


@dataclass(frozen=True)
class FileChange:
    path: str
    kind: str  # added, removed, changed
    old_mode: Any
    new_mode: Any
    diff: str | None  # unified diff of the text; None when only the mode changed, or removed


@dataclass(frozen=True)
class ReleaseDiff:
    old_id: str | None  # None: no release before (the Command is created)
    new_id: str
    lines: tuple[str, ...]  # plain text, one per change, e.g. "web: replicas 2 -> 3"
    files: tuple[FileChange, ...]
    # What the ids name and how the change reaches the machines, when not a release document
    # handed to a node's release agent (a Nomad job: its jobspec, rolled out by Nomad).
    label: str = "release"
    how: str | None = None
    key: str = "stdin"  # the input that carries it


@dataclass(frozen=True)
class _Stdin:
    status: str  # absent, release, unreadable, secret, secrets-document
    body: Mapping[str, Any] | None = None
    why: str = ""


def _stdin(state: State | None) -> _Stdin:
    if state is None or "stdin" not in state.inputs:
        return _Stdin("absent")
    value = state.inputs["stdin"]
    if is_secret(value) or _contains_secret(value):
        return _Stdin("secret", why="it is secret")
    if value == UNKNOWN:
        return _Stdin("unreadable", why="it is known only after apply")
    if not isinstance(value, str):
        return _Stdin("unreadable", why="it is not text")
    return _read_release_text(value)


@functools.lru_cache(maxsize=64)
def _read_release_text(text: str) -> _Stdin:
    """parse_release with what a report needs on top: bounded work (no YAML aliases, a size
    limit), any failure as a reason, unique service names, and a SECRETS document recognized
    so it is never shown."""
    import yaml

    if len(text) > RELEASE_TEXT_LIMIT:
        return _Stdin("unreadable", why=f"it is larger than {RELEASE_TEXT_LIMIT:,} characters")
    body = _release_with_libyaml(text)
    if body is not None:
        return _release_read(body)
    try:
        # Aliases can make a short document expand without bound when it is walked.
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text)):
            return _Stdin("unreadable", why="it uses YAML aliases, which a release never has")
        body = parse_release(text)
    except BundleError as exc:
        if "blueprints-secrets/" in text:
            return _Stdin("secrets-document", why="it is a secrets document")
        return _Stdin("unreadable", why=str(exc).rstrip("."))
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as exc:
        return _Stdin("unreadable", why=f"it is not a release document ({type(exc).__name__})")
    return _release_read(body)


def _release_with_libyaml(text: str) -> dict[str, Any] | None:
    """The release document's body, read with libyaml (megabytes at hundreds of services), when
    it has no aliases and parse_release would accept it; else None, and the text is read again
    as before, so that every refusal keeps its words."""
    import yaml

    from blueprints.release.bundle import parse_delivered
    from blueprints.yaml_text import FastLoader

    try:
        if any(isinstance(e, yaml.AliasEvent) for e in yaml.parse(text, Loader=FastLoader)):
            return None
        delivered = parse_delivered(text)
    except (yaml.YAMLError, ValueError, TypeError, RecursionError):
        return None
    return delivered[1] if delivered is not None and delivered[0] == "release.yaml" else None


def _release_read(body: dict[str, Any]) -> _Stdin:
    names = [s["name"] for s in body["services"]]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        return _Stdin("unreadable", why=f"it names service {twice[0]!r} twice")
    return _Stdin("release", body)


def _image_change(old: Any, new: Any) -> str:
    """`repo:1.4.2 -> 1.4.3` when only the tag (or digest) differs, else both in full."""

    def split(ref: str) -> tuple[str, str]:
        if "@" in ref:
            name, _, pinned = ref.partition("@")
            return name, pinned
        slash = ref.rfind("/")
        colon = ref.rfind(":")
        return (ref[:colon], ref[colon + 1 :]) if colon > slash else (ref, "")

    if isinstance(old, str) and isinstance(new, str):
        (old_name, _), (new_name, new_tag) = split(old), split(new)
        if old_name == new_name and new_tag:
            return f"{old} -> {new_tag}"
    return f"{_text(old)} -> {_text(new)}"


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _health(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, Mapping) and set(value) == {"budget"}:
        return f"{_text(value['budget'])} s budget"
    return _text(value)


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    return [_text(v) for v in value] if isinstance(value, list) else [_text(value)]


SERVICE_KEYS = ("name", "image", "replicas", "rollout", "digest", "health")
RELEASE_KEYS = ("format", "release", "rung", "app", "secrets", "volumes", "units", "services")


def _service_lines(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[str]:
    if new is None:
        return [f"{old['name']}: removed"] if old is not None else []
    name = new["name"]
    if old is None:
        replicas = new.get("replicas")
        count = f"{replicas} replica{'' if replicas == 1 else 's'}"
        return [f"{name}: added ({_text(new.get('image'))}, {count})"]
    lines = []
    if old.get("image") != new.get("image"):
        lines.append(f"{name}: image {_image_change(old.get('image'), new.get('image'))}")
    for key in ("replicas", "rollout"):
        if old.get(key) != new.get(key):
            lines.append(f"{name}: {key} {_text(old.get(key))} -> {_text(new.get(key))}")
    if old.get("health") != new.get("health"):
        lines.append(f"{name}: health {_health(old.get('health'))} -> {_health(new.get('health'))}")
    if old.get("digest") != new.get("digest") and old.get("image") == new.get("image"):
        lines.append(
            f"{name}: container definition changed (env, secret values, command, volumes, "
            "ports, health or limits)"
        )
    for key in sorted((set(old) | set(new)) - set(SERVICE_KEYS)):
        if old.get(key) != new.get(key):
            lines.append(f"{name}: {key} {_text(old.get(key))} -> {_text(new.get(key))}")
    return lines


def _file_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[FileChange]:
    out = []
    for path in sorted(set(old) | set(new), key=str):
        o, n = old.get(path), new.get(path)
        if o == n:
            continue
        if o is None:
            diff = _unified("", n["text"], "/dev/null", str(path))
            out.append(FileChange(str(path), "added", None, n.get("mode"), diff))
        elif n is None:
            out.append(FileChange(str(path), "removed", o.get("mode"), None, None))
        else:
            diff = None
            if o["text"] != n["text"]:
                diff = _unified(o["text"], n["text"], str(path), str(path))
            out.append(FileChange(str(path), "changed", o.get("mode"), n.get("mode"), diff))
    return out


def release_diff(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> ReleaseDiff:
    """What a new release document changes against the old one (None: a first release)."""
    before = old or {}
    lines = []
    for key in ("rung", "app"):
        if old is not None and before.get(key) != new.get(key):
            lines.append(f"{key}: {_text(before.get(key))} -> {_text(new.get(key))}")
    old_services = {s["name"]: s for s in before.get("services", [])}
    new_services = {s["name"]: s for s in new["services"]}
    for s in new["services"]:
        lines += _service_lines(old_services.get(s["name"]), s)
    for s in before.get("services", []):
        if s["name"] not in new_services:
            lines += _service_lines(s, None)
    if old is not None and before.get("secrets") != new.get("secrets"):
        lines.append("secrets changed")
    for key in ("volumes", "units"):
        was, now = _names(before.get(key, [])), _names(new.get(key, []))
        added = [v for v in now if v not in was]
        removed = [v for v in was if v not in now]
        if added:
            lines.append(f"{key}: added {', '.join(added)}")
        if removed:
            lines.append(f"{key}: removed {', '.join(removed)}")
    for key in sorted((set(before) | set(new)) - {*RELEASE_KEYS, "files"}, key=str):
        if old is not None and before.get(key) != new.get(key):
            lines.append(f"{key} {_text(before.get(key))} -> {_text(new.get(key))}")
    files = _file_changes(before.get("files", {}), new["files"])
    if old is not None and not lines and not files and old != new:
        # The id changed (it digests every other field) though no field above did.
        lines.append("release fields changed that this report does not know; see the stdin")
    return ReleaseDiff(
        old_id=_text(before["release"]) if old is not None else None,
        new_id=_text(new["release"]),
        lines=tuple(lines),
        files=tuple(files),
    )


NOMAD_JOB = "nomad:index/job:Job"
_HCL_STRING = r'"(?:[^"\\]|\\.)*"'
_GROUP = re.compile(rf"^\s*group\s+({_HCL_STRING})\s*\{{", re.M)
_COUNT = re.compile(r"^\s*count\s*=\s*(\d+)", re.M)
_IMAGE = re.compile(rf"^\s*image\s*=\s*({_HCL_STRING})", re.M)
_JOB_ID = re.compile(rf"^job\s+({_HCL_STRING})", re.M)


def _hcl_text(literal: str) -> str:
    """A quoted HCL string as the blueprints write it (a JSON string literal)."""
    try:
        value = json.loads(literal)
    except ValueError:
        return literal
    return value if isinstance(value, str) else literal


def _job_groups(spec: str) -> dict[str, dict[str, Any]]:
    """Group name -> {count, images} of a jobspec, read from the text the blueprints write."""
    starts = [(m.start(), _hcl_text(m.group(1))) for m in _GROUP.finditer(spec)]
    groups = {}
    for i, (start, name) in enumerate(starts):
        body = spec[start : starts[i + 1][0] if i + 1 < len(starts) else len(spec)]
        count = _COUNT.search(body)
        groups[name] = {
            "count": int(count.group(1)) if count else 1,
            "images": [_hcl_text(m.group(1)) for m in _IMAGE.finditer(body)],
        }
    return groups


def job_diff(old: str | None, new: str) -> ReleaseDiff:
    """What a new jobspec changes against the old one (None: the job is created)."""
    found = _JOB_ID.search(new)
    job = _hcl_text(found.group(1)) if found else "job"
    before, after = _job_groups(old or ""), _job_groups(new)
    lines = []
    for name, g in after.items():
        was = before.get(name)
        if old is None:
            continue
        if was is None:
            lines.append(f"{name}: added ({', '.join(g['images'])}, count {g['count']})")
            continue
        if was["images"] != g["images"]:
            pairs = list(zip(was["images"], g["images"], strict=False))
            changed = [(a, b) for a, b in pairs if a != b] or [
                (", ".join(was["images"]), ", ".join(g["images"]))
            ]
            lines += [f"{name}: image {_image_change(a, b)}" for a, b in changed]
        if was["count"] != g["count"]:
            lines.append(f"{name}: count {was['count']} -> {g['count']}")
    lines += [f"{name}: removed" for name in before if name not in after and old is not None]
    if old is not None and old != new and not lines:
        lines.append(
            "job definition changed (env, command, ports, checks, resources or update policy)"
        )
    files = ()
    if old != new:
        kind = "added" if old is None else "changed"
        path = f"{job}.nomad.hcl"
        diff = _unified(old or "", new, "/dev/null" if old is None else path, path)
        files = (FileChange(path, kind, None, None, diff),)
    return ReleaseDiff(
        old_id=_spec_id(old) if old is not None else None,
        new_id=_spec_id(new),
        lines=tuple(lines),
        files=files,
        label=f"job {job}, jobspec",
        how=(
            "a new version of the periodic job: its next run uses it, nothing running restarts"
            if PERIODIC.search(new)
            else "a Nomad deployment: one instance at a time, health-gated, reverted if it fails"
        ),
        key="jobspec",
    )


# A periodic job (the nomad rung's backups) has no deployment: a new version waits for its run.
PERIODIC = re.compile(r"^\s*periodic\s*\{", re.MULTILINE)


KUBE_WORKLOADS = frozenset({"kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet"})


def _workload_summary(spec: Mapping[str, Any]) -> dict[str, Any]:
    """replicas, container -> image, and the secrets digest of a Deployment's or StatefulSet's
    spec as the k8s rung writes it."""
    template = spec.get("template") if isinstance(spec.get("template"), Mapping) else {}
    pod = template.get("spec") if isinstance(template.get("spec"), Mapping) else {}
    meta = template.get("metadata") if isinstance(template.get("metadata"), Mapping) else {}
    notes = meta.get("annotations") if isinstance(meta.get("annotations"), Mapping) else {}
    containers = [c for c in pod.get("containers") or [] if isinstance(c, Mapping)]
    return {
        "replicas": spec.get("replicas", 1),
        "images": {str(c.get("name")): c.get("image") for c in containers},
        "secrets": notes.get(SECRETS_DIGEST),
    }


def _spec_text(spec: Mapping[str, Any] | None) -> str:
    return json.dumps(spec, indent=2, sort_keys=True) + "\n" if spec is not None else ""


def workload_diff(name: str, kind: str, old: Mapping | None, new: Mapping) -> ReleaseDiff:
    """What a new Deployment or StatefulSet spec changes against the old one (None: created)."""
    after = _workload_summary(new)
    lines = []
    if old is not None:
        before = _workload_summary(old)
        for container, image in after["images"].items():
            was = before["images"].get(container)
            if was is None:
                lines.append(f"{container}: container added ({image})")
            elif was != image:
                lines.append(f"{container}: image {_image_change(was, image)}")
        lines += [f"{c}: container removed" for c in before["images"] if c not in after["images"]]
        if before["replicas"] != after["replicas"]:
            lines.append(f"{name}: replicas {before['replicas']} -> {after['replicas']}")
        if before["secrets"] != after["secrets"]:
            lines.append(f"{name}: secrets changed")
        if old != new and not lines:
            lines.append(f"{name}: pod template changed (env, command, probes or resources)")
    old_text, new_text = _spec_text(old), _spec_text(new)
    files = ()
    if old != new:
        path = f"{kind.lower()}-{name}.spec.json"
        diff = _unified(old_text, new_text, "/dev/null" if old is None else path, path)
        files = (FileChange(path, "added" if old is None else "changed", None, None, diff),)
    return ReleaseDiff(
        old_id=_spec_id(old_text) if old is not None else None,
        new_id=_spec_id(new_text),
        lines=tuple(lines),
        files=files,
        label=f"{kind} {name}, spec",
        how="a Kubernetes rolling update: new pods take over once ready, Pulumi waits for it",
        key="spec",
    )


def _kube_name(c: Change) -> str:
    state = c.new or c.old
    meta = state.inputs.get("metadata") if state is not None else None
    return str(meta.get("name")) if isinstance(meta, Mapping) and meta.get("name") else c.name


def _kube_spec(state: State | None) -> Mapping[str, Any] | None:
    value = state.inputs.get("spec") if state is not None else None
    return value if isinstance(value, Mapping) and not is_secret(value) else None


def _spec_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _jobspec(state: State | None) -> str | None:
    value = state.inputs.get("jobspec") if state is not None else None
    if not isinstance(value, str) or is_secret(value) or value == UNKNOWN:
        return None
    return value


def release_change(c: Change) -> tuple[ReleaseDiff | None, str | None]:
    """(the release diff of a Command or a Nomad job, or None; a sentence why a release is not
    shown)."""
    if c.type in KUBE_WORKLOADS and c.kind != "delete":
        new_spec, old_spec = _kube_spec(c.new), _kube_spec(c.old) if c.kind != "create" else None
        if new_spec is None or (c.kind != "create" and old_spec is None):
            return None, "the spec is not known (or not shown) on both sides"
        kind = c.type.rsplit(":", 1)[-1]
        return workload_diff(_kube_name(c), kind, old_spec, new_spec), None
    if c.type == NOMAD_JOB and c.kind != "delete":
        new = _jobspec(c.new)
        old = _jobspec(c.old) if c.kind != "create" else None
        if new is None or (c.kind != "create" and old is None):
            return None, "the jobspec is not known (or not shown) on both sides"
        return job_diff(old, new), None
    if c.type not in RELEASE_TYPES or c.kind == "delete":
        return None, None
    old = _stdin(c.old) if c.kind != "create" else _Stdin("absent")
    new = _stdin(c.new)
    if "release" not in (old.status, new.status):
        return None, None
    if new.status != "release" or old.status not in ("release", "absent"):
        side, bad = ("new", new) if new.status != "release" else ("old", old)
        return None, f"the {side} stdin is not shown as a release: {bad.why}"
    return release_diff(old.body if old.status == "release" else None, new.body), None


def _stdin_hidden(c: Change) -> bool:
    """A stdin that must never be shown: a SECRETS document a preview holds unmasked."""
    if c.type not in RELEASE_TYPES:
        return False
    return "secrets-document" in (_stdin(c.old).status, _stdin(c.new).status)


def _release_head(rd: ReleaseDiff, kind: str) -> str:
    how = {
        "update": "rolled out in place by the node's release agent",
        "replace": "the Command is replaced (see why below); the node receives it as a release",
    }.get(kind, "")
    if rd.how is not None:
        how = {"update": rd.how, "replace": "the resource is replaced (see why below)"}.get(
            kind, ""
        )
    if rd.old_id is None:
        return f"- {rd.label} {code(rd.new_id)} (the first one this resource delivers)"
    if rd.old_id == rd.new_id:
        return f"- {rd.label} {code(rd.new_id)} (same id; the document's text changed)"
    return f"- {rd.label} {code(rd.old_id)} → {code(rd.new_id)}" + (f": {how}" if how else "")


def _release_lines(rd: ReleaseDiff, limit: int | None = None) -> list[str]:
    lines = list(rd.lines)
    if rd.files and not lines:
        n = len(rd.files)
        lines.append(
            f"no service, secret, volume or unit changed; {n} file{'s' if n != 1 else ''} changed"
        )
    if not lines:
        lines.append("no field of the release changed")
    if limit is not None and len(lines) > limit:
        lines = [*lines[:limit], f"... and {len(lines) - limit} more (see the resource below)"]
    return lines


def _release_body(rd: ReleaseDiff, kind: str, values: bool) -> list[str]:
    summary = "\n".join(one_line(line) for line in _release_lines(rd))
    body = [_release_head(rd, kind), f"- what changes:\n\n{fenced(summary, indent='  ')}\n"]
    for f in rd.files:
        head = f"- {code(f.path)} ({f.kind})"
        if f.kind != "removed" and f.old_mode != f.new_mode and f.old_mode is not None:
            head += f", mode {code(_text(f.old_mode))} → {code(_text(f.new_mode))}"
        elif f.kind == "added" and f.new_mode is not None:
            head += f", mode {code(_text(f.new_mode))}"
        if values and f.diff:
            body.append(f"{head}:\n\n{fenced(f.diff, indent='  ', info='diff')}\n")
        else:
            body.append(head)
    if rd.files and not values:
        body.append("- *(file diffs trimmed to fit the comment)*")
    return body


def _waits(s: StackSummary) -> dict[str, list[Change]]:
    """URN -> the resources changed in this update that it waits for (its dependencies)."""
    changing = {c.urn: c for c in s.changes if c.category in ("create", "update", "replace")}
    return {
        urn: [changing[d] for d in (c.new.dependencies if c.new else ()) if d in changing]
        for urn, c in changing.items()
    }


def replacement_order(s: StackSummary) -> str:
    """How the stack's replaced servers follow each other: one after another (each waits,
    through what it depends on, for the one before) or all at the same time."""
    servers = [c for c in s.changes if c.type in SERVERS and c.kind == "replace"]
    if len(servers) < 2:
        return ""
    waits = _waits(s)

    def after(urn: str, seen: frozenset[str] = frozenset()) -> set[str]:
        out: set[str] = set()
        for dep in waits.get(urn, []):
            if dep.urn not in seen:
                out |= {dep.urn} | after(dep.urn, seen | {urn})
        return out

    before = {c.urn: after(c.urn) for c in servers}
    ordered = sorted(
        servers, key=lambda c: (len(before[c.urn] & {o.urn for o in servers}), c.index)
    )
    chained = all(ordered[i].urn in before[ordered[i + 1].urn] for i in range(len(ordered) - 1))
    if not chained:
        names = ", ".join(code(c.name) for c in ordered)
        return f"Servers replaced at the same time: {names}.\n"
    steps = [code(ordered[0].name)]
    for prev, cur in itertools.pairwise(ordered):
        gates = [
            d.name for d in waits.get(cur.urn, []) if d.urn != prev.urn and d.type not in SERVERS
        ]
        steps.append(
            code(cur.name) + (f" (after {', '.join(code(g) for g in gates)})" if gates else "")
        )
    return (
        "Servers replaced one after another, each once the one before is back: "
        + ", then ".join(steps)
        + ".\n"
    )


def release_summary(s: StackSummary) -> str:
    """The release lines of a stack's changed Commands, for the section's head (never cut)."""
    blocks = []
    for c in s.changes:
        if c.category not in ("create", "update", "replace"):
            continue
        rd, _ = release_change(c)
        if rd is None:
            continue
        lines = "\n".join(one_line(line) for line in _release_lines(rd, RELEASE_HEAD_LINES))
        blocks.append(f"Release {code(c.name)} ({c.kind}):\n\n{fenced(lines)}\n")
    return "\n".join(blocks)


# ---------------------------------------------------------------------------------------------
# Markdown blocks


def _danger_line(d: Danger, many_stacks: bool) -> str:
    where = f"{code(d.stack)}: " if many_stacks else ""
    verb = {"delete": "delete", "import-replacement": "replace (by an import)"}.get(d.kind, d.kind)
    if d.reasons:
        why = "because " + ", ".join(code(r) for r in d.reasons) + " changed"
    elif d.kind == "delete":
        why = "because it is no longer in the program"
    else:
        why = "because the provider requires it"
    holds = f", which holds the data volume (attached by {code(d.holder)})," if d.holder else ""
    if d.state:
        holds += f", which holds {d.state},"
    flags = f"protect: {'**yes**' if d.protect else 'no'}"
    if d.retain_on_delete:
        flags += ", retainOnDelete: yes (the old cloud resource is kept)"
    return f"- {where}**{verb}** {d.what} {code(d.name)} ({code(d.type)}){holds} {why}; {flags}"


def _warning_block(dangers: Sequence[Danger], many_stacks: bool) -> str:
    n = len(dangers)
    lines = [
        "> [!warning]",
        f"> **:warning: Data loss: {n} stateful resource{'s' if n != 1 else ''} would be "
        "replaced or deleted.** A replaced volume starts empty, a replaced IP is a new address; "
        "copy the data or move the address first.",
        ">",
    ]
    lines += [f"> {_danger_line(d, many_stacks)}" for d in dangers]
    return "\n".join(lines) + "\n"


def _review_block(reviews: Sequence[Danger], many_stacks: bool) -> str:
    n = len(reviews)
    lines = [
        "> [!note]",
        f"> **Review: {n} replaced or deleted resource{'s' if n != 1 else ''} of a type not "
        "known to hold no data.** Not counted as data loss (`--fail-on data-loss` passes; "
        "`--fail-on review` does not). Check what each held; list its type under `stateful:` "
        f"or `stateless:` in {code(USER_STATEFUL_FILE)}.",
        ">",
    ]
    lines += [f"> {_danger_line(d, many_stacks)}" for d in reviews]
    return "\n".join(lines) + "\n"


def _table(stacks: Sequence[StackSummary], with_cost: bool) -> str:
    head = ["stack", *COLUMNS]
    if with_cost:
        head.append("monthly cost")
    has_diag = any(s.errors or s.warnings for s in stacks)
    if has_diag:
        head.append("errors / warnings")
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["--:"] * (len(head) - 1)) + "|",
    ]

    def row(name: str, counts: Mapping[str, int], cost: str | None, diag: str | None) -> str:
        cells = [name, *(str(counts[c]) for c in COLUMNS)]
        if with_cost:
            cells.append(cost or "n/a")
        if has_diag:
            cells.append(diag or "")
        return "| " + " | ".join(cells) + " |"

    for s in stacks:
        cost = format_delta(s.cost.delta) if s.cost else None
        if s.cost and s.cost.unpriced:
            cost = f"{cost} (partial)"
        if s.unknown:
            cost = "?"  # a failed preview's changes, or changes against nothing: not a delta
        lines.append(row(cell_code(s.stack), s.counts, cost, f"{s.errors} / {s.warnings}"))
    if len(stacks) > 1:
        total = {c: sum(s.counts[c] for s in stacks) for c in COLUMNS}
        cost = None
        if with_cost:
            merged: dict[str, Decimal] = {}
            for s in stacks:
                for cur, amount in (s.cost.delta if s.cost and not s.unknown else {}).items():
                    merged[cur] = merged.get(cur, Decimal(0)) + amount
            cost = format_delta(merged)
            if any(s.cost is None or s.cost.unpriced or s.unknown for s in stacks):
                cost += " (partial)"
        errors = sum(s.errors for s in stacks)
        warnings = sum(s.warnings for s in stacks)
        lines.append(row("**total**", total, cost, f"{errors} / {warnings}"))
    return "\n".join(lines) + "\n"


def _headline(stacks: Sequence[StackSummary]) -> str:
    total = {c: sum(s.counts[c] for s in stacks) for c in COLUMNS}
    where = f"{len(stacks)} stack{'s' if len(stacks) != 1 else ''}"
    failed = [s.stack for s in stacks if s.errors]
    head = ""
    if failed:
        names = ", ".join(code(n) for n in failed)
        head = f"**The preview failed for {names}**; its changes below may be incomplete.\n\n"
    baseless: dict[str, list[str]] = {}
    for s in stacks:
        if s.against_nothing and not s.errors:
            baseless.setdefault(s.against_nothing, []).append(code(s.stack))
    for label, names in baseless.items():
        head += (
            f"**{', '.join(names)} could not be planned at {code(label)}**: shown against "
            "nothing (every resource as created), so what this change replaces or deletes "
            f"there is unknown.\n\n"
        )
    return head + _headline_counts(total, where) + _refused_line(stacks)


def _refused_line(stacks: Sequence[StackSummary]) -> str:
    refused = [c for s in stacks for c in s.changes if _refused(c)]
    if not refused:
        return ""
    names = ", ".join(code(c.name) for c in refused[:20])
    more = f" and {len(refused) - 20} more" if len(refused) > 20 else ""
    return (
        f"\n**Pulumi will refuse to delete protected {names}{more}**: the preview and the "
        "update fail there until it is unprotected.\n"
    )


def _headline_counts(total: dict[str, int], where: str) -> str:
    words = [f"{total[c]} to {c}" for c in ("create", "update", "replace", "delete")]
    if not any(total[c] for c in ("create", "update", "replace", "delete")):
        return f"**No resource changes** in {where} ({total['same']} unchanged).\n"
    return f"**{', '.join(words)}** in {where} ({total['same']} unchanged).\n"


def _notes(stacks: Sequence[StackSummary], with_cost: bool) -> str:
    lines = []
    many = len(stacks) > 1
    for s in stacks:
        prefix = f"{code(s.stack)}: " if many else ""
        if s.other_ops:
            ops = ", ".join(f"{n} {code(op)}" for op, n in s.other_ops.items())
            lines.append(f"- {prefix}other steps: {ops}")
        if with_cost and s.cost and s.cost.unpriced:
            names = "; ".join(code(u) for u in s.cost.unpriced[:20])
            more = len(s.cost.unpriced) - 20
            lines.append(
                f"- {prefix}not priced: {names}" + (f" and {more} more" if more > 0 else "")
            )
        unknown_cost = ", so its cost delta is unknown (`?`)" if with_cost else ""
        if s.errors:
            lines.append(
                f"- {prefix}**the preview reported {s.errors} error(s)**{unknown_cost}; see below"
            )
        elif s.against_nothing:
            lines.append(
                f"- {prefix}**not planned at {code(s.against_nothing)}**: shown against "
                f"nothing{unknown_cost}"
            )
        if s.maybe_corrupt:
            lines.append(f"- {prefix}**Pulumi reports that the state may be corrupt**")
    return ("\n".join(lines) + "\n") if lines else ""


def _price_dates() -> str:
    """ " (hcloud as of 2025-10, aws as of 2025-10)": when the shipped prices hold."""
    try:
        from blueprints.costs import PriceError, shipped_tables
    except ImportError:
        return ""
    try:
        tables = shipped_tables()
    except (PriceError, OSError):  # the report stands without the dates
        return ""
    return " (" + ", ".join(f"{c} as of {t.as_of}" for c, t in sorted(tables.items())) + ")"


def _cost_note(with_cost: bool, stacks: Sequence[StackSummary] = ()) -> str:
    if not with_cost:
        return ""
    note = (
        "Monthly cost: new prices of created, updated and replaced resources minus old prices "
        f"of deleted, updated and replaced ones, from the price table shipped with blueprints"
        f"{_price_dates()}; a resource it cannot price is listed and the total marked "
        "(partial).\n"
    )
    if any(s.cost is not None and s.cost.backup_storage for s in stacks):
        note += (
            "A backup bucket's contents are estimated: the data volume's size and the snapshots "
            "kept (the release's backup configuration), priced as object storage.\n"
        )
    return note


MARKERS = {"create": "+", "delete": "-", "update": "~", "replace": "±"}


def _refused(c: Change) -> bool:
    """A delete of a protected resource: Pulumi refuses it, and the preview (and update) fail."""
    return c.kind == "delete" and c.old is not None and c.old.protect


def _output_changes(c: Change) -> list[PropertyChange]:
    """The stack's changed outputs (its pulumi:pulumi:Stack step), by top-level name. Nothing
    when the new outputs are not in the preview (they can arrive only with the update)."""
    if c.type != ROOT_STACK_TYPE or c.old is None or c.new is None or not c.new.outputs:
        return []
    old = _strip(dict(c.old.outputs))
    new = _strip(dict(c.new.outputs))
    out = []
    for key in sorted(set(old) | set(new)):
        if key in old and key in new and old[key] == new[key]:
            continue
        kind = "update" if key in old and key in new else "add" if key in new else "delete"
        before, after = old.get(key, _MISSING), new.get(key, _MISSING)
        secret = any(_contains_secret(v) for v in (before, after) if v is not _MISSING)
        out.append(PropertyChange(key, kind, before, after, secret))
    return out


def _summary_html(c: Change, danger: bool, review: bool = False) -> str:
    known = c.kind in CATEGORY
    marker = "~" if _output_changes(c) else MARKERS.get(c.category, "")
    parts = [marker] if marker else []
    if _refused(c):
        parts.append("<b>delete refused</b>")
    elif c.category == "same" and _output_changes(c):
        parts.append("<b>outputs</b>")
    else:
        parts += [f"<b>{c.kind}</b>"] if known else ["<b>unknown op</b>", html_code(c.kind)]
    parts += [html_code(c.name), html_code(c.type)]
    if danger:
        parts.append("⚠️ data loss")
    elif review:
        parts.append("🔎 review")
    if c.protect:
        parts.append("🔒 protected")
    return " ".join(parts)


def _resource_block(
    c: Change, danger: bool, values: bool, waits: Sequence[Change] = (), review: bool = False
) -> str:
    body: list[str] = []
    if c.kind not in CATEGORY:
        body.append(f"- unknown step operation {code(c.kind)}; shown as Pulumi reported it")
    elif _refused(c):
        body.append(
            "- **protected**: removed from the program, but Pulumi refuses to delete a protected "
            "resource, so the preview and the update fail here; unprotect it first "
            "(`protect: false`, or `pulumi state unprotect`) if the delete is meant"
        )
    elif c.kind in OP_NOTES:
        body.append(f"- {OP_NOTES[c.kind]}")
    if waits:
        body.append("- waits for " + ", ".join(code(w.name) for w in waits) + " (changed here too)")
    if len(set(c.ops)) > 1:
        body.append("- steps: " + ", ".join(code(op) for op in c.ops))
    if c.replace_reasons:
        body.append(
            "- replaced because " + ", ".join(code(r) for r in c.replace_reasons) + " changed"
        )
    if c.old is not None and c.new is not None and c.old.protect != c.new.protect:
        body.append(
            f"- protect: {'yes' if c.old.protect else 'no'} → {'yes' if c.new.protect else 'no'}"
        )
    changes = property_changes(c) if c.kind != "delete" else []
    release, why_not = release_change(c)
    if release is not None:
        body += _release_body(release, c.kind, values)
        changes = [p for p in changes if _top_key(p.path) != release.key]
    elif why_not:
        key = {NOMAD_JOB: "jobspec", **dict.fromkeys(KUBE_WORKLOADS, "spec")}.get(c.type, "stdin")
        body.append(f"- {one_line(why_not)}; {code(key)} is shown as Pulumi reported it")
    if _stdin_hidden(c):
        body.append(f"- {code('stdin')} holds a secrets document: not shown")
        changes = [
            PropertyChange(p.path, p.kind, p.old, p.new, True) if _top_key(p.path) == "stdin" else p
            for p in changes
        ]
    outputs = _output_changes(c)
    if outputs:
        body.append("- stack outputs:")
        body += ["  " + _property_line(p, values).replace("\n", "\n  ") for p in outputs]
    body += [_property_line(p, values) for p in changes]
    if (changes or outputs) and not values:
        body.append("- *(values trimmed to fit the comment)*")
    if not body:
        body.append("- no property changes reported")
    return (
        f"<details><summary>{_summary_html(c, danger, review)}</summary>\n\n"
        + "\n".join(body)
        + "\n\n</details>\n"
    )


def _top_key(path: str) -> str | int:
    segments = parse_path(path)
    return segments[0] if segments else path


def _diagnostics_block(s: StackSummary) -> str:
    shown_kinds = ("error", "warning", "info#err")
    relevant = [d for d in s.diagnostics if d.severity in shown_kinds]
    quiet = len(s.diagnostics) - len(relevant)
    if not relevant and not quiet:
        return ""
    if len(relevant) > DIAGNOSTICS_PER_STACK:
        ranked = sorted(range(len(relevant)), key=lambda i: (relevant[i].severity != "error", i))
        keep = set(ranked[:DIAGNOSTICS_PER_STACK])
        dropped = len(relevant) - len(keep)
        relevant = [d for i, d in enumerate(relevant) if i in keep]
    else:
        dropped = 0
    lines = ["**Diagnostics**", ""]
    for d in relevant:
        label = {"info#err": "stderr"}.get(d.severity, d.severity)
        urn = Urn.parse(d.urn) if d.urn else None
        where = (
            f" on {code(urn.name)} ({code(urn.type)})"
            if urn and urn.type != ROOT_STACK_TYPE
            else ""
        )
        message = d.message
        if len(message) > DIAGNOSTIC_LIMIT:
            message = message[:DIAGNOSTIC_LIMIT] + f"\n... ({len(d.message)} characters)"
        message = "\n".join(one_line(line) for line in message.split("\n"))
        lines.append(f"- **{label}**{where}:\n\n{fenced(message, indent='  ')}\n")
    if dropped:
        lines.append(f"- {dropped} more warnings/errors not shown")
    if quiet:
        lines.append(f"- {quiet} informational message(s) not shown")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Assembly


def _aws_region(preview: Preview) -> str | None:
    """The stack's AWS region from the preview's config (`aws:region`), if it names one."""
    value = (preview.config or {}).get("aws:region")
    return value if isinstance(value, str) and value else None


def summarize(
    stack: str, preview: Preview, *, prices: bool, table: StatefulTable = DEFAULT_TABLE
) -> StackSummary:
    changes = group_changes(stack, preview)
    counts, other = _counts(changes, preview.change_summary)
    found = find_dangers(changes, table)
    return StackSummary(
        stack=stack,
        counts=counts,
        other_ops=other,
        errors=sum(1 for d in preview.diagnostics if d.severity == "error"),
        warnings=sum(1 for d in preview.diagnostics if d.severity == "warning"),
        dangers=tuple(d for d in found if d.level == DATA_LOSS),
        cost=cost_delta(changes, _aws_region(preview)) if prices else None,
        changes=changes,
        diagnostics=preview.diagnostics,
        maybe_corrupt=preview.maybe_corrupt,
        reviews=tuple(d for d in found if d.level != DATA_LOSS),
    )


def _shown(c: Change) -> bool:
    if c.category != "same":
        return True
    return bool(c.old and c.new and c.old.protect != c.new.protect) or bool(_output_changes(c))


_PRIORITY = {"replace": 1, "delete": 1, "update": 2, "create": 3, "other": 4, "same": 5}
# Within a stack, resources are listed replaces and deletes first, then updates, creates, the rest.
_ORDER = {"replace": 0, "delete": 0, "update": 1, "create": 2, "other": 3, "same": 4}


@dataclass
class _Item:
    stack: int
    order: int
    priority: tuple
    full: str
    compact: str
    state: str = "full"  # full, compact, dropped


def build_report(
    documents: Sequence[tuple[str, Mapping]],
    *,
    prices: bool = True,
    limit: int = GITLAB_NOTE_LIMIT,
    title: str | None = None,
    stateful: Mapping[str, str] | StatefulTable | None = None,
    against_nothing: Mapping[str, str] | None = None,
) -> Report:
    """The markdown report of [(stack name, parsed `pulumi preview --json`)], in that order.

    `stateful`: types to add to the stateful table (type token -> what it holds, data loss on
    replace or delete), or a whole StatefulTable (read_stateful) to merge into it.
    `against_nothing` (`blueprints diff`): stack -> the base's label, for the stacks whose base
    could not be planned and whose document shows them against nothing; what they replace or
    delete is unknown, as for a failed preview."""
    table = DEFAULT_TABLE
    if isinstance(stateful, StatefulTable):
        table = table.merged(stateful)
    elif stateful:
        table = table.merged(parse_stateful({"stateful": dict(stateful)}, "stateful="))
    summaries = []
    for stack, doc in documents:
        preview = doc if isinstance(doc, Preview) else parse_preview(doc, source=f"stack {stack}")
        summary = summarize(stack, preview, prices=prices, table=table)
        if against_nothing and stack in against_nothing:
            summary = _replace(summary, against_nothing=against_nothing[stack])
        summaries.append(summary)
    if not summaries:
        raise PreviewError("no preview documents were given")
    with_cost = prices and any(s.cost is not None for s in summaries)
    many = len(summaries) > 1
    dangers = [d for s in summaries for d in s.dangers]
    reviews = [d for s in summaries for d in s.reviews]

    core = [
        f"{MARKER}\n## {md_text(title) if title else DEFAULT_TITLE}\n",
        _headline(summaries),
        _table(summaries, with_cost),
    ]
    for extra in (_notes(summaries, with_cost), _cost_note(with_cost, summaries)):
        if extra:
            core.append(extra)
    if dangers:
        core.append(_warning_block(dangers, many))
    elif reviews:
        core.append(
            "No resource of a type known to be stateful is replaced or deleted, but "
            f"{len(reviews)} of a type not known to hold no data "
            f"{'is' if len(reviews) == 1 else 'are'}: review below.\n"
        )
    else:
        # A failed preview says nothing about what it did not reach, a stack shown against
        # nothing nothing about what it replaces: never claim either is safe.
        unknown = ", ".join(code(s.stack) for s in summaries if s.unknown)
        core.append(
            "No stateful resource (volume, IP address, database, bucket, file system, key, "
            "namespace, server holding a volume; the table is blueprints/preview/stateful.yaml) "
            + (
                f"is replaced or deleted where the preview is complete; for {unknown} it is "
                "unknown.\n"
                if unknown
                else "is replaced or deleted.\n"
            )
        )
    if reviews:
        core.append(_review_block(reviews, many))

    heads: list[str] = []
    diags: list[str] = []
    items: list[_Item] = []
    for si, s in enumerate(summaries):
        head = f"### Stack {code(s.stack)}\n"
        if s.against_nothing and not s.errors:
            head += (
                f"\n**Shown against nothing**: this stack could not be planned at "
                f"{code(s.against_nothing)} (why under Diagnostics), so every resource shows as "
                "created; what this change replaces or deletes where the stack runs is unknown.\n"
            )
        if not any(_shown(c) for c in s.changes):
            head += (
                "\nNo resource changes could be shown: the preview failed (why under "
                "Diagnostics).\n"
                if s.errors
                else "\nNo resource changes.\n"
            )
        releases = release_summary(s)
        if releases:
            head += "\n" + releases
        order = replacement_order(s)
        if order:
            head += "\n" + order
        heads.append(head)
        diags.append(_diagnostics_block(s))
        danger_idx = {d.index for d in s.dangers}
        review_idx = {d.index for d in s.reviews}
        waits = _waits(s)
        for c in sorted(s.changes, key=lambda c: (_ORDER.get(c.category, 3), c.index)):
            if not _shown(c):
                continue
            danger = c.index in danger_idx
            review = c.index in review_idx
            prio = (0 if danger or review else _PRIORITY.get(c.category, 4), si, c.index)
            wait = waits.get(c.urn, ())
            items.append(
                _Item(
                    si,
                    c.index,
                    prio,
                    _resource_block(c, danger, values=True, waits=wait, review=review),
                    _resource_block(c, danger, values=False, waits=wait, review=review),
                )
            )

    def render(note: str, with_diags: bool = True) -> str:
        blocks = list(core)
        if note:
            blocks.append(note)
        for si in range(len(summaries)):
            blocks.append(heads[si])
            if with_diags and diags[si]:
                blocks.append(diags[si])
            for it in items:
                if it.stack == si and it.state != "dropped":
                    blocks.append(it.full if it.state == "full" else it.compact)
        return "\n".join(blocks)

    trimmed_values = trimmed_resources = 0
    text = render("")
    if len(text) > limit:
        for it in items:
            it.state = "dropped"
        reserve = 200
        base = len(render("x" * reserve))
        budget = limit - base
        ranked = sorted(items, key=lambda it: it.priority)
        for it in ranked:
            if len(it.compact) + 1 <= budget:
                it.state = "compact"
                budget -= len(it.compact) + 1
        for it in ranked:
            extra = len(it.full) - len(it.compact)
            if it.state == "compact" and extra <= budget:
                it.state = "full"
                budget -= extra
        with_diags = True
        while True:
            trimmed_resources = sum(1 for it in items if it.state == "dropped")
            trimmed_values = sum(1 for it in items if it.state == "compact")
            note = _trim_note(trimmed_resources, trimmed_values, with_diags, limit)
            text = render(note, with_diags)
            if len(text) <= limit:
                break
            kept = [it for it in ranked if it.state != "dropped"]
            if kept:
                kept[-1].state = "dropped"
            elif with_diags:
                with_diags = False
            else:
                break  # the summary and warnings alone exceed the limit; they are never cut
    return Report(
        markdown=text.rstrip("\n") + "\n",
        data_loss=bool(dangers),
        stacks=tuple(summaries),
        trimmed_resources=trimmed_resources,
        trimmed_values=trimmed_values,
    )


def _trim_note(resources: int, values: int, with_diags: bool, limit: int) -> str:
    parts = []
    if resources:
        parts.append(f"{resources} resources trimmed")
    if values:
        parts.append(f"property values of {values} resources trimmed")
    if not with_diags:
        parts.append("diagnostics trimmed")
    return (
        f"**Trimmed to fit GitLab's note limit ({limit:,} characters):** "
        + "; ".join(parts or ["details trimmed"])
        + ". Run the preview locally for the full diff.\n"
    )
