"""The release channel in previews: a release Command's stdin shown as what the app changes.

Preview documents here are in the shape `pulumi preview --json` prints, with the release
documents built by blueprints.release.bundle (the producer the program uses), so the report
reads exactly what a real preview of a release carries in the step's old and new inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt

from blueprints.preview.offline import REPLACE_ON_CHANGE, build_document
from blueprints.preview.report import build_report, release_diff
from blueprints.release.bundle import ServiceRelease, parse_release, release_document

ROOT = Path(__file__).resolve().parent.parent
STACK = "single-vm-hcloud"
CMD = "command:remote:Command"
VOL = "hcloud:index/volume:Volume"
KEY = "test-deploy-key"
SECRET = "SUPER-SECRET-hunter2-XYZ"
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
MD = MarkdownIt("commonmark", {"html": True}).enable("table")

UNIT = """[Unit]
Description=web replica %i

[Service]
Environment=DATABASE_HOST=postgres
ExecStart=/usr/local/lib/blueprints/app/run-web %i {image}
Restart=always
"""


def release(
    *,
    image: str = "ghcr.io/example/shop-web:1.4.2",
    replicas: int = 2,
    env: str = "postgres",
    worker: bool = True,
    secrets: str | None = "fedcba9876543210",
    extra_files: dict[str, str] | None = None,
) -> str:
    """A release document of a small app: web (stateless), optionally worker, postgres."""
    services = [
        ServiceRelease("postgres", "postgres:16.4", 1, "restart", "0000000000000001", None),
        ServiceRelease("web", image, replicas, "surge", f"{hash((image, env)) & 0xFFFF:016x}", 70),
    ]
    files = {
        "/etc/systemd/system/app-web@.service": UNIT.format(image=image).replace("postgres", env),
        "/etc/systemd/system/app-postgres@.service": "[Service]\nExecStart=/bin/true\n",
    }
    if worker:
        services.append(
            ServiceRelease("worker", "ghcr.io/example/shop-worker:1.4.2", 1, "surge", "02", None)
        )
        files["/etc/systemd/system/app-worker@.service"] = "[Service]\nExecStart=/bin/w\n"
    files.update(extra_files or {})
    return release_document(
        KEY,
        rung="single-vm",
        app="shop",
        services=services,
        files=files,
        modes={path: "0644" for path in files},
        volumes=["pgdata"],
        units=[],
        secrets=secrets,
    )


def urn(type_: str, name: str, stack: str = STACK) -> str:
    return f"urn:pulumi:{stack}::shop::pulumi:pulumi:Stack${type_}::{name}"


def state(type_: str, name: str, inputs: dict, **extra) -> dict:
    return {"urn": urn(type_, name), "custom": True, "type": type_, "inputs": inputs, **extra}


def command_inputs(stdin: Any) -> dict:
    run = "cloud-init status --wait >/dev/null 2>&1; sudo /usr/local/lib/blueprints/release-agent"
    return {
        "connection": "[secret]",
        "create": f"{run} deploy",
        "update": f"{run} deploy",
        "stdin": stdin,
    }


def release_step(old: Any, new: Any, name: str = "shop-single-vm-hcloud-release") -> dict:
    step: dict[str, Any] = {"op": "update", "urn": urn(CMD, name)}
    if old is not None:
        step["oldState"] = state(CMD, name, command_inputs(old), id="cmd-1")
    else:
        step["op"] = "create"
    step["newState"] = state(CMD, name, command_inputs(new), id="cmd-1")
    if old is not None:
        step["diffReasons"] = ["stdin"]
        step["detailedDiff"] = {"stdin": {"kind": "update", "inputDiff": True}}
    return step


def secrets_step() -> dict:
    name = "shop-single-vm-hcloud-release-secrets"
    return {
        "op": "update",
        "urn": urn(CMD, name),
        "oldState": state(CMD, name, command_inputs("[secret]"), id="cmd-0"),
        "newState": state(CMD, name, command_inputs("[secret]"), id="cmd-0"),
        "diffReasons": ["stdin"],
        "detailedDiff": {"stdin": {"kind": "update", "inputDiff": True}},
    }


def volume_replace_step() -> dict:
    name = "shop-single-vm-hcloud-data"
    old = state(VOL, name, {"location": "fsn1", "size": 21}, id="v1", protect=True)
    new = state(VOL, name, {"location": "nbg1", "size": 21}, protect=True)
    return {
        "op": "replace",
        "urn": urn(VOL, name),
        "oldState": old,
        "newState": new,
        "replaceReasons": ["location"],
        "detailedDiff": {"location": {"kind": "update-replace", "inputDiff": True}},
    }


def document(*steps: dict) -> dict:
    summary: dict[str, int] = {}
    for s in steps:
        summary[s["op"]] = summary.get(s["op"], 0) + 1
    return {"config": {}, "steps": list(steps), "diagnostics": [], "changeSummary": summary}


def report(*steps: dict, **kw):
    return build_report([(STACK, document(*steps))], prices=False, **kw)


def run_cli(tmp_path: Path, doc: dict, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / f"preview-{STACK}.json"
    path.write_text(json.dumps(doc))
    return subprocess.run(
        [sys.executable, "-m", "blueprints.cli", "preview-report", str(path), "--no-prices", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "NO_COLOR": "1"},
    )


def fences(markdown: str, info: str | None = None) -> list[str]:
    """The fenced code blocks GitLab would render, including those inside <details>."""
    blocks = []
    for token in MD.parse(markdown):
        if token.type == "fence" and (info is None or token.info == info):
            blocks.append(token.content)
    return blocks


# ---------------------------------------------------------------------------------------------
# The report


def test_image_bump_is_a_release_diff_without_data_loss(tmp_path):
    old, new = release(), release(image="ghcr.io/example/shop-web:1.4.3")
    doc = document(release_step(old, new), secrets_step())
    rep = build_report([(STACK, doc)], prices=False)
    md = rep.markdown
    assert not rep.data_loss and "Data loss" not in md
    assert "No stateful resource" in md
    assert "web: image ghcr.io/example/shop-web:1.4.2 -> 1.4.3" in md
    # Only web changed: no line for the others, no secrets line (same digest).
    summaries = [b for b in fences(md) if "web: image" in b]
    assert summaries and all(
        b.strip().splitlines() == [b.strip().splitlines()[0]] for b in summaries
    )
    assert "secrets changed" not in md and "postgres:" not in md and "worker:" not in md
    # The unit file's line diff, as a diff block.
    [diff] = fences(md, "diff")
    assert "--- /etc/systemd/system/app-web@.service" in diff
    assert (
        "-ExecStart=/usr/local/lib/blueprints/app/run-web %i ghcr.io/example/shop-web:1.4.2" in diff
    )
    assert (
        "+ExecStart=/usr/local/lib/blueprints/app/run-web %i ghcr.io/example/shop-web:1.4.3" in diff
    )
    # The old and new release ids; the stdin itself is not dumped as a JSON string.
    old_id, new_id = parse_release(old)["release"], parse_release(new)["release"]
    assert f"`{old_id}` → `{new_id}`" in md
    assert "format: blueprints-release/1" not in md
    # The summary is also outside the collapsed block, in the stack's head.
    head = md.split("<details>")[0]
    assert "Release `shop-single-vm-hcloud-release` (update)" in head
    assert "web: image ghcr.io/example/shop-web:1.4.2 -> 1.4.3" in head
    # The secrets Command stays masked.
    assert "`stdin` (changed): [secret]" in md

    res = run_cli(tmp_path, doc, "--fail-on", "data-loss")
    assert res.returncode == 0, res.stderr
    assert res.stdout == md


def test_a_volume_replaced_beside_a_release_still_fails_the_gate(tmp_path):
    doc = document(
        release_step(release(), release(image="ghcr.io/example/shop-web:1.4.3")),
        volume_replace_step(),
    )
    rep = build_report([(STACK, doc)], prices=False)
    assert rep.data_loss
    assert [d.name for d in rep.dangers] == ["shop-single-vm-hcloud-data"]
    assert "Data loss: 1 stateful resource" in rep.markdown
    assert "web: image ghcr.io/example/shop-web:1.4.2 -> 1.4.3" in rep.markdown
    res = run_cli(tmp_path, doc, "--fail-on", "data-loss")
    assert res.returncode == 4
    assert "data loss: single-vm-hcloud/shop-single-vm-hcloud-data" in res.stderr


def test_replicas_env_services_and_secrets():
    old = release()
    rd = release_diff(parse_release(old), parse_release(release(replicas=3)))
    assert rd.lines == ("web: replicas 2 -> 3",)
    assert rd.files == ()  # replicas are not in the unit template

    rd = release_diff(parse_release(old), parse_release(release(env="db")))
    assert rd.lines == (
        "web: container definition changed (env, secret values, command, volumes, ports, "
        "health or limits)",
    )
    assert [f.path for f in rd.files] == ["/etc/systemd/system/app-web@.service"]
    assert "+Environment=DATABASE_HOST=db" in rd.files[0].diff

    rd = release_diff(parse_release(old), parse_release(release(worker=False, secrets="ab" * 8)))
    assert rd.lines == ("worker: removed", "secrets changed")
    assert [(f.path, f.kind, f.diff) for f in rd.files] == [
        ("/etc/systemd/system/app-worker@.service", "removed", None)
    ]

    keys = "/etc/blueprints/admin-keys/deploy"
    rd = release_diff(
        parse_release(release(extra_files={keys: "ssh-ed25519 AAA ops\n"})),
        parse_release(release(extra_files={keys: "ssh-ed25519 AAA ops\nssh-ed25519 BBB dev\n"})),
    )
    assert rd.lines == ()
    [keys_file] = rd.files
    assert keys_file.path == keys and "+ssh-ed25519 BBB dev" in keys_file.diff
    md = report(release_step(release(), release(extra_files={keys: "k\n"}))).markdown
    assert "no service, secret, volume or unit changed; 1 file changed" in md

    rd = release_diff(parse_release(release(worker=False)), parse_release(old))
    assert rd.lines == ("worker: added (ghcr.io/example/shop-worker:1.4.2, 1 replica)",)
    [added] = rd.files
    assert added.kind == "added" and "+ExecStart=/bin/w" in added.diff


def test_first_release_lists_the_services():
    rep = report(release_step(None, release()))
    assert "(the first one this resource delivers)" in rep.markdown
    for line in (
        "postgres: added (postgres:16.4, 1 replica)",
        "web: added (ghcr.io/example/shop-web:1.4.2, 2 replicas)",
    ):
        assert line in rep.markdown


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("hello\nworld\n", "hello\nthere\n"),  # neither side a release
        (None, "format: blueprints-release/1\nrelease: nope\n"),  # a wrong id, created
        ("{not: [yaml", "\x00\x01 binary"),
    ],
)
def test_garbage_stdin_falls_back_to_the_generic_rendering(old, new):
    rep = report(release_step(old, new))
    md = rep.markdown
    assert "what changes" not in md and "release `" not in md
    assert "`stdin`" in md  # the property is still listed, as Pulumi reported it
    assert not rep.data_loss


def test_one_readable_side_is_not_enough():
    old = release()
    tampered = release(image="ghcr.io/example/shop-web:1.4.3").replace("1.4.3", "6.6.6")
    for new, why in (
        (tampered, "the new stdin is not shown as a release: the release document's id does not"),
        (UNKNOWN, "the new stdin is not shown as a release: it is known only after apply"),
        ("[secret]", "the new stdin is not shown as a release: it is secret"),
        ("just text", "the new stdin is not shown as a release: the release document is not a"),
    ):
        md = report(release_step(old, new)).markdown
        assert why in md, new
        assert "what changes" not in md
        assert "`stdin` (changed)" in md  # generic: a change is shown, never "no changes"
        assert "No resource changes" not in md


def test_yaml_alias_bomb_is_refused_quickly():
    bomb = "format: blueprints-release/1\na: &a [x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 12):
        bomb += f"{chr(97 + i)}: &{chr(97 + i)} [*{chr(96 + i)}, *{chr(96 + i)}, *{chr(96 + i)}]\n"
    start = time.monotonic()
    md = report(release_step(release(), bomb)).markdown
    assert time.monotonic() - start < 5
    assert "it uses YAML aliases" in md


def test_a_secrets_document_in_plain_stdin_is_never_shown():
    leaked = (
        "digest: fedcba9876543210\nfiles:\n  /etc/blueprints/secrets/web.env:\n"
        f"    mode: '0600'\n    text: DATABASE_PASSWORD={SECRET}\nformat: blueprints-secrets/1\n"
    )
    for old, new in ((leaked, leaked.replace("XYZ", "ABC")), (None, leaked)):
        md = report(release_step(old, new, name="shop-single-vm-hcloud-release-secrets")).markdown
        assert SECRET[:12] not in md
        assert "holds a secrets document: not shown" in md


def test_release_diff_is_trimmed_to_the_budget_but_keeps_its_summary():
    big = {f"/usr/local/lib/blueprints/app/file-{i}": f"line {i}\n" * 200 for i in range(30)}
    changed = {path: text.replace("line", "LINE") for path, text in big.items()}
    old = release(extra_files=big)
    new = release(image="ghcr.io/example/shop-web:1.4.3", extra_files=changed)
    full = report(release_step(old, new))
    assert full.trimmed_values == 0
    for diff in fences(full.markdown, "diff"):
        assert len(diff.splitlines()) <= 121  # DIFF_LINES and the "more diff lines" line
    small = report(release_step(old, new), limit=6000)
    assert len(small.markdown) <= 6000
    assert small.trimmed_values + small.trimmed_resources == 1
    # The summary is in the stack's head, which is never trimmed.
    assert "web: image ghcr.io/example/shop-web:1.4.2 -> 1.4.3" in small.markdown


def test_same_documents_same_bytes():
    doc = document(release_step(release(), release(image="ghcr.io/example/shop-web:1.4.3")))
    first = build_report([(STACK, doc)], prices=False).markdown
    assert build_report([(STACK, json.loads(json.dumps(doc)))], prices=False).markdown == first


def test_markup_in_the_release_cannot_break_the_report():
    nasty = "ghcr.io/x/web:1```\n</details>@all"
    md = report(release_step(release(), release(image=nasty))).markdown

    def walk(tokens):
        for t in tokens:
            yield t
            yield from walk(t.children or [])

    tokens = list(walk(MD.parse(md)))
    html = [t.content for t in tokens if t.type in ("html_block", "html_inline")]
    assert not any("@all" in h for h in html)  # the markup stays text, in code
    assert sum(h.count("<details>") for h in html) == sum(h.count("</details>") for h in html)
    assert any("</details>@all" in t.content for t in tokens if t.type == "fence")


# ---------------------------------------------------------------------------------------------
# The offline diff's rules for Commands


def command_plan(inputs: dict, **options) -> dict:
    resource = {
        "type": CMD,
        "name": "shop-single-vm-hcloud-release",
        "parent": None,
        "custom": True,
        "id": "cmd-1",
        "inputs": inputs,
        **options,
    }
    return {"resources": [resource], "outputs": {}, "notes": []}


def offline_step(old: dict, new: dict) -> dict:
    doc = build_document(STACK, old, new, old_project="shop", new_project="shop", base_label="m")
    [step] = [s for s in doc["steps"] if s["op"] != "same"]
    assert not [d for d in doc["diagnostics"] if "no replacement rules" in d["message"]]
    return step


def test_offline_stdin_change_updates_the_command_in_place():
    old = command_plan(command_inputs(release()), replaceOnChanges=["triggers[*]"])
    new = command_plan(
        command_inputs(release(image="ghcr.io/example/shop-web:1.4.3")),
        replaceOnChanges=["triggers[*]"],
    )
    step = offline_step(old, new)
    assert (step["op"], step["replaceReasons"]) == ("update", [])
    assert step["detailedDiff"] == {"stdin": {"kind": "update", "inputDiff": True}}
    rep = build_report(
        [
            (
                STACK,
                build_document(
                    STACK, old, new, old_project="shop", new_project="shop", base_label="m"
                ),
            )
        ],
        prices=False,
    )
    assert "web: image ghcr.io/example/shop-web:1.4.2 -> 1.4.3" in rep.markdown
    assert not rep.data_loss


def test_offline_triggers_replace_the_command():
    assert REPLACE_ON_CHANGE[CMD] == ("triggers",)
    base = command_inputs("x")
    step = offline_step(
        command_plan({**base, "triggers": ["a"]}), command_plan({**base, "triggers": ["b"]})
    )
    assert (step["op"], step["replaceReasons"]) == ("replace", ["triggers"])
    # The SDK's own option, and a whole list appearing under it.
    step = offline_step(
        command_plan(base, replaceOnChanges=["triggers[*]"]),
        command_plan({**base, "triggers": ["a"]}, replaceOnChanges=["triggers[*]"]),
    )
    assert step["op"] == "replace"
    # A Command is never data loss, even replaced.
    rep = build_report(
        [
            (
                STACK,
                build_document(
                    STACK,
                    command_plan({**base, "triggers": ["a"]}),
                    command_plan({**base, "triggers": ["b"]}),
                    old_project="shop",
                    new_project="shop",
                    base_label="m",
                ),
            )
        ],
        prices=False,
    )
    assert not rep.data_loss
