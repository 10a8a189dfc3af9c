"""`blueprints preview-report`: preview documents in Pulumi's shape -> one markdown comment.

Fixture documents (tests/preview_docs/) are written in the shape `pulumi preview --json` prints
(PreviewDigest: steps with oldState/newState, detailedDiff, replaceReasons; diagnostics;
changeSummary). The markdown is checked with a real CommonMark parser (markdown-it-py, with raw
HTML on, as GitLab allows <details>), not only by string search.
"""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt

from blueprints.preview import report as report_mod
from blueprints.preview.document import PreviewError, Urn, load_preview, parse_preview
from blueprints.preview.report import MARKER, build_report, code, parse_path

ROOT = Path(__file__).resolve().parent.parent
DOCS = Path(__file__).resolve().parent / "preview_docs"
SIG = {"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270"}
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
SECRET = "SUPER-SECRET-hunter2-XYZ"

SRV = "hcloud:index/server:Server"
VOL = "hcloud:index/volume:Volume"
ATT = "hcloud:index/volumeAttachment:VolumeAttachment"
FW = "hcloud:index/firewall:Firewall"


def fixture(name: str) -> dict:
    return json.loads((DOCS / name).read_text())


def build(*docs: tuple[str, dict], **kw):
    return build_report(list(docs), **kw)


# ---------------------------------------------------------------------------------------------
# A small builder for documents in Pulumi's shape


def urn(stack: str, type_: str, name: str) -> str:
    return f"urn:pulumi:{stack}::blueprints::pulumi:pulumi:Stack${type_}::{name}"


def state(stack, type_, name, inputs, outputs=None, id_=None, **extra) -> dict:
    s = {
        "urn": urn(stack, type_, name),
        "custom": True,
        "type": type_,
        "inputs": inputs,
        "outputs": outputs or {},
        "parent": f"urn:pulumi:{stack}::blueprints::pulumi:pulumi:Stack::blueprints-{stack}",
    }
    if id_ is not None:
        s["id"] = id_
    s.update(extra)
    return s


def step(op, stack, type_, name, old=None, new=None, detailed=None, replace=None, diff=None):
    s: dict[str, Any] = {"op": op, "urn": urn(stack, type_, name), "detailedDiff": detailed}
    if old is not None:
        s["oldState"] = old
    if new is not None:
        s["newState"] = new
    if replace:
        s["replaceReasons"] = replace
    if diff:
        s["diffReasons"] = diff
    return s


def doc(steps, summary=None, diagnostics=None) -> dict:
    d: dict[str, Any] = {"config": {}, "steps": steps}
    if diagnostics:
        d["diagnostics"] = diagnostics
    if summary is not None:
        d["changeSummary"] = summary
    return d


def upd(path, kind="update"):
    return {path: {"kind": kind, "inputDiff": True}}


# ---------------------------------------------------------------------------------------------
# Reading the markdown like GitLab does (CommonMark + tables + raw HTML)

MD = MarkdownIt("commonmark", {"html": True}).enable("table")


class _Html(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.text_outside_code: list[str] = []
        self.text_in_code: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.stack:
            while self.stack and self.stack.pop() != tag:
                pass

    def handle_data(self, data):
        inside = "code" in self.stack or "pre" in self.stack
        (self.text_in_code if inside else self.text_outside_code).append(data)


def rendered(markdown: str) -> _Html:
    p = _Html()
    p.feed(MD.render(markdown))
    return p


# ---------------------------------------------------------------------------------------------
# Parsing and counting


def test_urn_parts_and_names_with_double_colons():
    u = Urn.parse("urn:pulumi:prod::shop::pulumi:pulumi:Stack$hcloud:index/volume:Volume::a::b")
    assert (u.stack, u.project, u.type, u.name) == ("prod", "shop", VOL, "a::b")
    assert Urn.parse("urn:pulumi:prod::shop") is None


def test_every_op_is_grouped_counted_and_shown():
    rep = build(("ops", fixture("all-ops.json")), prices=False)
    (s,) = rep.stacks
    # k-replace is three steps and k-importrepl two: each is one replace.
    assert dict(s.counts) == {
        "create": 1,
        "update": 1,
        "replace": 2,
        "delete": 1,
        "same": 3,  # the changeSummary counts sames that --json leaves out
        "other": 7,
    }
    assert dict(s.other_ops) == {
        "discard": 1,
        "import": 1,
        "read": 1,
        "read-replacement": 1,
        "refresh": 1,
        "remove-pending-replace": 1,
        "teleport": 1,  # an op this version does not know: shown, not fatal
    }
    kinds = {c.name: c.kind for c in s.changes}
    assert kinds == {
        "blueprints-ops": "same",
        "k-same": "same",
        "k-create": "create",
        "k-update": "update",
        "k-delete": "delete",
        "k-replace": "replace",
        "k-read": "read",
        "k-readrepl": "read-replacement",
        "k-refresh": "refresh",
        "k-discard": "discard",
        "k-import": "import",
        "k-importrepl": "import-replacement",
        "k-pending": "remove-pending-replace",
        "k-future": "teleport",
    }
    md = rep.markdown
    for name, kind in kinds.items():
        if kind != "same":
            label = (
                f"<b>{kind}</b>"
                if kind != "teleport"
                else "<b>unknown op</b> <code>teleport</code>"
            )
            marker = report_mod.MARKERS.get(report_mod.CATEGORY.get(kind, "other"), "")
            prefix = f"{marker} " if marker else ""
            assert f"<summary>{prefix}{label} <code>{name}</code>" in md
            assert md.count(f"<code>{name}</code>") == 1, name
    assert "unknown step operation `teleport`" in md
    assert '`publicKey` (changed, forces replacement): `"ssh-ed25519 R1"` → ' in md
    assert "steps: `create-replacement`, `replace`, `delete-replaced`" in md
    assert not rep.data_loss  # ssh keys are not stateful


def test_replacement_steps_without_the_logical_step_still_count_once():
    o = state("s", VOL, "data", {"size": 10, "location": "fsn1"}, id_="1")
    n = state("s", VOL, "data", {"size": 10, "location": "nbg1"})
    dd = upd("location", "update-replace")
    steps = [
        step("delete-replaced", "s", VOL, "data", o, None),  # delete-before-replace order
        step("create-replacement", "s", VOL, "data", o, n, dd, ["location"]),
    ]
    rep = build(("s", doc(steps)), prices=False)
    assert rep.stacks[0].counts["replace"] == 1
    assert rep.data_loss
    assert [d.name for d in rep.dangers] == ["data"]


def test_document_without_steps_takes_counts_from_change_summary():
    rep = build(("quiet", fixture("preview-quiet-stack.json")), prices=False)
    assert rep.stacks[0].counts["same"] == 12
    assert "No resource changes" in rep.markdown
    assert not rep.data_loss


# ---------------------------------------------------------------------------------------------
# Stateful resources


def warning_block(md: str) -> str:
    lines = md.split("\n")
    start = lines.index("> [!warning]")
    end = start
    while end < len(lines) and lines[end].startswith(">"):
        end += 1
    return "\n".join(lines[start:end])


def test_hcloud_volume_floating_ip_and_server_holding_the_volume_are_warned():
    rep = build(("single-vm-hcloud", fixture("stateful-hcloud.json")), prices=False)
    assert rep.data_loss
    got = {(d.name, d.kind, d.what) for d in rep.dangers}
    assert got == {
        ("shop-data", "replace", "volume"),
        ("shop-primary", "replace", "server"),
        ("shop-ip", "delete", "floating IP"),
    }
    block = warning_block(rep.markdown)
    assert (
        "**replace** volume `shop-data` (`hcloud:index/volume:Volume`) because `location` "
        "changed; protect: **yes**" in block
    )
    assert "server `shop-primary`" in block and "attached by `shop-data-attach`" in block
    assert "**delete** floating IP `shop-ip`" in block
    # The spare holds no volume and the attachment itself is not stateful: no warning.
    assert "shop-spare" not in block and "**replace** volume attachment" not in block
    # The warning comes right after the summary table, before any details.
    md = rep.markdown
    assert md.index("| stack |") < md.index("> [!warning]") < md.index("<details>")
    assert md.startswith(MARKER + "\n## ")


def test_aws_ebs_volume_elastic_ip_and_instance_holding_the_volume_are_warned():
    rep = build(("single-vm-localstack", fixture("stateful-aws.json")), prices=False)
    got = {(d.name, d.kind, d.what) for d in rep.dangers}
    assert got == {
        ("shop-primary", "replace", "server"),
        ("shop-data", "delete", "EBS volume"),
        ("shop-ip", "replace", "elastic IP"),
    }
    assert rep.stacks[0].counts["replace"] == 2  # create-replacement/replace/delete-replaced


def test_server_named_only_by_the_volume_state_or_property_dependencies_is_warned():
    # The attachment is unchanged (not in the document); the volume's outputs name the server.
    s1 = [
        step(
            "update",
            "s",
            VOL,
            "data",
            state("s", VOL, "data", {"size": 10}, {"serverId": 4711}, id_="9"),
            state("s", VOL, "data", {"size": 20}),
            upd("size"),
        ),
        step("delete", "s", SRV, "node", state("s", SRV, "node", {}, {"id": "4711"}, id_="4711")),
    ]
    # Ids unknown, but the attachment's propertyDependencies name the server's URN.
    att = state(
        "t",
        ATT,
        "att",
        {"serverId": UNKNOWN, "volumeId": UNKNOWN},
        propertyDependencies={"serverId": [urn("t", SRV, "node")]},
    )
    s2 = [
        step("create", "t", ATT, "att", None, att),
        step(
            "replace",
            "t",
            SRV,
            "node",
            state("t", SRV, "node", {"image": "a"}, id_="1"),
            state("t", SRV, "node", {"image": "b"}),
            upd("image", "update-replace"),
            ["image"],
        ),
    ]
    rep = build(("s", doc(s1)), ("t", doc(s2)), prices=False)
    assert [(d.stack, d.name, d.what) for d in rep.dangers] == [
        ("s", "node", "server"),
        ("t", "node", "server"),
    ]


def test_a_kubernetes_volume_claim_replaced_or_deleted_is_data_loss():
    pvc = "kubernetes:core/v1:PersistentVolumeClaim"
    sts = "kubernetes:apps/v1:StatefulSet"
    meta = {"name": "uploads-shared", "namespace": "shop"}

    def claim(storage_class: str, **extra) -> dict:
        spec = {"storageClassName": storage_class, "accessModes": ["ReadWriteOnce"]}
        return state("s", pvc, "uploads", {"metadata": meta, "spec": spec}, **extra)

    steps = [
        step(
            "replace",
            "s",
            pvc,
            "uploads",
            claim("hcloud-volumes", protect=True),
            claim("other"),
            upd("spec.storageClassName", "update-replace"),
            ["spec.storageClassName"],
        ),
        step("delete", "s", pvc, "thumbs", claim("hcloud-volumes")),
        # a workload's change is no data loss
        step(
            "update",
            "s",
            sts,
            "web",
            state("s", sts, "web", {"spec": {"replicas": 1}}),
            state("s", sts, "web", {"spec": {"replicas": 2}}),
            upd("spec.replicas"),
        ),
    ]
    rep = build(("k8s-hcloud", doc(steps)), prices=False)
    assert rep.data_loss
    assert [(d.name, d.kind, d.what) for d in rep.dangers] == [
        ("uploads", "replace", "volume claim"),
        ("thumbs", "delete", "volume claim"),
    ]
    assert rep.dangers[0].protect
    assert "**replace** volume claim `uploads`" in warning_block(rep.markdown)


def test_stateless_replace_has_no_warning():
    rep = build(("compose-hcloud", fixture("stateless.json")), prices=False)
    assert not rep.data_loss
    assert "[!warning]" not in rep.markdown
    assert "No stateful resource" in rep.markdown
    assert rep.stacks[0].counts["replace"] == 1
    assert '`serverType` (changed): `"cx22"` → `"cx32"`' in rep.markdown


# ---------------------------------------------------------------------------------------------
# The stateful table (blueprints/preview/stateful.yaml, issue 21)

TABLE = report_mod.DEFAULT_TABLE
TABLE_TYPES = sorted({**TABLE.stateful, **TABLE.identity})
UNKNOWN_TYPE = "acme:index/widget:Widget"
# a provider's token prefix -> the words its section comment in stateful.yaml names it by
PROVIDERS = {
    "aws": "aws",
    "gcp": "google cloud",
    "azure-native": "azure native",
    "azure": "azure classic",
    "kubernetes": "kubernetes",
    "digitalocean": "digitalocean",
    "hcloud": "hetzner",
    "random": "random",
    "tls": "tls",
}


def replace_of(type_: str, name: str = "it", stack: str = "s", **extra) -> dict:
    """The same real replace step (a volume whose location changes), retyped."""
    return step(
        "replace",
        stack,
        type_,
        name,
        state(stack, type_, name, {"location": "fsn1", "size": 10}, id_="1", **extra),
        state(stack, type_, name, {"location": "nbg1", "size": 10}),
        upd("location", "update-replace"),
        ["location"],
    )


def delete_of(type_: str, name: str = "it", stack: str = "s", **extra) -> dict:
    return step("delete", stack, type_, name, state(stack, type_, name, {"size": 10}, **extra))


@pytest.mark.parametrize("type_", TABLE_TYPES)
def test_every_type_of_the_stateful_table_replaced_is_data_loss(type_):
    rep = build(("s", doc([replace_of(type_)])), prices=False)
    assert rep.data_loss
    assert [(d.name, d.kind, d.level) for d in rep.dangers] == [("it", "replace", "data loss")]
    assert not rep.reviews
    what = {**TABLE.stateful, **TABLE.identity}[type_]
    assert rep.dangers[0].what == what
    block = warning_block(rep.markdown)
    assert f"**replace** {what} `it` (`{type_}`)" in block
    assert "No stateful resource" not in rep.markdown and "⚠️ data loss" in rep.markdown


def test_the_cli_fails_on_every_type_of_the_table(tmp_path):
    steps = [replace_of(t, f"r{i}") for i, t in enumerate(TABLE_TYPES)]
    (tmp_path / "preview-s.json").write_text(json.dumps(doc(steps)))
    res = run(str(tmp_path / "preview-s.json"), "--fail-on", "data-loss", "--no-prices")
    assert res.returncode == 4, res.stderr
    assert f"Data loss: {len(TABLE_TYPES)} stateful resources would be" in res.stdout
    for i, t in enumerate(TABLE_TYPES):
        assert f"`r{i}` (`{t}`)" in warning_block(res.stdout)


def test_the_table_covers_the_providers_teams_use():
    by_provider: dict[str, int] = {}
    for t in TABLE_TYPES:
        by_provider[t.split(":", 1)[0]] = by_provider.get(t.split(":", 1)[0], 0) + 1
    assert set(by_provider) == set(PROVIDERS)
    for token in (
        "aws:rds/instance:Instance",
        "aws:rds/cluster:Cluster",
        "aws:dynamodb/table:Table",
        "aws:efs/fileSystem:FileSystem",
        "aws:s3/bucketV2:BucketV2",
        "gcp:sql/databaseInstance:DatabaseInstance",
        "gcp:compute/disk:Disk",
        "gcp:compute/address:Address",
        "azure-native:storage:StorageAccount",
        "azure:postgresql/flexibleServer:FlexibleServer",
        "kubernetes:core/v1:PersistentVolume",
        "kubernetes:apps/v1:StatefulSet",
        "digitalocean:index/volume:Volume",
        "hcloud:index/volume:Volume",
        "random:index/randomPassword:RandomPassword",
        "tls:index/privateKey:PrivateKey",
    ):
        assert token in TABLE_TYPES, token
    # the types the blueprints themselves delete or replace are known either way
    for t in (SRV, ATT, FW, "command:remote:Command", "aws:ec2/instance:Instance"):
        assert TABLE.is_stateless(t), t


def test_the_table_file_is_documented():
    """Every provider's entries sit under a comment naming the provider; the file says what the
    levels are and how to add types."""
    text = report_mod.STATEFUL_FILE.read_text()
    assert "data loss" in text and "review" in text and "blueprints-stateful.yaml" in text
    section = heading = None
    seen: set[str] = set()
    for line in text.splitlines():
        if line and not line.startswith((" ", "#")):
            section, heading = line.rstrip(":"), None
        elif line.strip().startswith("# ---"):
            heading = line.strip().lower()
        elif line.strip().startswith("#"):
            continue
        elif section in ("stateful", "identity") and line.startswith("  ") and ": " in line:
            provider = line.strip().split(":", 1)[0]
            assert heading is not None and PROVIDERS[provider] in heading, line
            seen.add(provider)
    assert seen == set(PROVIDERS)


def test_deletes_of_the_table_are_data_loss_and_of_identities_review():
    steps = [delete_of(t, f"d{i}") for i, t in enumerate(TABLE_TYPES)]
    rep = build(("s", doc(steps)), prices=False)
    lost = {d.type for d in rep.dangers}
    reviewed = {d.type for d in rep.reviews}
    # a StatefulSet whose spec cannot be read may delete its claims: data loss (fails closed)
    assert lost == set(TABLE.stateful)
    assert reviewed == set(TABLE.identity)
    assert all(d.kind == "delete" for d in rep.dangers + rep.reviews)


def test_an_azure_native_token_pinned_to_an_api_version_is_in_the_table():
    rep = build(("s", doc([replace_of("azure-native:storage/v20230101:StorageAccount")])))
    assert rep.data_loss and rep.dangers[0].what == "storage account"


def test_a_protected_resource_of_a_stateless_type_replaced_or_deleted_is_data_loss():
    steps = [
        replace_of(FW, "fw", protect=True),
        delete_of("kubernetes:apps/v1:Deployment", "web", protect=True),
        delete_of(UNKNOWN_TYPE, "widget", protect=True),
        replace_of(FW, "fw2"),  # not protected: no warning
    ]
    rep = build(("s", doc(steps)), prices=False)
    assert rep.data_loss
    assert [(d.name, d.kind, d.what, d.protect) for d in rep.dangers] == [
        ("fw", "replace", "protected resource", True),
        ("web", "delete", "protected resource", True),
        ("widget", "delete", "protected resource", True),
    ]
    assert not rep.reviews
    assert "**replace** protected resource `fw`" in warning_block(rep.markdown)


def test_a_delete_of_an_unknown_type_is_listed_for_review_not_data_loss(tmp_path):
    component = state("s", "acme:index:Stack", "group", {})
    component["custom"] = False
    steps = [
        delete_of(UNKNOWN_TYPE, "widget"),
        delete_of(FW, "fw"),  # known stateless: nothing to review
        step("delete", "s", "acme:index:Stack", "group", component),  # holds nothing itself
        delete_of("random:index/randomPassword:RandomPassword", "token"),  # an identity deleted
    ]
    rep = build(("s", doc(steps)), prices=False)
    assert not rep.data_loss and not rep.dangers
    assert [(d.name, d.level) for d in rep.reviews] == [("widget", "review"), ("token", "review")]
    md = rep.markdown
    # no false "No stateful resource" claim; the review list has its own heading
    assert "No stateful resource" not in md and "[!warning]" not in md
    assert "No resource of a type known to be stateful is replaced or deleted, but 2" in md
    assert "> **Review: 2 replaced or deleted resources of a type not known" in md
    assert (
        f"> - **delete** resource of a type not known to hold no data `widget` (`{UNKNOWN_TYPE}`)"
        in md
    )
    assert "🔎 review" in md
    # the gate: data-loss passes (and says what to review), review fails with 6
    (tmp_path / "preview-s.json").write_text(json.dumps(doc(steps)))
    res = run(str(tmp_path / "preview-s.json"), "--fail-on", "data-loss", "--no-prices")
    assert res.returncode == 0, res.stderr
    assert "review: s/widget, s/token" in res.stderr
    res = run(str(tmp_path / "preview-s.json"), "--fail-on", "review", "--no-prices")
    assert res.returncode == 6, res.stderr
    # a replace of an unknown type is listed too
    rep = build(("s", doc([replace_of(UNKNOWN_TYPE)])), prices=False)
    assert not rep.data_loss and [d.kind for d in rep.reviews] == ["replace"]


def test_a_stateful_set_is_data_loss_unless_its_pods_keep_their_claims():
    sts = "kubernetes:apps/v1:StatefulSet"

    def workload(claims, image, name="db", policy=None):
        spec: dict[str, Any] = {"template": {"image": image}}
        if claims:
            spec["volumeClaimTemplates"] = [{"metadata": {"name": c}} for c in claims]
        if policy:
            spec["persistentVolumeClaimRetentionPolicy"] = {"whenDeleted": policy}
        inputs: dict[str, Any] = {"spec": spec}
        if name:
            inputs["metadata"] = {"name": name, "namespace": "shop"}
        return state("s", sts, name or "auto", inputs)

    def replaced(n, old, new):
        return step("replace", "s", sts, n, old, new, upd("spec", "update-replace"), ["spec"])

    steps = [
        # auto-named: the replacement gets a new name, so new claims
        replaced("auto", workload(["pgdata"], "a", None), workload(["pgdata"], "b", None)),
        replaced("renamed", workload(["pgdata"], "a"), workload(["pgdata"], "b", "db2")),
        step("delete", "s", sts, "gone", workload(["pgdata"], "a", policy="Delete")),
        # kept: same name and templates; a delete that retains its claims; no claims at all
        replaced("same", workload(["pgdata"], "a"), workload(["pgdata"], "b")),
        step("delete", "s", sts, "kept", workload(["pgdata"], "a", policy="Retain")),
        replaced("plain", workload([], "a"), workload([], "b")),
    ]
    rep = build(("s", doc(steps)), prices=False)
    assert [d.name for d in rep.dangers] == ["auto", "renamed", "gone"]
    assert not rep.reviews
    block = warning_block(rep.markdown)
    assert "not named the same" in block and "whenDeleted: Delete" in block


def test_types_added_by_parameter_or_config_file_are_data_loss(tmp_path):
    steps = [replace_of(UNKNOWN_TYPE, "widget")]
    assert not build(("s", doc(steps)), prices=False).data_loss
    rep = build(("s", doc(steps)), prices=False, stateful={UNKNOWN_TYPE: "Acme widget store"})
    assert rep.data_loss and not rep.reviews
    assert "**replace** Acme widget store `widget`" in warning_block(rep.markdown)
    with pytest.raises(PreviewError, match="not a Pulumi type token"):
        build(("s", doc(steps)), stateful={"widget": "x"})

    (tmp_path / "preview-s.json").write_text(json.dumps(doc(steps)))
    preview = str(tmp_path / "preview-s.json")
    res = run(preview, "--fail-on", "data-loss", "--no-prices", cwd=tmp_path)
    assert res.returncode == 0 and "review: s/widget" in res.stderr
    # blueprints-stateful.yaml in the current directory
    (tmp_path / "blueprints-stateful.yaml").write_text(
        f"stateful:\n  # --- Acme ---\n  {UNKNOWN_TYPE}: Acme widget store\n"
    )
    res = run(preview, "--fail-on", "data-loss", "--no-prices", cwd=tmp_path)
    assert res.returncode == 4, res.stderr
    assert "**replace** Acme widget store `widget`" in res.stdout
    # --stateful FILE; a type the user calls stateless is neither data loss nor review
    other = tmp_path / "other.yaml"
    other.write_text(f"stateless:\n  - {UNKNOWN_TYPE}\n")
    res = run(preview, "--fail-on", "review", "--no-prices", "--stateful", str(other))
    assert res.returncode == 0, res.stderr
    assert "No stateful resource" in res.stdout
    # a bad or missing file is bad input: exit 2, one line, nothing passes
    other.write_text("stateful: [a, b]\n")
    res = run(preview, "--fail-on", "data-loss", "--stateful", str(other))
    assert res.returncode == 2 and "stateful: expected a mapping" in red_line(res)
    res = run(preview, "--stateful", str(tmp_path / "missing.yaml"))
    assert res.returncode == 2 and "missing.yaml: no such file" in red_line(res)
    (tmp_path / "blueprints-stateful.yaml").write_text("stateful: {a\n")
    res = run(preview, cwd=tmp_path)
    assert res.returncode == 2 and "is not valid YAML" in red_line(res)


# ---------------------------------------------------------------------------------------------
# Secrets


def secret_doc() -> dict:
    wrapped_plain = {**SIG, "plaintext": json.dumps(f"#cloud-config\n{SECRET}\n")}
    wrapped_value = {**SIG, "value": f"{SECRET}-new"}
    wrapped_cipher = {**SIG, "ciphertext": f"{SECRET}-cipher"}
    old = state(
        "s",
        SRV,
        "web",
        {
            "userData": wrapped_plain,
            "env": {"A": "plain-a", "TOKEN": {**SIG, "value": f"{SECRET}-env"}},
            "password": {**SIG, "value": SECRET},
            "serverType": "cx23",
        },
        {"userData": wrapped_cipher, "rootPassword": f"{SECRET}-output", "id": "5"},
        id_="5",
        additionalSecretOutputs=["rootPassword"],
    )
    new = state(
        "s",
        SRV,
        "web",
        {
            "userData": wrapped_value,
            "env": {"A": "plain-b", "TOKEN": "[secret]"},
            # The old value was secret; the new one is plain text: still never shown.
            "password": f"{SECRET}-now-plain",
            "serverType": "cx33",
        },
    )
    detailed = {
        "userData": {"kind": "update", "inputDiff": True},
        "env.A": {"kind": "update", "inputDiff": True},
        "env.TOKEN": {"kind": "update", "inputDiff": True},
        "password": {"kind": "update", "inputDiff": True},
        "rootPassword": {"kind": "update", "inputDiff": False},
        "serverType": {"kind": "update", "inputDiff": True},
    }
    created = state("s", FW, "fw", {"name": "fw", "apiKey": {**SIG, "value": f"{SECRET}-create"}})
    return doc(
        [
            step("update", "s", SRV, "web", old, new, detailed, diff=list(detailed)),
            step("create", "s", FW, "fw", None, created),
        ]
    )


@pytest.mark.parametrize("trim", [False, True])
def test_secret_values_never_appear(trim):
    limit = 1_000_000
    if trim:  # also when the report is trimmed (values dropped, blocks dropped)
        limit = len(build(("s", secret_doc()), prices=False).markdown) - 10
    rep = build(("s", secret_doc()), prices=False, limit=limit)
    assert (rep.trimmed_values + rep.trimmed_resources > 0) == trim
    assert SECRET not in rep.markdown
    assert "hunter2" not in rep.markdown
    if not trim:
        md = rep.markdown
        assert "`userData` (changed): [secret]" in md
        assert "`password` (changed): [secret]" in md
        assert "`rootPassword` (changed): [secret]" in md
        assert "`env.TOKEN` (changed): [secret]" in md
        assert "`apiKey` (added): [secret]" in md
        # What is not secret is still shown.
        assert '`env.A` (changed): `"plain-a"` → `"plain-b"`' in md
        assert '`serverType` (changed): `"cx23"` → `"cx33"`' in md


# ---------------------------------------------------------------------------------------------
# Diagnostics


def test_diagnostics_are_shown_per_stack_and_counted():
    rep = build(
        ("k8s-hcloud", fixture("diagnostics.json")),
        ("compose-hcloud", fixture("stateless.json")),
        prices=False,
    )
    s = rep.stacks[0]
    assert (s.errors, s.warnings) == (2, 1)
    md = rep.markdown
    section = md[md.index("### Stack `k8s-hcloud`") : md.index("### Stack `compose-hcloud`")]
    assert "- **error** on `kube-data` (`hcloud:index/volume:Volume`):" in section
    assert "currently marked for protection" in section
    assert "- **warning** on `cp-1`" in section
    assert "- 1 informational message(s) not shown" in section
    assert "planning 6 servers" not in md
    # The message's own backticks do not end its code block.
    html_ = MD.render(section)
    assert "remove the `protect` flag" in html_
    assert "| `k8s-hcloud` | 0 | 0 | 0 | 0 | 14 | 0 | 2 / 1 |" in md
    assert "**the preview reported 2 error(s)**" in md


# ---------------------------------------------------------------------------------------------
# Escaping


HOSTILE_NAME = "x</code></summary></details><script>alert(1)</script>``` @all #1 !2 |"
HOSTILE_VALUE = "a</details>\n```\n<img src=x onerror=alert(1)>`` | @all ~bug **b**"


def hostile_doc(stack: str) -> dict:
    old = state(stack, SRV, HOSTILE_NAME, {"image": "ok", HOSTILE_NAME: "x"}, id_="1")
    new = state(stack, SRV, HOSTILE_NAME, {"image": HOSTILE_VALUE, HOSTILE_NAME: HOSTILE_VALUE})
    detailed = {
        "image": {"kind": "update-replace", "inputDiff": True},
        json.dumps([HOSTILE_NAME]): {"kind": "update", "inputDiff": True},
    }
    vol_old = state(stack, VOL, HOSTILE_NAME + "v", {"location": "fsn1"}, id_="2")
    diags = [
        {
            "urn": urn(stack, SRV, HOSTILE_NAME),
            "message": f"error: {HOSTILE_VALUE}\n~~~\n````\n",
            "severity": "error",
        }
    ]
    return doc(
        [
            step("replace", stack, SRV, HOSTILE_NAME, old, new, detailed, [HOSTILE_VALUE]),
            step("delete", stack, VOL, HOSTILE_NAME + "v", vol_old),
            step(HOSTILE_NAME, stack, FW, "fw"),
        ],
        diagnostics=diags,
    )


def test_hostile_names_and_values_cannot_break_the_layout():
    stack = "st|ack`<b>"
    rep = build((stack, hostile_doc(stack)), prices=False)
    md = rep.markdown
    page = rendered(md)
    # Exactly the details blocks the report made, properly closed: 3 resources.
    assert page.tags.count("details") == 3
    assert page.tags.count("summary") == 3
    assert "script" not in page.tags and "img" not in page.tags
    assert page.tags.count("b") == 3  # the three op labels; the stack's <b> is text
    # Every hostile string shows up as text inside code, never as markup or plain text.
    outside = "".join(page.text_outside_code)
    inside = "".join(page.text_in_code)
    for needle in ("@all", "#1", "</details>", "<script>", "~bug"):
        assert needle not in outside, needle
    assert "</code></summary></details><script>alert(1)</script>" in inside
    assert "<img src=x onerror=alert(1)>" in inside
    # The table still has one row per stack with all its cells.
    html_ = MD.render(md)
    table = html_[html_.index("<table>") : html_.index("</table>")]
    assert table.count("<tr>") == 2 and table.count("<td") == 8
    # The warning names the hostile volume inside code spans.
    assert rep.data_loss
    assert "st|ack`<b>" in inside


def test_code_spans_survive_any_backtick_run():
    for text in ["`", "``", "a ` b", "` lead", "trail `", "```x```", " padded "]:
        html_ = MD.render(code(text))
        p = _Html()
        p.feed(html_)
        assert "".join(p.text_in_code) == text, (text, html_)


def test_property_paths():
    assert parse_path('a.b[0]["c.d"].e') == ["a", "b", 0, "c.d", "e"]
    assert parse_path("rules[12]") == ["rules", 12]
    assert parse_path("a[") is None


# ---------------------------------------------------------------------------------------------
# Size limit


BIG = "\n".join(f"line {i}: " + "x" * 60 for i in range(60))


def large_doc(n: int = 5000) -> dict:
    steps = []
    for i in range(n):
        name = f"srv-{i:04d}"
        o = state(
            "big",
            SRV,
            name,
            {"userData": BIG, "labels": {f"k{j}": "v" * 40 for j in range(20)}},
            id_=str(i),
        )
        nw = state(
            "big",
            SRV,
            name,
            {"userData": BIG.replace("x", "y"), "labels": {f"k{j}": "w" * 40 for j in range(20)}},
        )
        dd = {"userData": {"kind": "update", "inputDiff": True}}
        dd.update({f"labels.k{j}": {"kind": "update", "inputDiff": True} for j in range(20)})
        steps.append(step("update", "big", SRV, name, o, nw, dd))
    # Three dangers at the very end of the document.
    for i in range(3):
        vo = state("big", VOL, f"data-{i}", {"location": "fsn1", "size": 10}, id_=f"v{i}")
        vn = state("big", VOL, f"data-{i}", {"location": "nbg1", "size": 10})
        steps.append(
            step(
                "replace",
                "big",
                VOL,
                f"data-{i}",
                vo,
                vn,
                upd("location", "update-replace"),
                ["location"],
            )
        )
    return doc(steps, {"update": n, "replace": 3, "same": 1})


@pytest.fixture(scope="module")
def big_report():
    return build(("big", large_doc()), prices=False)


def test_very_large_change_stays_under_the_limit_with_summary_and_warnings(big_report):
    rep = big_report
    md = rep.markdown
    assert len(md) <= 1_000_000
    assert "| `big` | 0 | 5000 | 3 | 0 | 1 | 0 |" in md
    block = warning_block(md)
    for i in range(3):
        assert f"**replace** volume `data-{i}`" in block
        # The dangerous resources' details are kept first, with their values.
        assert f"<code>data-{i}</code>" in md
    assert rep.trimmed_resources + rep.trimmed_values > 0
    shown = md.count("<details>")
    assert shown + rep.trimmed_resources == 5003
    assert f"{rep.trimmed_resources} resources trimmed" in md or rep.trimmed_resources == 0
    assert "Trimmed to fit GitLab's note limit" in md
    page = rendered(md)
    assert page.tags.count("details") == shown  # trimming left no block half-open


def test_tight_limits_drop_values_then_resources_never_the_summary():
    d = large_doc(300)
    full = build(("big", d), prices=False)
    values_only = build(("big", d), prices=False, limit=len(full.markdown) - 1000)
    assert values_only.trimmed_values > 0 and values_only.trimmed_resources == 0
    assert "property values of" in values_only.markdown
    small = build(("big", d), prices=False, limit=20_000)
    assert len(small.markdown) <= 20_000
    assert small.trimmed_resources > 0
    assert f"{small.trimmed_resources} resources trimmed" in small.markdown
    # Smaller than summary + warnings: those stay whole, the rest goes.
    tiny = build(("big", d), prices=False, limit=500)
    assert "> [!warning]" in tiny.markdown and "| `big` | 0 | 300 | 3 |" in tiny.markdown
    assert "<details>" not in tiny.markdown
    assert all(f"**replace** volume `data-{i}`" in tiny.markdown for i in range(3))


# ---------------------------------------------------------------------------------------------
# Determinism


def shuffled(d: Any, rng: random.Random) -> Any:
    """The same document with every object's keys in another order (lists keep theirs)."""
    if isinstance(d, dict):
        items = list(d.items())
        rng.shuffle(items)
        return {k: shuffled(v, rng) for k, v in items}
    if isinstance(d, list):
        return [shuffled(v, rng) for v in d]
    return d


def test_same_input_same_bytes_whatever_the_key_order():
    docs = [
        ("single-vm-hcloud", fixture("stateful-hcloud.json")),
        ("ops", fixture("all-ops.json")),
        ("s", secret_doc()),
    ]
    first = build_report(docs).markdown
    assert build_report(copy.deepcopy(docs)).markdown == first
    rng = random.Random(7)
    for _ in range(3):
        again = build_report([(s, shuffled(d, rng)) for s, d in docs]).markdown
        assert again == first


# ---------------------------------------------------------------------------------------------
# Cost delta (blueprints/costs.py and its shipped price table)


def test_server_type_change_costs_the_price_difference():
    from blueprints.costs import shipped_tables

    table = shipped_tables()["hcloud"]
    small, large = "cx23", "cx33"
    o = state("p", SRV, "web", {"serverType": small, "location": "fsn1"}, id_="1")
    n = state("p", SRV, "web", {"serverType": large, "location": "fsn1"})
    rep = build(("p", doc([step("update", "p", SRV, "web", o, n, upd("serverType"))])))
    (s,) = rep.stacks
    expected = table.server_types[large].price - table.server_types[small].price
    assert expected > 0
    assert s.cost is not None and s.cost.delta == {"EUR": expected}
    assert s.cost.unpriced == ()
    assert f"| +{expected.quantize(Decimal('0.01'))} EUR |" in rep.markdown
    assert "monthly cost" in rep.markdown
    # --no-prices leaves the column out; so does a missing costs module.
    assert "monthly cost" not in build(("p", doc([])), prices=False).markdown


def test_inputs_the_price_table_cannot_read_are_unpriced_not_a_crash():
    from blueprints.costs import shipped_tables

    odd = state("p", SRV, "odd", {"serverType": "cx23", "publicNets": {**SIG, "value": "x"}})
    vol = state("p", VOL, "data", {"size": 10, "location": "fsn1"})
    rep = build(
        (
            "p",
            doc(
                [
                    step("create", "p", SRV, "odd", None, odd),
                    step("create", "p", VOL, "data", None, vol),
                ]
            ),
        )
    )
    cost = rep.stacks[0].cost
    assert cost is not None
    # The server is priced; its primary IPv4 cannot be told from a secret publicNets.
    assert cost.unpriced == ("odd: primary IPv4: publicNets is not known (secret or computed)",)
    table = shipped_tables()["hcloud"]
    assert cost.delta == {
        "EUR": table.server_types["cx23"].price + 10 * table.decimal("volume_gb_month")
    }


def test_cost_column_absent_without_a_price_module(monkeypatch):
    monkeypatch.setattr(report_mod, "_pricer", lambda: None)
    rep = build(("compose-hcloud", fixture("stateless.json")))
    assert rep.stacks[0].cost is None and "monthly cost" not in rep.markdown


def test_unpriced_resources_are_named_not_guessed():
    rep = build(("compose-hcloud", fixture("stateless.json")))  # cx22/cx32: not in the table
    assert "(partial)" in rep.markdown
    assert "not priced: `web-1: server type cx22 is not in the price table`" in rep.markdown


# The backup bucket's contents: priced from the backup configuration a release carries and the
# stack's data volume, like compare prices them from the settings (tests/test_costs.py).

CMD = "command:remote:Command"
EBS = "aws:ebs/volume:Volume"
HETZNER_REPO = "s3:https://fsn1.your-objectstorage.com/shop-backups/restic/shop-compose-hcloud"
S3_REPO = "s3:https://s3.eu-central-1.amazonaws.com/shop-compose-backups/restic/shop-compose"


def release_stdin(repository: str | None, keep: int = 7) -> str:
    from blueprints.release.bundle import release_document

    files = {"/etc/blueprints/compose/compose.yaml": "services: {}\n"}
    if repository is not None:
        config = {"repository": repository, "keep": keep, "paths": ["/srv/data"]}
        files[report_mod.BACKUP_CONFIG] = json.dumps(config, indent=2) + "\n"
    return release_document(
        "key",
        rung="compose",
        app="shop",
        services=[],
        files=files,
        modes={path: "0644" for path in files},
        volumes=["pgdata"],
        units=[],
        secrets=None,
    )


def backup_doc(stack, volume_type, size, old_repo, new_repo, keep=7, extra=()) -> dict:
    """A stack whose release gains, keeps or loses a backup configuration; its data volume
    unchanged (listed as a same step, as `--show-sames` does)."""
    vol = state(stack, volume_type, "data", {"size": size, "location": "fsn1"}, id_="v1")
    old = state(stack, CMD, "release", {"stdin": release_stdin(old_repo, keep)}, id_="r1")
    new = state(stack, CMD, "release", {"stdin": release_stdin(new_repo, keep)})
    op = "same" if old_repo == new_repo else "update"
    return doc(
        [
            step("same", stack, volume_type, "data", vol, vol),
            step(op, stack, CMD, "release", old, new, None if op == "same" else upd("stdin")),
            *extra,
        ]
    )


def repository_gb(data_gb: int, keep: int) -> Decimal:
    return Decimal(data_gb) * (1 + Decimal("0.1") * (keep - 1))


def test_a_release_that_starts_backing_up_to_hetzner_costs_the_object_storage():
    from blueprints.costs import shipped_tables

    table = shipped_tables()["hcloud"]
    rep = build(("compose-hcloud", backup_doc("compose-hcloud", VOL, 21, None, HETZNER_REPO)))
    (s,) = rep.stacks
    assert repository_gb(21, 7) < 1000  # within the base price's included TB
    assert s.cost is not None and s.cost.unpriced == ()
    assert s.cost.delta == {"EUR": table.decimal("object_storage", "base_month")}
    assert "A backup bucket's contents are estimated" in rep.markdown


def test_a_release_that_starts_backing_up_to_s3_costs_the_repository():
    from blueprints.costs import AWS_BUCKET, shipped_tables

    per_gb = shipped_tables()["aws"].decimal("object_storage", "standard_gb_month")
    bucket = state("compose", AWS_BUCKET, "backups", {"bucket": "shop-compose-backups"})
    doc_ = backup_doc(
        "compose",
        EBS,
        21,
        None,
        S3_REPO,
        keep=14,
        extra=[step("create", "compose", AWS_BUCKET, "backups", None, bucket)],
    )
    (s,) = build(("compose", doc_)).stacks
    assert s.cost is not None and s.cost.unpriced == ()
    assert s.cost.delta == {"USD": repository_gb(21, 14) * per_gb}


def test_unchanged_backups_cost_nothing_and_dropping_them_saves_their_price():
    from blueprints.costs import shipped_tables

    per_gb = shipped_tables()["aws"].decimal("object_storage", "standard_gb_month")
    (same,) = build(("s", backup_doc("s", EBS, 21, S3_REPO, S3_REPO))).stacks
    assert same.cost is not None and same.cost.delta == {"USD": Decimal(0)}
    (gone,) = build(("s", backup_doc("s", EBS, 21, S3_REPO, None))).stacks
    assert gone.cost is not None and gone.cost.delta == {"USD": -repository_gb(21, 7) * per_gb}


def test_a_release_without_backup_storage_has_no_object_storage_cost():
    rep = build(("s", backup_doc("s", VOL, 21, None, None)))
    (s,) = rep.stacks
    assert s.cost is not None and s.cost.delta == {"EUR": Decimal(0)} and s.cost.unpriced == ()
    assert not s.cost.backup_storage and "backup bucket" not in rep.markdown
    release = (CMD, "release", {"stdin": release_stdin(None)}, "r1")
    volume = (VOL, "data", {"size": 21, "location": "fsn1"}, "v1")
    assert report_mod.backup_storage_items([release, volume]) == []
    # With the configuration: one item, sized from the volume, kept as the config says.
    configured = (CMD, "release", {"stdin": release_stdin(HETZNER_REPO, keep=3)}, "r1")
    assert report_mod.backup_storage_items([configured, volume]) == [
        (
            "blueprints:backup/objectStorage:ObjectStorage",
            "bucket shop-backups",
            {"cloud": "hcloud", "location": "fsn1", "dataGb": 21, "keep": 3},
        )
    ]


@pytest.mark.parametrize(
    ("repository", "bucket", "where"),
    [
        (S3_REPO, "shop-compose-backups", {"cloud": "aws", "region": "eu-central-1"}),
        (
            "s3:s3.eu-central-1.amazonaws.com/b-1/restic/x",
            "b-1",
            {"cloud": "aws", "region": "eu-central-1"},
        ),
        ("s3:http://localhost:4566/b-2/restic/x", "b-2", {"cloud": "aws"}),
    ],
)
def test_the_bucket_and_its_place_come_from_the_repository(repository, bucket, where):
    release = (CMD, "release", {"stdin": release_stdin(repository, keep=5)}, "r1")
    volumes = [(EBS, "data", {"size": 30}, "v1"), (EBS, "other", {"size": 2}, "v2")]
    ((_, name, inputs),) = report_mod.backup_storage_items([release, *volumes])
    assert name == f"bucket {bucket}"
    assert inputs == {**where, "dataGb": 32, "keep": 5}


def test_backup_storage_the_table_cannot_price_is_named():
    repo = "s3:https://minio.example.com/shop-backups/restic/shop-compose"
    (s,) = build(("s", backup_doc("s", VOL, 21, None, repo))).stacks
    assert s.cost is not None
    assert s.cost.unpriced == (
        "bucket shop-backups: backup storage (at minio.example.com) is not in the price table",
    )


def test_the_backup_configuration_path_is_the_one_the_nodes_get():
    node_files = pytest.importorskip("blueprints.backup.node_files")
    assert node_files.CONFIG == report_mod.BACKUP_CONFIG


# ---------------------------------------------------------------------------------------------
# Wrong shapes


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([], "expected a JSON object"),
        ({"steps": {}}, "steps must be a list"),
        ({"steps": [1]}, "steps[0] must be an object"),
        ({"steps": [{"urn": urn("s", SRV, "a")}]}, "steps[0].op must be"),
        ({"steps": [{"op": "create", "urn": "srv"}]}, "steps[0].urn must be a Pulumi URN"),
        (
            {"steps": [{"op": "create", "urn": urn("s", SRV, "a"), "newState": []}]},
            "steps[0].newState must be a resource state object",
        ),
        (
            {"steps": [{"op": "update", "urn": urn("s", SRV, "a"), "detailedDiff": {"x": 1}}]},
            'steps[0].detailedDiff["x"] must be an object with a kind',
        ),
        ({"changeSummary": {"create": "two"}}, "changeSummary.create must be a count"),
        ({"diagnostics": [{"message": 3}]}, "diagnostics[0].message must be a string"),
    ],
)
def test_wrong_shape_is_one_sentence(data, expected):
    with pytest.raises(PreviewError) as exc:
        parse_preview(data, source="p.json")
    msg = str(exc.value)
    assert msg.startswith("p.json: ") and expected in msg and "\n" not in msg


def test_fixture_documents_parse_and_name_their_stack():
    for path in sorted(DOCS.glob("*.json")):
        p = load_preview(path)
        assert len(p.stacks) <= 1, path


# ---------------------------------------------------------------------------------------------
# The command, as a user runs it


def run(*args: str, cwd: Path = ROOT, path: str = "/usr/bin:/bin", env=None, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "blueprints.cli", "preview-report", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
        env={"PATH": path, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})},
    )


def red_line(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


def test_cli_files_and_stack_equals_file(tmp_path):
    quiet = tmp_path / "preview-quiet.json"
    quiet.write_text((DOCS / "preview-quiet-stack.json").read_text())
    res = run(
        str(DOCS / "stateless.json"),
        f"prod={DOCS / 'all-ops.json'}",
        str(quiet),
        "--no-prices",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(MARKER)
    assert (
        res.stdout
        == build(
            ("compose-hcloud", fixture("stateless.json")),
            ("prod", fixture("all-ops.json")),
            ("quiet", fixture("preview-quiet-stack.json")),
            prices=False,
        ).markdown
    )
    # stdin, named with STACK=-
    res = run("x=-", "--no-prices", stdin=(DOCS / "stateless.json").read_text())
    assert res.returncode == 0 and "### Stack `x`" in res.stdout


def test_cli_fail_on_data_loss_prints_then_exits_4(tmp_path):
    res = run(str(DOCS / "stateful-hcloud.json"), "--fail-on", "data-loss")
    assert res.returncode == 4
    assert "> [!warning]" in res.stdout
    assert "data loss: single-vm-hcloud/shop-data" in res.stderr
    # Without --fail-on the same report exits 0; a stateless one passes --fail-on.
    assert run(str(DOCS / "stateful-hcloud.json")).returncode == 0
    assert run(str(DOCS / "stateless.json"), "--fail-on", "data-loss").returncode == 0
    # --output is written before the exit status says no.
    out = tmp_path / "r.md"
    res = run(str(DOCS / "stateful-aws.json"), "--fail-on", "data-loss", "-o", str(out))
    assert res.returncode == 4 and res.stdout == ""
    assert out.read_text().startswith(MARKER)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--fail-on", "cost"], "--fail-on: must be data-loss or review (got 'cost')"),
        (["missing.json"], "missing.json: no such file"),
        (["{bad}"], "is not valid JSON (line 1 column 12: Expecting value)"),
        (["{list}"], "expected a JSON object"),
        (["{nostack}"], "has no steps to read the stack name from; pass it as STACK="),
        ([], "give preview JSON files"),
        (["{dup}", "{dup}"], "is given twice"),
    ],
)
def test_cli_bad_input_is_one_red_line_exit_2_and_no_output_file(tmp_path, args, expected):
    (tmp_path / "bad.json").write_text('{"steps": [,]}')
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "nostack.json").write_text('{"changeSummary": {"same": 1}}')
    files = {
        "{bad}": str(tmp_path / "bad.json"),
        "{list}": str(tmp_path / "list.json"),
        "{nostack}": str(tmp_path / "nostack.json"),
        "{dup}": str(DOCS / "stateless.json"),
    }
    out = tmp_path / "report.md"
    res = run(*[files.get(a, a) for a in args], "--output", str(out))
    assert res.returncode == 2
    assert expected in red_line(res)
    assert not out.exists() and res.stdout == ""
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report")] == []


def test_cli_output_replaces_an_existing_file_atomically(tmp_path):
    out = tmp_path / "report.md"
    out.write_text("old report\n")
    assert run("missing.json", "-o", str(out)).returncode == 2
    assert out.read_text() == "old report\n"
    assert run(str(DOCS / "stateless.json"), "-o", str(out)).returncode == 0
    assert out.read_text().startswith(MARKER)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def fake_pulumi(tmp_path: Path, document: str, exit_code: int = 0) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (tmp_path / "doc.json").write_text(document)
    script = bindir / "pulumi"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > "{tmp_path}/args"\n'
        'echo "Previewing update (fake)" >&2\n'
        f'cat "{tmp_path}/doc.json"\n'
        f"exit {exit_code}\n"
    )
    script.chmod(0o755)
    return bindir


def test_cli_stack_runs_pulumi_preview(tmp_path):
    bindir = fake_pulumi(tmp_path, (DOCS / "stateful-hcloud.json").read_text())
    res = run("--stack", "single-vm-hcloud", "--no-prices", path=f"{bindir}:/usr/bin:/bin")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "args").read_text().split() == [
        "preview",
        "--json",
        "--show-sames",
        "--stack",
        "single-vm-hcloud",
    ]
    assert "### Stack `single-vm-hcloud`" in res.stdout
    assert "> [!warning]" in res.stdout


def test_cli_stack_with_failed_preview_still_reports_its_errors(tmp_path):
    bindir = fake_pulumi(tmp_path, (DOCS / "diagnostics.json").read_text(), exit_code=255)
    res = run("--stack", "k8s-hcloud", "--no-prices", path=f"{bindir}:/usr/bin:/bin")
    assert res.returncode == 0
    assert "- **error** on `kube-data`" in res.stdout


def test_cli_stack_without_pulumi_says_so(tmp_path):
    res = run("--stack", "prod", path=str(tmp_path))
    assert res.returncode == 2
    line = red_line(res)
    assert "the pulumi CLI is not installed" in line and "pass the files instead" in line


def test_cli_stack_when_pulumi_prints_nothing(tmp_path):
    bindir = fake_pulumi(tmp_path, "", exit_code=1)
    res = run("--stack", "prod", path=f"{bindir}:/usr/bin:/bin")
    assert res.returncode == 2
    assert "exited 1 without a preview document" in res.stderr


# ---------------------------------------------------------------------------------------------
# --gitlab against the local GitLab stand-in (tests/fake_gitlab.py, real HTTP on 127.0.0.1)


@pytest.fixture(scope="module")
def gitlab_server():
    from fake_gitlab import FakeGitLab

    gl = FakeGitLab()
    yield gl
    gl.stop()


def test_cli_gitlab_creates_then_updates_one_note(gitlab_server):
    from fake_gitlab import ALICE, BOT

    world = gitlab_server.reset()
    world.tokens = {"bot-token": BOT}
    world.notes[("42", 5)] = []
    world.add_note("42", 5, ALICE, "unrelated comment")
    env = {
        "CI_API_V4_URL": gitlab_server.api_url,
        "CI_PROJECT_ID": "42",
        "CI_MERGE_REQUEST_IID": "5",
        "GITLAB_TOKEN": "bot-token",
    }
    first = run(str(DOCS / "stateless.json"), "--gitlab", env=env)
    assert first.returncode == 0, first.stderr
    assert "created note" in first.stderr
    second = run(str(DOCS / "stateful-hcloud.json"), "--gitlab", "--fail-on", "data-loss", env=env)
    assert second.returncode == 4  # posted first, then the pipeline is stopped
    assert "updated note" in second.stderr
    notes = world.notes[("42", 5)]
    assert notes[0]["body"] == "unrelated comment"
    assert len(notes) == 2 and notes[1]["body"] == second.stdout
    bad = run(str(DOCS / "stateless.json"), "--gitlab", env={**env, "GITLAB_TOKEN": "wrong"})
    assert bad.returncode == 1
    assert "401" in bad.stderr and "Traceback" not in bad.stderr
    missing = run(str(DOCS / "stateless.json"), "--gitlab", env={"CI_PROJECT_ID": "42"})
    assert missing.returncode == 1 and "CI_API_V4_URL" in missing.stderr


def test_a_failed_preview_does_not_pass_the_data_loss_gate(tmp_path):
    """Pulumi stops at the first error: what it did not reach may lose data."""
    urn = "urn:pulumi:p::proj::pulumi:pulumi:Stack::proj-p"
    failed = doc(
        [],
        summary={"same": 3},
        diagnostics=[{"urn": urn, "message": "boom: provider refused", "severity": "error"}],
    )
    path = tmp_path / "preview-p.json"
    path.write_text(json.dumps(failed))
    res = run(str(path), "--fail-on", "data-loss")
    assert res.returncode == 5, res.stderr
    assert "**The preview failed for `p`**" in res.stdout
    assert "No resource changes" in res.stdout  # the counts still follow
    assert run(str(path)).returncode == 0  # without the gate it is only reported


def test_nan_in_a_document_is_bad_input(tmp_path):
    path = tmp_path / "preview-p.json"
    path.write_text('{"steps": [], "changeSummary": {"same": NaN}}')
    res = run(str(path))
    assert res.returncode == 2
    assert "contains NaN" in red_line(res)


def test_provider_bookkeeping_inputs_are_not_shown_as_properties():
    new = state("p", VOL, "data", {"size": 10, "__defaults": ["name"]})
    summary = report_mod.summarize(
        "p", parse_preview(doc([step("create", "p", VOL, "data", None, new)])), prices=False
    )
    [change] = summary.changes
    assert [p.path for p in report_mod.property_changes(change)] == ["size"]


def test_a_periodic_job_change_is_not_described_as_a_deployment():
    from blueprints.preview.report import job_diff

    service = 'job "shop-web" {\n  group "web" {\n    count = %d\n  }\n}\n'
    backup = (
        'job "shop-backup" {\n  type = "batch"\n  periodic {\n    crons = ["%s"]\n  }\n'
        '  group "backup" {\n    count = 1\n  }\n}\n'
    )
    deployed = job_diff(service % 1, service % 2)
    assert deployed.how.startswith("a Nomad deployment: one instance at a time")
    periodic = job_diff(backup % "0 3 * * *", backup % "0 4 * * *")
    assert periodic.how == (
        "a new version of the periodic job: its next run uses it, nothing running restarts"
    )
    assert periodic.files and "-    crons" in periodic.files[0].diff


def test_a_stateful_set_leaving_its_volume_claims_is_data_loss():
    """On k8s a volume that gains a second user moves from the StatefulSet's claim template to a
    claim of its own: the pods start on a new, empty claim. The gate says so; a replace that
    keeps the templates and the name (same claims, as the k8s rung names its sets) does not
    warn."""
    sts = "kubernetes:apps/v1:StatefulSet"

    def workload(name: str, claims: list[str], image: str) -> dict:
        templates = [{"metadata": {"name": c}} for c in claims]
        spec = {"volumeClaimTemplates": templates, "template": {"image": image}}
        meta = {"name": name, "namespace": "shop"}
        return state("s", sts, name, {"metadata": meta, "spec": spec})

    steps = [
        step(
            "replace",
            "s",
            sts,
            "web",
            workload("web", ["uploads"], "a"),
            workload("web", [], "a"),
            upd("spec.volumeClaimTemplates", "update-replace"),
            ["spec.volumeClaimTemplates"],
        ),
        step(
            "replace",
            "s",
            sts,
            "postgres",
            workload("postgres", ["pgdata"], "a"),
            workload("postgres", ["pgdata"], "b"),
            upd("spec.template", "update-replace"),
            ["spec.template"],
        ),
    ]
    rep = build(("k8s-hcloud", doc(steps)), prices=False)
    assert [(d.name, d.what) for d in rep.dangers] == [("web", "StatefulSet")]
    line = warning_block(rep.markdown)
    assert "volume claims of its pods (uploads)" in line and "`postgres`" not in line


# ---------------------------------------------------------------------------------------------
# Issue 21 part 3: readable per-resource diffs, ordering, markers

LAMBDA = "aws:lambda/function:Function"
ROOT_STACK = "pulumi:pulumi:Stack"


def _stack_step(op, stack, old_out, new_out):
    u = f"urn:pulumi:{stack}::blueprints::{ROOT_STACK}::blueprints-{stack}"
    base = {"urn": u, "custom": False, "type": ROOT_STACK, "inputs": {}}
    return {
        "op": op,
        "urn": u,
        "oldState": {**base, "outputs": old_out},
        "newState": {**base, "outputs": new_out},
    }


def test_long_replaced_value_shows_the_changed_lines():
    prefix = "x" * 3000
    old_code = prefix + "OLD-MARKER" + "y" * 2000
    new_code = prefix + "NEW-MARKER" + "y" * 2000
    policy_old = {
        "Statement": [{"Action": "s3:GetObject", "Resource": "r" * 500 + str(i)} for i in range(5)]
    }
    policy_new = copy.deepcopy(policy_old)
    policy_new["Statement"][3]["Action"] = "s3:DeleteObject"
    old = state("p", LAMBDA, "fn", {"code": old_code, "policy": json.dumps(policy_old)})
    new = state("p", LAMBDA, "fn", {"code": new_code, "policy": json.dumps(policy_new)})
    detailed = {**upd("code", "update-replace"), **upd("policy")}
    md = build(
        ("p", doc([step("replace", "p", LAMBDA, "fn", old, new, detailed, ["code"])])), prices=False
    ).markdown
    assert any(line.strip().startswith("-") and "OLD-MARKER" in line for line in md.splitlines())
    assert any(line.strip().startswith("+") and "NEW-MARKER" in line for line in md.splitlines())
    # the JSON policy is pretty-printed first: the changed line is the Action
    assert '-      "Action": "s3:GetObject",' in md
    assert '+      "Action": "s3:DeleteObject",' in md
    assert "characters)" not in md  # no cut prefixes


def test_null_detailed_diff_unknowns_and_bookkeeping():
    old = state(
        "p",
        SRV,
        "web",
        {
            "name": "web",
            "serverType": "cx22",
            "__defaults": ["name"],
            "labels": {"a": "1", "__defaults": []},
        },
    )
    new = state(
        "p",
        SRV,
        "web",
        {
            "name": "web",
            "serverType": "cx32",
            "ipv4": UNKNOWN,
            "__defaults": [],
            "labels": {"a": "1", "__defaults": ["x"]},
        },
    )
    md = build(("p", doc([step("update", "p", SRV, "web", old, new, None)])), prices=False).markdown
    assert "(none)* → *(none)" not in md
    assert '`serverType` (changed): `"cx22"` → `"cx32"`' in md
    assert "`ipv4` (added): *(known after apply)*" in md
    assert "__defaults" not in md and "labels" not in md
    assert UNKNOWN not in md
    same = state("p", SRV, "web", {"name": "web"})
    md = build(
        ("p", doc([step("update", "p", SRV, "web", same, same, None)])), prices=False
    ).markdown
    assert "no property changes reported" in md
    nested = state("p", SRV, "web", {"userData": {"k": UNKNOWN, "v": "z" * 600}})
    md = build(
        ("p", doc([step("update", "p", SRV, "web", old, nested, None)])), prices=False
    ).markdown
    assert UNKNOWN not in md and "(known after apply)" in md


def test_stack_output_changes_are_shown_and_secrets_masked():
    steps = [
        _stack_step(
            "same",
            "p",
            {"url": "http://a", "token": {**SIG, "plaintext": SECRET}},
            {"url": "http://b", "token": {**SIG, "plaintext": SECRET + "2"}, "ip": UNKNOWN},
        )
    ]
    md = build(("p", doc(steps)), prices=False).markdown
    assert "<b>outputs</b>" in md
    assert '`url` (changed): `"http://a"` → `"http://b"`' in md
    assert "`ip` (added): *(known after apply)*" in md
    assert "`token` (changed): [secret]" in md
    assert SECRET not in md
    unchanged = [_stack_step("same", "p", {"url": "a"}, {"url": "a"})]
    assert "<details>" not in build(("p", doc(unchanged)), prices=False).markdown


def test_protected_delete_is_described_as_refused():
    old = state("p", FW, "fw", {"name": "fw"}, protect=True)
    md = build(("p", doc([step("delete", "p", FW, "fw", old=old)])), prices=False).markdown
    assert "<b>delete refused</b>" in md
    assert "refuses to delete a protected resource" in md
    assert "Pulumi will refuse to delete protected `fw`" in md
    assert "removed from the program; deleted" not in md


def _ordering_doc():
    k = "hcloud:index/sshKey:SshKey"
    return doc(
        [
            step("create", "p", k, "c1", new=state("p", k, "c1", {"publicKey": "a"})),
            step(
                "update",
                "p",
                k,
                "u1",
                state("p", k, "u1", {"publicKey": "a"}),
                state("p", k, "u1", {"publicKey": "b"}),
                upd("publicKey"),
            ),
            step(
                "replace",
                "p",
                k,
                "r1",
                state("p", k, "r1", {"publicKey": "a"}),
                state("p", k, "r1", {"publicKey": "b"}),
                upd("publicKey", "update-replace"),
                ["publicKey"],
            ),
            step("delete", "p", k, "d1", old=state("p", k, "d1", {"publicKey": "a"})),
            step(
                "replace",
                "p",
                VOL,
                "data",
                state("p", VOL, "data", {"size": 10}),
                state("p", VOL, "data", {"size": 5}),
                upd("size", "update-replace"),
                ["size"],
            ),
        ]
    )


def test_report_structure_with_a_commonmark_parser():
    md = build(("p", _ordering_doc()), prices=False).markdown
    tokens = MD.parse(md)
    first_details = next(
        i for i, t in enumerate(tokens) if t.type == "html_block" and "<details>" in t.content
    )
    table = next(i for i, t in enumerate(tokens) if t.type == "table_open")
    headings = [i for i, t in enumerate(tokens) if t.type == "heading_open"]
    warning = next(
        i for i, t in enumerate(tokens) if t.type == "inline" and "data loss" in t.content.lower()
    )
    assert table < first_details and warning < first_details and headings[-1] < first_details
    summaries = [t.content for t in tokens if t.type == "html_block" and "<summary>" in t.content]
    rows = [s.split("<summary>", 1)[1].split("</summary>", 1)[0] for s in summaries]
    names = [r.split("<code>", 1)[1].split("</code>", 1)[0] for r in rows]
    markers = [r.split(" ", 1)[0] for r in rows]
    assert names == ["r1", "d1", "data", "u1", "c1"]  # replaces and deletes first, then by step
    assert markers == ["±", "-", "±", "~", "+"]
    # every <details> is one well-formed HTML block: nothing of it leaks into markdown text
    assert md.count("<details>") == md.count("</details>") == 5
    assert build(("p", _ordering_doc()), prices=False).markdown == md  # same input, same bytes
