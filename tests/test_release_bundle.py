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
