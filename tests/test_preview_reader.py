"""Reading preview inputs (issue 21): refuse what is not a preview, read Pulumi's engine events.

A file that is not a `pulumi preview --json` document (`{}`, a stack export, an update's
events, a versioned document, an empty file, a list, a cut event stream) must never pass as
"no changes": one red line naming what it looks like and what to run, exit 2, nothing written,
with or without --fail-on. The engine events a preview writes (`--event-log FILE`, or `--json`
with PULUMI_ENABLE_STREAMING_JSON_PREVIEW) are built here from the fixture documents in the
shapes of sdk/go/common/apitype/events.go and must give the same report and exit status.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from blueprints.preview.document import PreviewError, load_preview, read_preview
from blueprints.preview.report import build_report

ROOT = Path(__file__).resolve().parent.parent
DOCS = Path(__file__).resolve().parent / "preview_docs"
RUN = "run `pulumi preview --json --stack dev > preview-dev.json` and pass that file"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "blueprints.cli", "preview-report", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "300", "NO_COLOR": "1"},
    )


def red_line(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Engine events in Pulumi's shapes (apitype.EngineEvent, StepEventMetadata, SummaryEvent)


def _state_meta(state: dict | None) -> dict | None:
    """apitype.ResourceV3 (the digest's state) -> apitype.StepEventStateMetadata."""
    if state is None:
        return None
    return {
        "type": state.get("type", ""),
        "urn": state["urn"],
        "custom": state.get("custom", False),
        "id": state.get("id", ""),
        "parent": state.get("parent", ""),
        "protect": state.get("protect", False),
        "retainOnDelete": state.get("retainOnDelete", False),
        "inputs": state.get("inputs", {}),
        "outputs": state.get("outputs", {}),
        "provider": state.get("provider", ""),
    }


def events_of(doc: dict, *, is_preview: bool = True, result: str = "succeeded") -> list[dict]:
    """The engine events `pulumi preview --event-log` writes for the preview `doc` digests."""
    seq = iter(range(1, 100_000))
    out: list[dict] = [
        {"sequence": next(seq), "timestamp": 1700000000, "preludeEvent": {"config": doc["config"]}}
    ]
    for step in doc.get("steps", []):
        detailed = step.get("detailedDiff")
        meta = {
            "op": step["op"],
            "urn": step["urn"],
            "type": step["urn"].split("::")[2].split("$")[-1],
            "old": _state_meta(step.get("oldState")),
            "new": _state_meta(step.get("newState")),
            "keys": step.get("replaceReasons", []),
            "diffs": step.get("diffReasons", []),
            "detailedDiff": None
            if detailed is None
            else {
                k: {"diffKind": v["kind"], "inputDiff": v.get("inputDiff", False)}
                for k, v in detailed.items()
            },
            "logical": True,
            "provider": step.get("provider", ""),
        }
        out.append(
            {"sequence": next(seq), "timestamp": 1700000001, "resourcePreEvent": {"metadata": meta}}
        )
    for d in doc.get("diagnostics", []):
        out.append(
            {
                "sequence": next(seq),
                "timestamp": 1700000002,
                "diagnosticEvent": {
                    "urn": d.get("urn", ""),
                    "message": d["message"],
                    "color": "never",
                    "severity": d["severity"],
                },
            }
        )
    out.append(
        {
            "sequence": next(seq),
            "timestamp": 1700000003,
            "summaryEvent": {
                "maybeCorrupt": False,
                "durationSeconds": 3,
                "resourceChanges": doc.get("changeSummary", {}),
                "PolicyPacks": {},
                "isPreview": is_preview,
                "result": result,
            },
        }
    )
    out.append({"sequence": next(seq), "timestamp": 1700000004, "cancelEvent": {}})
    return out


def ndjson(events: list[dict]) -> str:
    return "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events)


FIXTURES = sorted(p.name for p in DOCS.glob("*.json"))


@pytest.mark.parametrize("name", FIXTURES)
def test_an_event_log_reads_as_the_preview_it_digests(name, tmp_path):
    doc = json.loads((DOCS / name).read_text())
    direct = load_preview(DOCS / name)
    log = tmp_path / "events.jsonl"
    log.write_text(ndjson(events_of(doc)))
    from_log = load_preview(log)
    assert [(s.op, s.urn) for s in from_log.steps] == [(s.op, s.urn) for s in direct.steps]
    assert [s.detailed_diff for s in from_log.steps] == [s.detailed_diff for s in direct.steps]
    assert [s.replace_reasons for s in from_log.steps] == [s.replace_reasons for s in direct.steps]
    assert from_log.change_summary == direct.change_summary
    assert [(d.severity, d.message) for d in from_log.diagnostics] == [
        (d.severity, d.message) for d in direct.diagnostics
    ]
    a = build_report([("s", direct)], prices=False)
    b = build_report([("s", from_log)], prices=False)
    assert [(s.counts, s.errors, s.warnings) for s in a.stacks] == [
        (s.counts, s.errors, s.warnings) for s in b.stacks
    ]
    assert [(d.stack, d.name) for d in a.dangers] == [(d.stack, d.name) for d in b.dangers]
    assert a.data_loss == b.data_loss


@pytest.mark.parametrize("name", ["stateful-hcloud.json", "stateful-aws.json", "stateless.json"])
def test_cli_event_log_gives_the_same_counts_and_exit_status(name, tmp_path):
    doc = json.loads((DOCS / name).read_text())
    log = tmp_path / "events.jsonl"
    log.write_text(ndjson(events_of(doc)))
    direct = run(f"dev={DOCS / name}", "--no-prices", "--fail-on", "data-loss")
    from_log = run(f"dev={log}", "--no-prices", "--fail-on", "data-loss")
    assert direct.returncode == from_log.returncode == (4 if "stateful" in name else 0)
    summary = [line for line in direct.stdout.splitlines() if line.startswith("| `dev`")]
    assert summary and summary == [
        line for line in from_log.stdout.splitlines() if line.startswith("| `dev`")
    ]
    # The stack name comes from the URNs, as for the document.
    assert run(str(log), "--no-prices").returncode == 0


def test_concatenated_pretty_printed_events_and_stdin_are_read(tmp_path):
    doc = json.loads((DOCS / "stateful-hcloud.json").read_text())
    stream = "".join(json.dumps(e, indent=2) for e in events_of(doc))  # no newline between
    res = run("dev=-", "--no-prices", "--fail-on", "data-loss", stdin=stream)
    assert res.returncode == 4, res.stderr
    assert "data loss: dev/shop-data" in res.stderr


def test_a_cloud_events_file_of_a_preview_is_read(tmp_path):
    doc = json.loads((DOCS / "stateful-aws.json").read_text())
    f = tmp_path / "events.json"
    f.write_text(json.dumps({"events": events_of(doc), "continuationToken": None}))
    res = run(f"dev={f}", "--no-prices", "--fail-on", "data-loss")
    assert res.returncode == 4, res.stderr


def test_a_failed_preview_in_events_is_a_failed_preview(tmp_path):
    doc = json.loads((DOCS / "stateless.json").read_text())
    log = tmp_path / "events.jsonl"
    log.write_text(ndjson(events_of(doc, result="failed")))
    preview = load_preview(log)
    assert [d.severity for d in preview.diagnostics] == ["error"]
    res = run(f"dev={log}", "--no-prices", "--fail-on", "data-loss")
    assert res.returncode == 5, res.stderr


def test_colour_directives_and_ephemeral_diagnostics_are_dropped():
    events = [
        {
            "sequence": 1,
            "timestamp": 1,
            "diagnosticEvent": {
                "message": "<{%fg 1%}>boom<{%reset%}>\n",
                "prefix": "<{%fg 1%}>error: <{%reset%}>",
                "color": "always",
                "severity": "error",
            },
        },
        {
            "sequence": 2,
            "timestamp": 1,
            "diagnosticEvent": {"message": "tick", "severity": "info", "ephemeral": True},
        },
        {"sequence": 3, "timestamp": 1, "diagnosticEvent": {"message": "dbg", "severity": "debug"}},
        {
            "sequence": 4,
            "timestamp": 1,
            "summaryEvent": {"resourceChanges": {"same": 1}, "isPreview": True, "result": "failed"},
        },
    ]
    preview = read_preview(ndjson(events), "e.jsonl")
    assert [(d.severity, d.message) for d in preview.diagnostics] == [("error", "error: boom")]


# ---------------------------------------------------------------------------------------------
# What is not a preview is refused, one line, exit 2, nothing written, with or without --fail-on

STACK_EXPORT = {
    "version": 3,
    "deployment": {
        "manifest": {"time": "2026-01-01T00:00:00Z", "magic": "x", "version": "v3.150.0"},
        "secrets_providers": {"type": "passphrase", "state": {"salt": "v1:x"}},
        "resources": [
            {
                "urn": "urn:pulumi:dev::blueprints::pulumi:pulumi:Stack::blueprints-dev",
                "custom": False,
                "type": "pulumi:pulumi:Stack",
            }
        ],
    },
}
UP_EVENTS = {
    "events": events_of(json.loads((DOCS / "stateless.json").read_text()), is_preview=False),
    "continuationToken": None,
}
STATELESS = json.loads((DOCS / "stateless.json").read_text())

REFUSED = [
    ("empty-object", "{}", "is an empty JSON object {}, not a preview"),
    ("stack-export", json.dumps(STACK_EXPORT), "is a stack export (`pulumi stack export`"),
    (
        "checkpoint",
        json.dumps({"version": 3, "checkpoint": {"stack": "dev", "latest": {}}}),
        "is a Pulumi state checkpoint file",
    ),
    (
        "update-events",
        json.dumps(UP_EVENTS),
        "is a Pulumi Cloud events file of an update (`pulumi up`; summaryEvent.isPreview is false)",
    ),
    (
        "events-page",
        json.dumps({"events": UP_EVENTS["events"][:2], "continuationToken": "abc"}),
        "is one page of Pulumi Cloud update events (continuationToken is set)",
    ),
    (
        "events-without-summary",
        json.dumps({"events": UP_EVENTS["events"][:2]}),
        "is a Pulumi Cloud events file but no summaryEvent, so the preview did not finish",
    ),
    (
        "up-event-log",
        ndjson(UP_EVENTS["events"]),
        "holds Pulumi engine events of an update (`pulumi up`",
    ),
    (
        "cut-event-log",
        ndjson(events_of(STATELESS)[:3]),
        "holds Pulumi engine events but no summaryEvent, so the preview did not finish or the "
        "file is cut",
    ),
    (
        "wrong-version",
        json.dumps({"version": 2, **STATELESS}),
        "declares version 2, but `pulumi preview --json` documents have no version field",
    ),
    ("empty-file", "", "is empty, not a preview (did `pulumi preview --json` fail"),
    ("blank-file", "\n  \n", "is empty, not a preview"),
    ("array", "[]", "is a JSON list (empty), expected a JSON object"),
    ("array-of-numbers", "[1, 2]", "is a JSON list (of numbers), expected a JSON object"),
    (
        "other-object",
        json.dumps({"name": "x", "stack": "dev"}),
        "is a JSON object without steps, changeSummary or diagnostics (its keys: name, stack)",
    ),
    (
        "ndjson-broken-line",
        ndjson(events_of(STATELESS))[:-40] + "\n" + ndjson(events_of(STATELESS)[-1:]),
        "is a stream of Pulumi engine events whose line",
    ),
    (
        "two-documents",
        json.dumps(STATELESS) + "\n" + json.dumps(STATELESS),
        "holds 2 JSON values one after another (preview documents), not one preview document "
        "nor a stream of Pulumi engine events; give one `pulumi preview --json` output per file",
    ),
    (
        "document-then-text",
        json.dumps(STATELESS, indent=4) + "\nwarning: something\n",
        "has text after the JSON document at line",
    ),
    ("not-json", "error: no stack selected\n", "is not valid JSON (line 1 column 1"),
]


@pytest.mark.parametrize("fail_on", [False, True])
@pytest.mark.parametrize(("name", "text", "expected"), REFUSED, ids=[r[0] for r in REFUSED])
def test_not_a_preview_is_refused_with_what_to_run(tmp_path, name, text, expected, fail_on):
    f = tmp_path / "in.json"
    f.write_text(text)
    out = tmp_path / "report.md"
    args = [f"dev={f}", "--output", str(out), "--no-prices"]
    res = run(*args, *(["--fail-on", "data-loss"] if fail_on else []))
    assert res.returncode == 2, res.stdout + res.stderr
    line = red_line(res)
    assert expected in line, line
    assert line.endswith(RUN) or name == "two-documents", line
    assert res.stdout == "" and not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in.json"]


@pytest.mark.parametrize(("name", "text", "expected"), REFUSED, ids=[r[0] for r in REFUSED])
def test_the_reader_refuses_in_one_sentence(name, text, expected):
    with pytest.raises(PreviewError) as exc:
        read_preview(text, "in.json")
    msg = str(exc.value)
    assert msg.startswith("in.json: ") and expected in msg and "\n" not in msg


def test_one_unreadable_input_among_good_ones_fails_the_gate(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    out = tmp_path / "r.md"
    res = run(
        f"prod={DOCS / 'stateless.json'}", f"dev={bad}", "--fail-on", "data-loss", "-o", str(out)
    )
    assert res.returncode == 2 and not out.exists()
    assert "dev" in red_line(res)


def test_unnamed_file_without_steps_suggestion_is_not_offered_for_a_non_preview(tmp_path):
    f = tmp_path / "x.json"
    f.write_text("{}")
    line = red_line(run(str(f)))
    assert "pass it as STACK=" not in line
    assert line.endswith(
        "run `pulumi preview --json --stack STACK > preview-STACK.json` and pass that file"
    )
    # A real preview without steps still gets the suggestion.
    f.write_text(json.dumps({"changeSummary": {"same": 3}, "duration": 1}))
    assert "has no steps to read the stack name from" in red_line(run(str(f)))


def test_utf16_from_powershell_and_a_byte_order_mark_are_read(tmp_path):
    text = (DOCS / "stateless.json").read_text()
    f = tmp_path / "p.json"
    f.write_bytes(text.encode("utf-16"))
    assert load_preview(f).change_summary == load_preview(DOCS / "stateless.json").change_summary
    f.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load_preview(f).change_summary == load_preview(DOCS / "stateless.json").change_summary
