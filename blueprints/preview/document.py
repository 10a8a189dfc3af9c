"""Read one `pulumi preview --json` document into a typed model.

The shape is Pulumi's PreviewDigest (pkg/backend/display/json.go, sdk/go/common/display/json.go):
``{config, steps[], diagnostics[], duration, changeSummary, maybeCorrupt}``; each step is
``{op, urn, provider, oldState, newState, diffReasons, replaceReasons, detailedDiff}`` and each
state a serialized resource (``{urn, custom, id, type, inputs, outputs, protect, ...}``).
Unknown keys are ignored (newer Pulumi versions add some); an unknown op is kept as it is.
Anything that is not that shape raises PreviewError with one sentence naming where. The same
preview as Pulumi's engine events (an event log, streaming JSON, a Pulumi Cloud events file) is
converted to the same model (read_preview, parse_events); anything else that is not a preview
(`{}`, a stack export, a versioned document, an update's events) is refused, never read as a
preview without changes.
"""

from __future__ import annotations

import json
import re
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


RUN_PREVIEW = "run `pulumi preview --json --stack STACK > preview-STACK.json` and pass that file"

# The fields of a PreviewDigest; a document must have one of the first three to be a preview
# (Pulumi always writes changeSummary, as the root stack resource is always counted).
PREVIEW_MARKS = ("steps", "changeSummary", "diagnostics")
PREVIEW_KEYS = (*PREVIEW_MARKS, "config", "duration", "maybeCorrupt")

# The payload keys of an apitype.EngineEvent (sdk/go/common/apitype/events.go): exactly one is set.
EVENT_KEYS = (
    "cancelEvent",
    "stdoutEvent",
    "diagnosticEvent",
    "preludeEvent",
    "summaryEvent",
    "resourcePreEvent",
    "resOutputsEvent",
    "resOpFailedEvent",
    "policyEvent",
    "policyRemediationEvent",
    "policyLoadEvent",
    "policyAnalyzeSummaryEvent",
    "policyRemediateSummaryEvent",
    "policyAnalyzeStackSummaryEvent",
    "startDebuggingEvent",
    "progressEvent",
    "errorEvent",
)
_COLOR_DIRECTIVE = re.compile(r"<\{%[^%]*%\}>")
_ANSI = re.compile(r"\x1b\[[0-9;]*[mK]")


def load_preview(path: Path | str, text: str | None = None, *, source: str | None = None):
    """Read a file (or the given text) as a preview: see read_preview for the accepted forms."""
    where = source or str(path)
    if text is None:
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            raise PreviewError(f"{where}: no such file") from None
        except IsADirectoryError:
            raise PreviewError(f"{where}: is a directory, not a preview JSON file") from None
        except OSError as exc:
            raise PreviewError(f"{where}: cannot be read ({exc.strerror or exc})") from None
        text = _decode(raw, where)
    return read_preview(text, where)


def _decode(raw: bytes, where: str) -> str:
    try:
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            # PowerShell 5's `>` writes UTF-16 with a byte order mark.
            return raw.decode("utf-16")
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PreviewError(f"{where}: is not UTF-8 text") from None


def read_preview(text: str, where: str) -> Preview:
    """The text of `pulumi preview --json` in any form Pulumi writes it, as one Preview.

    Accepted: the PreviewDigest document `pulumi preview --json` prints; Pulumi engine events one
    JSON object per line (`pulumi preview --event-log FILE`, or `pulumi preview --json` with
    PULUMI_ENABLE_STREAMING_JSON_PREVIEW=true), or concatenated; a list of engine events; a Pulumi
    Cloud events response (`{"events": [...]}`) of a preview. Anything else (a stack export, an
    update's events, `{}`, a versioned document) raises PreviewError saying what it looks like
    and what to run instead.
    """
    values = _values(text.lstrip("\ufeff"), where)
    if len(values) > 1:
        if all(_is_event(v) for _, v in values):
            return parse_events(values, source=where)
        kinds = sorted({_looks_like(v) for _, v in values})
        raise PreviewError(
            f"{where}: holds {len(values)} JSON values one after another ({', '.join(kinds)}), "
            "not one preview document nor a stream of Pulumi engine events; give one "
            "`pulumi preview --json` output per file"
        )
    line, data = values[0]
    if isinstance(data, list):
        if data and all(_is_event(v) for v in data):
            return parse_events([(line, v) for v in data], source=where)
        raise PreviewError(
            f"{where}: is a JSON list ({f'of {_looks_like(data[0])}' if data else 'empty'}), "
            f"expected a JSON object as `pulumi preview --json` prints; {RUN_PREVIEW}"
        )
    if isinstance(data, Mapping) and "events" in data and not _has_preview_marks(data):
        return _cloud_events(data, where)
    if _is_event(data):
        return parse_events(values, source=where)
    return parse_preview(data, source=where)


def loads(text: str, where: str) -> Any:
    """One JSON value (the whole text); PreviewError with the position when it is not."""
    values = _values(text, where)
    if len(values) > 1:
        raise PreviewError(
            f"{where}: holds {len(values)} JSON values one after another, expected one "
            "`pulumi preview --json` document"
        )
    return values[0][1]


def _values(text: str, where: str) -> list[tuple[int, Any]]:
    """Every JSON value in the text, one after another (whitespace between): [(line, value)]."""
    if not text.strip():
        raise PreviewError(
            f"{where}: is empty, not a preview (did `pulumi preview --json` fail before "
            f"printing?); {RUN_PREVIEW}"
        )

    def no_constant(name: str) -> Any:
        raise PreviewError(f"{where}: contains {name}, which is not JSON a preview can hold")

    decoder = json.JSONDecoder(parse_constant=no_constant)
    values: list[tuple[int, Any]] = []
    pos = 0
    end = len(text)
    while True:
        while pos < end and text[pos] in " \t\r\n":
            pos += 1
        if pos >= end:
            return values
        try:
            value, pos_next = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            if not values:
                raise PreviewError(
                    f"{where}: is not valid JSON (line {exc.lineno} column {exc.colno}: "
                    f"{exc.msg}); {RUN_PREVIEW}"
                ) from None
            first = values[0][1]
            if _is_event(first):
                raise PreviewError(
                    f"{where}: is a stream of Pulumi engine events whose line {exc.lineno} is "
                    f"not valid JSON (column {exc.colno}: {exc.msg}), so the file is cut or "
                    f"corrupt; write it again, or {RUN_PREVIEW}"
                ) from None
            raise PreviewError(
                f"{where}: has text after the JSON document at line {exc.lineno} column "
                f"{exc.colno} that is not JSON ({exc.msg}), so something else wrote to the file "
                f"too (only the JSON goes to stdout); {RUN_PREVIEW}"
            ) from None
        except RecursionError:
            raise PreviewError(f"{where}: is nested too deeply to be a preview document") from None
        values.append((text.count("\n", 0, pos) + 1, value))
        pos = pos_next


def _is_event(value: Any) -> bool:
    """An apitype.EngineEvent: sequence/timestamp and an event payload."""
    if not isinstance(value, Mapping):
        return False
    return any(k in value for k in EVENT_KEYS) or ("sequence" in value and "timestamp" in value)


def _has_preview_marks(data: Mapping) -> bool:
    return any(data.get(k) is not None for k in PREVIEW_MARKS)


def _looks_like(value: Any) -> str:
    if _is_event(value):
        return "Pulumi engine events"
    if isinstance(value, Mapping):
        if _has_preview_marks(value):
            return "preview documents"
        return "objects with keys " + ", ".join(sorted(str(k) for k in value)[:5])
    return {"a list": "lists", "a string": "strings", "a number": "numbers"}.get(
        _kind(value), "other values"
    )


def _refuse_other_object(data: Mapping, source: str) -> None:
    """PreviewError for an object that is not a PreviewDigest, naming what it looks like."""
    if not data:
        raise PreviewError(
            f"{source}: is an empty JSON object {{}}, not a preview (a failed or interrupted "
            f"command may have written it); {RUN_PREVIEW}"
        )
    if "deployment" in data or "checkpoint" in data:
        what = (
            "a stack export (`pulumi stack export`: version and deployment with the stack's "
            "current resources)"
            if "deployment" in data
            else "a Pulumi state checkpoint file (version and checkpoint)"
        )
        raise PreviewError(f"{source}: is {what}, which holds no planned changes; {RUN_PREVIEW}")
    if "version" in data:
        raise PreviewError(
            f"{source}: declares version {json.dumps(data['version'])[:40]}, but `pulumi "
            "preview --json` documents have no version field, so this is not a preview this "
            f"blueprints can read; {RUN_PREVIEW}"
        )
    if not _has_preview_marks(data):
        keys = ", ".join(sorted(str(k) for k in data)[:6])
        raise PreviewError(
            f"{source}: is a JSON object without steps, changeSummary or diagnostics (its keys: "
            f"{keys}), so not a `pulumi preview --json` document; {RUN_PREVIEW}"
        )


def _cloud_events(data: Mapping, where: str) -> Preview:
    events = data.get("events")
    if not isinstance(events, list):
        raise PreviewError(
            f"{where}: has events that are {_kind(events)}, not a list of Pulumi engine events; "
            f"{RUN_PREVIEW}"
        )
    if data.get("continuationToken"):
        raise PreviewError(
            f"{where}: is one page of Pulumi Cloud update events (continuationToken is set), so "
            f"events may be missing; fetch every page into one file, or {RUN_PREVIEW}"
        )
    return parse_events([(1, e) for e in events], source=where, cloud=True)


def parse_events(values: Any, *, source: str = "events", cloud: bool = False) -> Preview:
    """Pulumi engine events of one preview ([(line, event)]) as the Preview its digest would be.

    This is what `pulumi preview --json` does (pkg/backend/display/json.go ShowPreviewDigest),
    keeping every step (unchanged and replacement ones too): steps from resourcePreEvent
    metadata, diagnostics from diagnosticEvent and stdoutEvent, changeSummary, duration and
    maybeCorrupt from summaryEvent, config from preludeEvent. An update's events, or events
    that end before the summaryEvent, are refused.
    """
    what = "is a Pulumi Cloud events file" if cloud else "holds Pulumi engine events"
    steps: list[Step] = []
    diagnostics: list[Diagnostic] = []
    config: Mapping[str, Any] = {}
    summary: Mapping[str, Any] | None = None
    pre_ops: dict[str, str] = {}
    for n, (line, event) in enumerate(values):
        where = f"{source}: line {line}" if not cloud else f"{source}: events[{n}]"
        if not isinstance(event, Mapping):
            raise PreviewError(f"{where} must be an engine event object, got {_kind(event)}")
        if "cancelEvent" in event:
            break
        if isinstance(event.get("preludeEvent"), Mapping):
            cfg = event["preludeEvent"].get("config")
            config = cfg if isinstance(cfg, Mapping) else {}
        elif isinstance(event.get("resourcePreEvent"), Mapping):
            raw = _event_step(event["resourcePreEvent"], f"{where} resourcePreEvent")
            step = _step(raw, len(steps), source, where=f"{where} resourcePreEvent.metadata")
            pre_ops[step.urn] = step.op
            steps.append(step)
        elif isinstance(event.get("resOutputsEvent"), Mapping):
            # A refresh's outcome arrives with the outputs; the digest swaps it in likewise.
            raw = _event_step(event["resOutputsEvent"], f"{where} resOutputsEvent")
            urn = raw.get("urn")
            op = raw.get("op")
            if pre_ops.get(urn) == "refresh" and (
                (op == "update" and raw.get("detailedDiff") is not None) or op == "delete"
            ):
                for i, old in enumerate(steps):
                    if old.urn == urn:
                        steps[i] = _step(raw, i, source, where=f"{where} resOutputsEvent.metadata")
        elif isinstance(event.get("diagnosticEvent"), Mapping):
            d = event["diagnosticEvent"]
            if d.get("ephemeral") or d.get("severity") == "debug":
                continue
            diagnostics.append(_diagnostic(_clean_colors(d), len(diagnostics), source))
        elif isinstance(event.get("stdoutEvent"), Mapping):
            d = _clean_colors(event["stdoutEvent"])
            diagnostics.append(_diagnostic({**d, "severity": "info"}, len(diagnostics), source))
        elif isinstance(event.get("summaryEvent"), Mapping):
            summary = event["summaryEvent"]
        elif not _is_event(event):
            raise PreviewError(
                f"{where} is not a Pulumi engine event (no sequence, timestamp or event payload); "
                f"{RUN_PREVIEW}"
            )
    if summary is None:
        raise PreviewError(
            f"{source}: {what} but no summaryEvent, so the preview did not finish or the "
            f"file is cut; run the preview again to the end, or {RUN_PREVIEW}"
        )
    if summary.get("isPreview") is False:
        raise PreviewError(
            f"{source}: {what} of an update (`pulumi up`; summaryEvent.isPreview is false), "
            f"which already changed the stack, not of a preview; {RUN_PREVIEW}"
        )
    result = summary.get("result")
    if result not in (None, "succeeded") and not any(d.severity == "error" for d in diagnostics):
        # A failed or cancelled preview did not reach everything: the report must say so.
        diagnostics.append(
            Diagnostic(urn=None, severity="error", message=f"the preview ended: {result}")
        )
    seconds = summary.get("durationSeconds")
    digest = {
        "config": config,
        "changeSummary": summary.get("resourceChanges") or {},
        "duration": seconds * 1_000_000_000
        if isinstance(seconds, int) and not isinstance(seconds, bool)
        else None,
    }
    base = parse_preview(digest, source=source, require_marks=False)
    return Preview(
        source=source,
        steps=tuple(steps),
        diagnostics=tuple(diagnostics),
        change_summary=base.change_summary,
        config=base.config,
        duration_ns=base.duration_ns,
        maybe_corrupt=bool(summary.get("maybeCorrupt", False)),
    )


def _clean_colors(event: Mapping) -> dict:
    """Pulumi's colour directives (<{%fg 1%}>) and ANSI codes out of a message and its prefix."""
    out = dict(event)
    for key in ("message", "prefix"):
        if isinstance(out.get(key), str):
            out[key] = _ANSI.sub("", _COLOR_DIRECTIVE.sub("", out[key]))
    return out


def _event_step(payload: Mapping, where: str) -> dict:
    """apitype.StepEventMetadata -> the PreviewStep shape _step reads."""
    meta = payload.get("metadata")
    if not isinstance(meta, Mapping):
        raise PreviewError(f"{where}.metadata must be an object with op and urn")
    step: dict[str, Any] = {
        "op": meta.get("op"),
        "urn": meta.get("urn"),
        "provider": meta.get("provider") or None,
        "diffReasons": meta.get("diffs"),
        "replaceReasons": meta.get("keys"),
    }
    for key, state_key in (("old", "oldState"), ("new", "newState")):
        state = meta.get(key)
        if isinstance(state, Mapping):
            state = {k: v for k, v in state.items() if v != ""}  # "" is Go's unset id/parent
            # StepEventStateMetadata writes custom with omitempty: absent is a component
            state.setdefault("custom", False)
        step[state_key] = state
    detailed = meta.get("detailedDiff")
    if isinstance(detailed, Mapping):
        detailed = {
            path: {"kind": d.get("diffKind", d.get("kind")), "inputDiff": d.get("inputDiff")}
            if isinstance(d, Mapping)
            else d
            for path, d in detailed.items()
        }
    step["detailedDiff"] = detailed
    return step


def parse_preview(data: Any, *, source: str = "preview", require_marks: bool = True) -> Preview:
    """Check and convert a parsed `pulumi preview --json` document.

    An object that is not one (`{}`, a stack export, a versioned document, ...) is refused,
    naming what it looks like: it must never read as a preview without changes.
    """
    if not isinstance(data, Mapping):
        raise PreviewError(
            f"{source}: expected a JSON object as `pulumi preview --json` prints, got "
            f"{_kind(data)}; {RUN_PREVIEW}"
        )
    if require_marks:
        _refuse_other_object(data, source)
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


def _step(raw: Any, index: int, source: str, where: str | None = None) -> Step:
    where = where or f"{source}: steps[{index}]"
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
