"""The release document: any file text survives the trip, and anything else is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blueprints.release import agent
from blueprints.release.bundle import (
    BundleError,
    ServiceRelease,
    TaskRelease,
    parse_release,
    release_document,
    secrets_document,
)

TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=200)


def _document(files: dict[str, str], secrets: str | None = None) -> str:
    web = ServiceRelease("web", "example/web:1", 2, "surge", "0123456789abcdef", 30)
    return release_document(
        "key",
        rung="single-vm",
        app="shop",
        services=[web],
        files=files,
        modes={path: "0644" for path in files},
        volumes=["data"],
        units=[],
        secrets=secrets,
    )


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(TEXT, min_size=1, max_size=4))
def test_any_text_round_trips(texts):
    files = {f"/etc/blueprints/f{i}": text for i, text in enumerate(texts)}
    body = parse_release(_document(files))
    assert {path: entry["text"] for path, entry in body["files"].items()} == files


def test_multi_line_texts_read_line_by_line():
    text = _document({"/etc/x.conf": "a = 1\nb = 2\n"})
    assert "    text: |\n      a = 1\n      b = 2\n" in text


def test_same_input_same_bytes_and_a_keyed_digest():
    assert _document({"/a": "x\n"}) == _document({"/a": "x\n"})
    one, _ = secrets_document("key-1", {"/etc/blueprints/secrets/web.env": "A=secret\n"})
    two, _ = secrets_document("key-2", {"/etc/blueprints/secrets/web.env": "A=secret\n"})
    assert one != two and "secret" not in one


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{}", "not a release document"),
        ("- a list\n", "not a YAML mapping"),
        ("a: [unclosed\n", "not YAML"),
        (None, "not text"),
        ("format: blueprints-release/1\nrelease: 0\ndate: 2024-01-01\n", "values no release"),
    ],
)
def test_what_is_not_a_release_document_is_refused(text, message):
    with pytest.raises(BundleError, match=message):
        parse_release(text)


def test_an_edited_release_is_refused():
    text = _document({"/etc/blueprints/a": "image=1\n"})
    with pytest.raises(BundleError, match="does not match its content"):
        parse_release(text.replace("image=1", "image=2"))


@pytest.mark.parametrize(
    "golden",
    sorted(
        str(p.relative_to(Path(__file__).parent))
        for p in (Path(__file__).parent / "golden").glob("*/*/release.yaml")
    ),
)
def test_the_agent_accepts_what_the_renderers_write(golden):
    """The node's checks (roots, modes, ids) and the renderers agree, without a node."""
    text = (Path(__file__).parent / golden).read_text()
    body = agent.check_release(text)
    assert body["release"] == parse_release(text)["release"]


def _with_tasks(tasks: list[TaskRelease]) -> str:
    web = ServiceRelease("web", "example/web:1", 2, "surge", "0123456789abcdef", 30)
    return release_document(
        "key",
        rung="single-vm",
        app="shop",
        services=[web],
        files={},
        modes={},
        volumes=[],
        units=[],
        secrets=None,
        tasks=tasks,
    )


def test_tasks_travel_in_order_and_count_in_the_release_id():
    migrate = TaskRelease("migrate", ["/usr/local/lib/blueprints/app/task-migrate"], 300, ["web"])
    seed = TaskRelease("seed", ["/usr/local/lib/blueprints/app/task-seed"], 60)
    body = parse_release(_with_tasks([seed, migrate]))
    assert body["tasks"] == [
        {"name": "seed", "argv": ["/usr/local/lib/blueprints/app/task-seed"], "timeout": 60},
        {
            "name": "migrate",
            "argv": ["/usr/local/lib/blueprints/app/task-migrate"],
            "timeout": 300,
            "needs": ["web"],
        },
    ]
    other = parse_release(_with_tasks([seed, TaskRelease("migrate", migrate.argv, 301, ["web"])]))
    assert other["release"] != body["release"]
    # The agent checks the same document, and the id it computes.
    assert agent.check_release(_with_tasks([seed, migrate]))["release"] == body["release"]


def test_a_release_without_tasks_has_no_tasks_key():
    assert "tasks" not in parse_release(_with_tasks([]))


def test_secret_files_keep_the_modes_given():
    _, text = secrets_document(
        "key",
        {"/etc/blueprints/secrets/a": "x", "/etc/blueprints/secrets/b": "y"},
        {"/etc/blueprints/secrets/b": "0440"},
    )
    body = agent.check_secrets(text)
    assert body["files"]["/etc/blueprints/secrets/a"]["mode"] == "0600"
    assert body["files"]["/etc/blueprints/secrets/b"]["mode"] == "0440"


def _pure_dump(body: dict) -> str:
    """What PyYAML's own emitter writes: bundle.dump must give these bytes, whichever emitter."""
    import yaml

    from blueprints.release.bundle import _BlockDumper

    return yaml.dump(
        dict(body),
        Dumper=_BlockDumper,
        sort_keys=True,
        allow_unicode=True,
        default_flow_style=False,
        width=4096,
    )


CORNERS = [
    "",
    "plain",
    "trailing space ",
    "multi\nline\n",
    "multi\nline, no final break",
    "kept\n\n",
    "\n",
    "  leading spaces\n  on each line\n",
    "\nleading break\n",
    "tab\there\n",
    "tab\tone line",
    "space before break \nx\n",
    "next line\x85here\n",
    "line\u2028separator",
    "control\x1bcharacter\n",
    "byte order \ufeff mark",
    "astral 😀 character\n",
    "astral 😀",
    "é non-ascii ü\n",
    "yes",
    "0o17",
    "x" * 5000,
    "x " * 3000,
    ("x " * 3000) + "\t",
    ("long line " * 600) + "\nand more\n",
    ("é" * 70) + "\t",
]


@pytest.mark.parametrize("text", CORNERS)
def test_dump_writes_pure_pyyaml_bytes(text):
    from blueprints.release.bundle import dump

    short_key = text[:40] if text and "\n" not in text and "\t" not in text else "k"
    for body in (
        {"files": {"/etc/a": {"mode": "0644", "text": text}}, "app": "shop"},
        {"files": [text, {"a": text}], "app": text},
        {short_key: 1, "z": None, "é" * 61: True, "k" * 125: text},
    ):
        assert dump(body) == _pure_dump(body)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(TEXT, st.one_of(TEXT, st.lists(TEXT, max_size=3)), max_size=4))
def test_dump_writes_pure_pyyaml_bytes_for_any_text(body):
    from blueprints.release.bundle import dump

    assert dump({"files": body, "app": "shop"}) == _pure_dump({"files": body, "app": "shop"})


def test_an_ordinary_release_is_written_by_libyaml():
    from blueprints.release.bundle import _fast_ok

    body = {"files": {"/etc/unit": {"mode": "0644", "text": "[Unit]\nAfter=x\n"}}, "n": 1}
    assert _fast_ok(body, set())
