"""The gate on engine event streams recorded by Pulumi's own tests (tests/preview_docs/
pulumi-engine, sources in its README): each is read, counted, judged and exits as a reviewer
needs, and a real replace step retyped as a stateful type of another provider is data loss."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from blueprints.preview.document import load_preview
from blueprints.preview.report import build_report

ROOT = Path(__file__).resolve().parent.parent
REAL = Path(__file__).resolve().parent / "preview_docs" / "pulumi-engine"

# file -> (steps by op, resources for review, data loss, diagnostics by severity)
EXPECTED = {
    "destroy-with-components.ndjson": ({"same": 1, "delete": 2}, ["mychild"], False, {}),
    "failed-stacks-dont-rewrite-operations.ndjson": (
        {"same": 1, "update": 1, "delete-replaced": 1},
        ["test-r"],
        False,
        {},
    ),
    "missing-read-preview.ndjson": ({"read": 1}, [], False, {"error": 2}),
    "stack-output-resource-diff.ndjson": ({"same": 3}, [], False, {}),
    "up-3.ndjson": ({"create": 6}, [], False, {}),
    "up-4.ndjson": ({"same": 5, "update": 1}, [], False, {}),
    "webserver-userdata.ndjson": (
        {"same": 2, "create-replacement": 1, "replace": 1, "delete-replaced": 1},
        [],
        False,
        {},
    ),
}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "blueprints.cli", "preview-report", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "300", "NO_COLOR": "1"},
    )


def test_every_recorded_stream_is_a_case():
    assert sorted(p.name for p in REAL.glob("*.ndjson")) == sorted(EXPECTED)
    readme = (REAL / "README.md").read_text()
    assert all(name in readme for name in EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_recorded_stream_is_read_counted_and_judged(name):
    ops, review, loss, diagnostics = EXPECTED[name]
    preview = load_preview(REAL / name)
    counted: dict[str, int] = {}
    for step in preview.steps:
        counted[step.op] = counted.get(step.op, 0) + 1
    assert counted == ops
    severities: dict[str, int] = {}
    for d in preview.diagnostics:
        severities[d.severity] = severities.get(d.severity, 0) + 1
    assert severities == diagnostics
    report = build_report([("dev", preview)], prices=False)
    assert [d.name for d in report.reviews] == review
    assert report.data_loss is loss


def test_exit_codes_on_recorded_streams():
    stream = REAL / "destroy-with-components.ndjson"
    assert run(f"dev={stream}", "--no-prices", "--fail-on", "data-loss").returncode == 0
    # the deleted resource of a type the table does not know is up for review
    res = run(f"dev={stream}", "--no-prices", "--fail-on", "review")
    assert res.returncode == 6 and "dev/mychild" in res.stderr
    # a preview that reported errors: what it did not reach is unknown
    failed = REAL / "missing-read-preview.ndjson"
    assert run(f"dev={failed}", "--no-prices", "--fail-on", "data-loss").returncode == 5


def test_secret_values_of_a_recorded_stream_are_not_shown():
    text = (REAL / "failed-stacks-dont-rewrite-operations.ndjson").read_text()
    assert "4dabf18193072939515e22adb298388d" in text  # the stream holds secret values
    markdown = build_report(
        [("dev", load_preview(REAL / "failed-stacks-dont-rewrite-operations.ndjson"))],
        prices=False,
    ).markdown
    assert "4dabf18193072939515e22adb298388d" not in markdown
    assert "1b47061264138c4ac30d75fd1eb44270" not in markdown


@pytest.mark.parametrize(
    "type_",
    [
        "aws:rds/instance:Instance",
        "aws:dynamodb/table:Table",
        "gcp:sql/databaseInstance:DatabaseInstance",
        "kubernetes:core/v1:PersistentVolumeClaim",
        "digitalocean:index/volume:Volume",
    ],
)
def test_the_real_replace_retyped_as_a_stateful_type_is_data_loss(tmp_path, type_):
    """The EC2 instance replace of webserver-userdata, as the issue retyped it."""
    lines = (REAL / "webserver-userdata.ndjson").read_text().splitlines()
    retyped = [line.replace("aws:ec2/instance:Instance", type_) for line in lines]
    stream = tmp_path / "retyped.ndjson"
    stream.write_text("\n".join(retyped) + "\n")
    assert any(json.loads(line).get("resourcePreEvent") for line in retyped)
    res = run(f"dev={stream}", "--no-prices", "--fail-on", "data-loss")
    assert res.returncode == 4, res.stdout + res.stderr
    assert "Data loss" in res.stdout
