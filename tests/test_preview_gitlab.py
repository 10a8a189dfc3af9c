"""GitLab posting: one note per merge request, updated in place, against a local HTTP server."""

from __future__ import annotations

import copy
import json
import socket

import pytest
from fake_gitlab import ALICE, BOT, FakeGitLab

from blueprints.preview.gitlab import GitLabError, NoteResult, upsert_note

MARKER = "<!-- blueprints:preview-report -->"
PROJECT = "42"
IID = 5
TOKEN = "glpat-test-token"


@pytest.fixture(scope="module")
def server():
    gl = FakeGitLab()
    yield gl
    gl.stop()


@pytest.fixture
def world(server):
    w = server.reset()
    w.tokens = {TOKEN: BOT, "alice-token": ALICE}
    w.notes[(PROJECT, IID)] = []
    w.add_note(PROJECT, IID, ALICE, "Looks good, but what about the volume?")
    w.add_note(PROJECT, IID, BOT, "Pipeline passed (a different bot note, no marker).")
    w.add_note(PROJECT, IID, BOT, "mentioned in commit abc123", system=True)
    return w


@pytest.fixture
def env(server):
    return {
        "CI_API_V4_URL": server.api_url,
        "CI_PROJECT_ID": PROJECT,
        "CI_MERGE_REQUEST_IID": str(IID),
        "CI_PROJECT_URL": "https://gitlab.example.com/team/infra",
        "GITLAB_TOKEN": TOKEN,
    }


def report(text: str) -> str:
    return f"{MARKER}\n## Preview\n{text}\n"


def notes(world):
    return world.notes[(PROJECT, IID)]


def writes(world):
    return [(m, p) for m, p in world.log if m in ("POST", "PUT", "DELETE")]


def test_first_run_creates_one_note(world, env):
    before = copy.deepcopy(notes(world))
    result = upsert_note(report("1 to create"), marker=MARKER, env=env)
    assert isinstance(result, NoteResult)
    assert result.action == "created"
    assert notes(world)[:3] == before
    assert len(notes(world)) == 4
    created = notes(world)[-1]
    assert created["id"] == result.note_id
    assert created["body"] == report("1 to create")
    assert created["author"]["id"] == BOT["id"]
    assert (
        result.url
        == f"https://gitlab.example.com/team/infra/-/merge_requests/5#note_{created['id']}"
    )
    assert writes(world) == [("POST", f"/api/v4/projects/{PROJECT}/merge_requests/{IID}/notes")]


def test_second_run_updates_the_same_note_and_creates_nothing(world, env):
    first = upsert_note(report("1 to create"), marker=MARKER, env=env)
    others = copy.deepcopy([n for n in notes(world) if n["id"] != first.note_id])
    world.log.clear()

    second = upsert_note(report("1 to update"), marker=MARKER, env=env)
    assert second.action == "updated"
    assert second.note_id == first.note_id
    assert len(notes(world)) == 4
    ours = next(n for n in notes(world) if n["id"] == first.note_id)
    assert ours["body"] == report("1 to update")
    assert [n for n in notes(world) if n["id"] != first.note_id] == others
    assert writes(world) == [
        ("PUT", f"/api/v4/projects/{PROJECT}/merge_requests/{IID}/notes/{first.note_id}")
    ]


def test_finds_the_note_on_a_later_page(world, env):
    world.max_per_page = 2  # GitLab caps per_page; force several pages
    ours = world.add_note(PROJECT, IID, BOT, report("old"))
    for i in range(5):
        world.add_note(PROJECT, IID, ALICE, f"review comment {i}")
    count = len(notes(world))

    result = upsert_note(report("new"), marker=MARKER, env=env)
    assert (result.action, result.note_id) == ("updated", ours["id"])
    assert len(notes(world)) == count
    pages = {p for m, p in world.log if m == "GET" and "/notes" in p}
    assert len(pages) >= 4, pages  # walked the Link headers, not just page 1


def test_marker_quoted_by_someone_else_is_not_touched(world, env):
    quoted = world.add_note(PROJECT, IID, ALICE, f"> {MARKER}\n> the bot said the IP goes")
    system = world.add_note(PROJECT, IID, BOT, f"changed the description {MARKER}", system=True)
    kept = copy.deepcopy([quoted, system])

    result = upsert_note(report("x"), marker=MARKER, env=env)
    assert result.action == "created"
    assert result.note_id not in (quoted["id"], system["id"])
    assert [n for n in notes(world) if n["id"] in (quoted["id"], system["id"])] == kept


def test_duplicates_update_the_oldest_and_leave_the_rest(world, env):
    a = world.add_note(PROJECT, IID, BOT, report("run 1"))
    b = world.add_note(PROJECT, IID, BOT, report("run 1, raced"))
    result = upsert_note(report("run 2"), marker=MARKER, env=env)
    assert result.note_id == a["id"]
    assert a["body"] == report("run 2")
    assert b["body"] == report("run 1, raced")


def test_marker_is_added_when_the_body_lacks_it(world, env):
    result = upsert_note("## Preview\nnothing\n", marker=MARKER, env=env)
    body = notes(world)[-1]["body"]
    assert body.startswith("## Preview\nnothing\n") and body.rstrip().endswith(MARKER)
    again = upsert_note("## Preview\nstill nothing\n", marker=MARKER, env=env)
    assert (again.action, again.note_id) == ("updated", result.note_id)


def test_api_url_with_trailing_slash_and_no_web_url(world, env):
    env = {**env, "CI_API_V4_URL": env["CI_API_V4_URL"] + "/"}
    del env["CI_PROJECT_URL"]
    result = upsert_note(report("x"), marker=MARKER, env=env)
    assert result.url.endswith(
        f"/api/v4/projects/{PROJECT}/merge_requests/{IID}/notes/{result.note_id}"
    )


def test_other_token_variable(world, env):
    env = {**env, "PREVIEW_TOKEN": env.pop("GITLAB_TOKEN")}
    result = upsert_note(report("x"), marker=MARKER, env=env, token_variable="PREVIEW_TOKEN")
    assert result.action == "created"


@pytest.mark.parametrize(
    "status, expected",
    [
        (401, ["401 Unauthorized", "GITLAB_TOKEN", "wrong, expired or revoked"]),
        (403, ["403 Forbidden", "GITLAB_TOKEN", "api scope", "Reporter"]),
        (404, ["404 Not Found", "project 42, merge request !5", "does not exist"]),
        (500, ["500", "server error", "retry"]),
    ],
)
def test_api_errors_are_one_clear_sentence(world, env, status, expected):
    world.fail_with = status
    with pytest.raises(GitLabError) as info:
        upsert_note(report("x"), marker=MARKER, env=env)
    message = str(info.value)
    for part in expected:
        assert part in message, message
    assert "\n" not in message
    assert "Traceback" not in message
    assert writes(world) == []


def test_wrong_token_is_401(world, env):
    with pytest.raises(GitLabError, match=r"401 Unauthorized.*GITLAB_TOKEN"):
        upsert_note(report("x"), marker=MARKER, env={**env, "GITLAB_TOKEN": "nope"})


def test_unknown_merge_request_is_404(world, env):
    with pytest.raises(GitLabError, match=r"404 Not Found; project 42, merge request !99"):
        upsert_note(report("x"), marker=MARKER, env={**env, "CI_MERGE_REQUEST_IID": "99"})


def test_editing_someone_elses_note_is_refused_by_the_server_and_reported(world, env):
    # The server enforces authorship like GitLab; upsert_note never tries (alice's token sees
    # the bot's note as someone else's and creates her own).
    bot_note = world.add_note(PROJECT, IID, BOT, report("bot"))
    result = upsert_note(report("alice"), marker=MARKER, env={**env, "GITLAB_TOKEN": "alice-token"})
    assert result.action == "created" and result.note_id != bot_note["id"]
    assert bot_note["body"] == report("bot")


def test_connection_refused_names_the_url(env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api/v4"
    with pytest.raises(GitLabError) as info:
        upsert_note(report("x"), marker=MARKER, env={**env, "CI_API_V4_URL": url})
    message = str(info.value)
    assert url in message and "connection refused" in message and "CI_API_V4_URL" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "missing", ["CI_API_V4_URL", "CI_PROJECT_ID", "CI_MERGE_REQUEST_IID", "GITLAB_TOKEN"]
)
def test_missing_variable_is_named(world, env, missing):
    env = {k: v for k, v in env.items() if k != missing}
    with pytest.raises(GitLabError) as info:
        upsert_note(report("x"), marker=MARKER, env=env)
    message = str(info.value)
    assert message.startswith(f"{missing} is not set")
    if missing.startswith("CI_"):
        assert "merge-request pipeline" in message
    else:
        assert "api scope" in message and "job token" in message
    assert world.log == []


def test_empty_variable_counts_as_missing(world, env):
    with pytest.raises(GitLabError, match=r"^CI_MERGE_REQUEST_IID is not set"):
        upsert_note(report("x"), marker=MARKER, env={**env, "CI_MERGE_REQUEST_IID": " "})


def test_non_numeric_iid(world, env):
    with pytest.raises(GitLabError, match="CI_MERGE_REQUEST_IID must be a merge request number"):
        upsert_note(report("x"), marker=MARKER, env={**env, "CI_MERGE_REQUEST_IID": "5a"})


def test_reads_os_environ_by_default(world, env, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert upsert_note(report("x"), marker=MARKER).action == "created"


# --- through the command line (`blueprints preview-report --gitlab`) ---------------------------


def _preview_file(tmp_path) -> str:
    urn = "urn:pulumi:prod::shop::hcloud:index/server:Server::web"
    doc = {
        "steps": [
            {
                "op": "update",
                "urn": urn,
                "oldState": {
                    "urn": urn,
                    "type": "hcloud:index/server:Server",
                    "inputs": {"serverType": "cx23"},
                },
                "newState": {
                    "urn": urn,
                    "type": "hcloud:index/server:Server",
                    "inputs": {"serverType": "cx33"},
                },
                "diffReasons": ["serverType"],
                "detailedDiff": {"serverType": {"kind": "update", "inputDiff": True}},
            }
        ],
        "changeSummary": {"update": 1, "same": 3},
    }
    path = tmp_path / "preview-prod.json"
    path.write_text(json.dumps(doc))
    return str(path)


def cli(args, env):
    from typer.testing import CliRunner

    from blueprints.cli import app

    return CliRunner().invoke(app, args, env={"COLUMNS": "200", **env})


def test_cli_creates_then_updates_the_note(world, env, tmp_path):
    from blueprints.preview.report import MARKER as REPORT_MARKER

    assert REPORT_MARKER == MARKER
    path = _preview_file(tmp_path)
    first = cli(["preview-report", path, "--gitlab"], env)
    assert first.exit_code == 0, first.stderr
    ours = [n for n in notes(world) if MARKER in n["body"]]
    assert len(ours) == 1 and ours[0]["body"] == first.stdout
    assert f"created note {ours[0]['id']}" in first.stderr

    second = cli(["preview-report", path, "--gitlab", "--no-prices"], env)
    assert second.exit_code == 0, second.stderr
    assert f"updated note {ours[0]['id']}" in second.stderr
    assert [n for n in notes(world) if MARKER in n["body"]] == ours
    assert ours[0]["body"] == second.stdout
    assert len(notes(world)) == 4


@pytest.mark.parametrize("status", [401, 403, 404, 500])
def test_cli_api_error_is_one_line_and_non_zero(world, env, tmp_path, status):
    world.fail_with = status
    res = cli(["preview-report", _preview_file(tmp_path), "--gitlab"], env)
    assert res.exit_code == 1
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and str(status) in errors[0]
    assert "Traceback" not in res.stderr
    assert res.stdout.startswith(MARKER)  # the report is still printed for the job log


def test_cli_missing_variable(world, env, tmp_path):
    env = {**env, "CI_MERGE_REQUEST_IID": ""}
    res = cli(["preview-report", _preview_file(tmp_path), "--gitlab"], env)
    assert res.exit_code == 1
    assert "error: CI_MERGE_REQUEST_IID is not set" in res.stderr
    assert writes(world) == []
