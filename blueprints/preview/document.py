"""Read one `pulumi preview --json` document into a typed model.

The shape is Pulumi's PreviewDigest (pkg/backend/display/json.go, sdk/go/common/display/json.go):
``{config, steps[], diagnostics[], duration, changeSummary, maybeCorrupt}``; each step is
``{op, urn, provider, oldState, newState, diffReasons, replaceReasons, detailedDiff}`` and each
state a serialized resource (``{urn, custom, id, type, inputs, outputs, protect, ...}``).
Unknown keys are ignored (newer Pulumi versions add some); an unknown op is kept as it is.
Anything that is not that shape raises PreviewError with one sentence naming where.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Every op Pulumi's engine emits (pkg/resource/deploy/step.go StepOps).
KNOWN_OPS = (
    "same",
    "create",
    "update",
    "delete",
    "replace",
    "create-replacement",
    "delete-replaced",
    "read",
    "read-replacement",
    "refresh",
    "discard",
    "discard-replaced",
    "remove-pending-replace",
    "import",
    "import-replacement",
)

SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
SECRET_MASK = "[secret]"
ROOT_STACK_TYPE = "pulumi:pulumi:Stack"


class PreviewError(Exception):
    """A preview document that cannot be read; the message is one sentence."""


def is_secret(value: Any) -> bool:
    """A Pulumi secret: the signature wrapper, or the "[secret]" string `--json` leaves."""
    if isinstance(value, Mapping):
        return value.get(SECRET_SIG_KEY) == SECRET_SIG
    return value == SECRET_MASK


def mask_secrets(value: Any) -> Any:
    """The value with every secret (at any depth) replaced by "[secret]"."""
    if is_secret(value):
        return SECRET_MASK
    if isinstance(value, Mapping):
        return {str(k): mask_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value


@dataclass(frozen=True)
class Urn:
    stack: str
    project: str
    type: str  # the resource's own type token (the last part of a parent$child chain)
    name: str

    @classmethod
    def parse(cls, urn: str) -> Urn | None:
        """urn:pulumi:STACK::PROJECT::[PARENT$]TYPE::NAME (the name may itself contain '::')."""
        prefix = "urn:pulumi:"
        if not urn.startswith(prefix):
            return None
        parts = urn[len(prefix) :].split("::", 3)
        if len(parts) != 4 or not all(parts[:3]):
            return None
        stack, project, qualified, name = parts
        return cls(stack=stack, project=project, type=qualified.split("$")[-1], name=name)


@dataclass(frozen=True)
class State:
    """A resource state as the preview serializes it (secrets still wrapped or masked)."""

    urn: str
    type: str
    id: str | None
    custom: bool
    protect: bool
    retain_on_delete: bool
    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any]
    parent: str | None
    provider: str | None
    dependencies: tuple[str, ...]
    property_dependencies: Mapping[str, tuple[str, ...]]
    deleted_with: str | None
    additional_secret_outputs: tuple[str, ...]


@dataclass(frozen=True)
class PropertyDiff:
    path: str
    kind: str  # add, add-replace, update, update-replace, delete, delete-replace
    input_diff: bool

    @property
    def replaces(self) -> bool:
        return self.kind.endswith("-replace")


@dataclass(frozen=True)
class Step:
    index: int  # position in the document's steps
    op: str
    urn: str
    stack: str
    project: str
    type: str
    name: str
    provider: str | None
    old: State | None
    new: State | None
    diff_reasons: tuple[str, ...]
    replace_reasons: tuple[str, ...]
    detailed_diff: tuple[PropertyDiff, ...] | None  # sorted by path; None when Pulumi sent none


@dataclass(frozen=True)
class Diagnostic:
    urn: str | None
    severity: str  # error, warning, info, info#err, debug
    message: str


@dataclass(frozen=True)
class Preview:
    source: str
    steps: tuple[Step, ...]
    diagnostics: tuple[Diagnostic, ...]
    change_summary: Mapping[str, int]
    config: Mapping[str, str]
    duration_ns: int | None
    maybe_corrupt: bool

    @property
    def stacks(self) -> tuple[str, ...]:
        """Stack names found in the step URNs, sorted."""
        return tuple(sorted({s.stack for s in self.steps}))


def load_preview(path: Path | str, text: str | None = None, *, source: str | None = None):
    """Read a file (or the given text) as a preview document."""
    where = source or str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PreviewError(f"{where}: no such file") from None
        except IsADirectoryError:
            raise PreviewError(f"{where}: is a directory, not a preview JSON file") from None
        except UnicodeDecodeError:
            raise PreviewError(f"{where}: is not UTF-8 text") from None
        except OSError as exc:
            raise PreviewError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    return parse_preview(loads(text, where), source=where)


def loads(text: str, where: str) -> Any:
    if not text.strip():
        raise PreviewError(f"{where}: is empty, expected the JSON of `pulumi preview --json`")

    def no_constant(name: str) -> Any:
        raise PreviewError(f"{where}: contains {name}, which is not JSON a preview can hold")

    try:
        return json.loads(text, parse_constant=no_constant)
    except json.JSONDecodeError as exc:
        raise PreviewError(
            f"{where}: is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None
    except RecursionError:
        raise PreviewError(f"{where}: is nested too deeply to be a preview document") from None


def parse_preview(data: Any, *, source: str = "preview") -> Preview:
    """Check and convert a parsed `pulumi preview --json` document."""
    if not isinstance(data, Mapping):
        raise PreviewError(
            f"{source}: expected a JSON object as `pulumi preview --json` prints, got {_kind(data)}"
        )
    steps_raw = _optional(data, "steps", list, source, "a list")
    steps = tuple(_step(raw, i, source) for i, raw in enumerate(steps_raw or []))
    diags_raw = _optional(data, "diagnostics", list, source, "a list")
    diagnostics = tuple(_diagnostic(raw, i, source) for i, raw in enumerate(diags_raw or []))
    summary_raw = _optional(data, "changeSummary", Mapping, source, "an object") or {}
    summary: dict[str, int] = {}
    for op, count in summary_raw.items():
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise PreviewError(
                f"{source}: changeSummary.{op} must be a count (a whole number >= 0), "
                f"got {_kind(count)}"
            )
        summary[str(op)] = count
    config_raw = _optional(data, "config", Mapping, source, "an object") or {}
    duration = data.get("duration")
    if duration is not None and (not isinstance(duration, int) or isinstance(duration, bool)):
        raise PreviewError(
            f"{source}: duration must be nanoseconds (a number), got {_kind(duration)}"
        )
    return Preview(
        source=source,
        steps=steps,
        diagnostics=diagnostics,
        change_summary=summary,
        config={str(k): mask_secrets(v) for k, v in config_raw.items()},
        duration_ns=duration,
        maybe_corrupt=bool(data.get("maybeCorrupt", False)),
    )


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(
        type(value), "an object" if isinstance(value, Mapping) else type(value).__name__
    )


def _optional(obj: Mapping, key: str, typ: type, where: str, what: str) -> Any:
    value = obj.get(key)
    if value is not None and not isinstance(value, typ):
        raise PreviewError(f"{where}: {key} must be {what}, got {_kind(value)}")
    return value


def _strings(obj: Mapping, key: str, where: str) -> tuple[str, ...]:
    value = _optional(obj, key, list, where, "a list of property names")
    if value is None:
        return ()
    if not all(isinstance(v, str) for v in value):
        raise PreviewError(f"{where}: {key} must be a list of property names (strings)")
    return tuple(value)


def _step(raw: Any, index: int, source: str) -> Step:
    where = f"{source}: steps[{index}]"
    if not isinstance(raw, Mapping):
        raise PreviewError(f"{where} must be an object with op and urn, got {_kind(raw)}")
    op = raw.get("op")
    if not isinstance(op, str) or not op:
        raise PreviewError(f"{where}.op must be a step operation such as create or update")
    urn_text = raw.get("urn")
    urn = Urn.parse(urn_text) if isinstance(urn_text, str) else None
    if urn is None:
        raise PreviewError(
            f"{where}.urn must be a Pulumi URN (urn:pulumi:STACK::PROJECT::TYPE::NAME), "
            f"got {_short(urn_text)}"
        )
    provider = raw.get("provider")
    old = _state(raw.get("oldState"), f"{where}.oldState", urn_text, urn)
    new = _state(raw.get("newState"), f"{where}.newState", urn_text, urn)
    detailed = _optional(raw, "detailedDiff", Mapping, where, "an object")
    diffs = None
    if detailed is not None:
        items = []
        for path, diff in detailed.items():
            if not isinstance(diff, Mapping) or not isinstance(diff.get("kind"), str):
                raise PreviewError(
                    f"{where}.detailedDiff[{json.dumps(path)}] must be an object with a kind "
                    "(add, update, delete, or those with -replace)"
                )
            items.append(PropertyDiff(str(path), diff["kind"], bool(diff.get("inputDiff"))))
        diffs = tuple(sorted(items, key=lambda d: d.path))
    return Step(
        index=index,
        op=op,
        urn=urn_text,
        stack=urn.stack,
        project=urn.project,
        type=urn.type,
        name=urn.name,
        provider=provider if isinstance(provider, str) else None,
        old=old,
        new=new,
        diff_reasons=_strings(raw, "diffReasons", where),
        replace_reasons=_strings(raw, "replaceReasons", where),
        detailed_diff=diffs,
    )


def _short(value: Any) -> str:
    if isinstance(value, str):
        text = json.dumps(value)
        return text if len(text) <= 80 else text[:77] + '..."'
    return _kind(value)


def _state(raw: Any, where: str, urn_text: str, urn: Urn) -> State | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise PreviewError(f"{where} must be a resource state object, got {_kind(raw)}")
    inputs = _optional(raw, "inputs", Mapping, where, "an object") or {}
    outputs = _optional(raw, "outputs", Mapping, where, "an object") or {}
    deps = _optional(raw, "dependencies", list, where, "a list of URNs") or []
    prop_deps_raw = _optional(raw, "propertyDependencies", Mapping, where, "an object") or {}
    prop_deps = {
        str(k): tuple(str(u) for u in v) if isinstance(v, list) else ()
        for k, v in prop_deps_raw.items()
    }
    secret_outputs = _optional(raw, "additionalSecretOutputs", list, where, "a list") or []
    type_ = raw.get("type")
    id_ = raw.get("id")
    return State(
        urn=raw.get("urn") if isinstance(raw.get("urn"), str) else urn_text,
        type=type_ if isinstance(type_, str) and type_ else urn.type,
        id=str(id_)
        if isinstance(id_, (str, int)) and not isinstance(id_, bool) and id_ != ""
        else None,
        custom=bool(raw.get("custom", True)),
        protect=bool(raw.get("protect", False)),
        retain_on_delete=bool(raw.get("retainOnDelete", False)),
        inputs=dict(inputs),
        outputs=dict(outputs),
        parent=raw.get("parent") if isinstance(raw.get("parent"), str) else None,
        provider=raw.get("provider") if isinstance(raw.get("provider"), str) else None,
        dependencies=tuple(str(d) for d in deps),
        property_dependencies=prop_deps,
        deleted_with=raw.get("deletedWith") if isinstance(raw.get("deletedWith"), str) else None,
        additional_secret_outputs=tuple(str(s) for s in secret_outputs),
    )


def _diagnostic(raw: Any, index: int, source: str) -> Diagnostic:
    where = f"{source}: diagnostics[{index}]"
    if not isinstance(raw, Mapping):
        raise PreviewError(f"{where} must be an object with a message, got {_kind(raw)}")
    message = raw.get("message", "")
    prefix = raw.get("prefix", "")
    if not isinstance(message, str) or not isinstance(prefix, str):
        raise PreviewError(f"{where}.message must be a string")
    if prefix and not message.startswith(prefix):
        message = prefix + message
    severity = raw.get("severity") or "info"
    urn = raw.get("urn")
    return Diagnostic(
        urn=urn if isinstance(urn, str) and urn else None,
        severity=str(severity),
        message=message.rstrip(),
    )
