"""Post the preview report on a GitLab merge request as one note, updated in place.

The note is found again by a hidden marker (an HTML comment GitLab does not render) in its
body. Which note is "ours":

- only user notes (not GitLab's system notes) whose body contains the marker, across every page
  of the merge request's notes;
- only notes written by the user the token belongs to (GET /user). A note by someone else that
  quotes the marker is never edited (GitLab would refuse anyway), so the first run under a new
  token creates a new note instead;
- if several qualify (two pipelines raced), the oldest one (lowest id) is updated and the others
  are left alone, so the note keeps its place in the discussion.

No note is deleted and no other note is touched. Errors are one sentence (GitLabError).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

API_URL = "CI_API_V4_URL"
PROJECT_ID = "CI_PROJECT_ID"
MR_IID = "CI_MERGE_REQUEST_IID"
TIMEOUT_SECONDS = 30
PER_PAGE = 100  # GitLab's maximum page size for notes


class GitLabError(Exception):
    """The note could not be posted; the message is one sentence for the CI log."""


@dataclass(frozen=True)
class NoteResult:
    action: Literal["created", "updated"]
    note_id: int
    url: str


@dataclass(frozen=True)
class _Target:
    api_url: str
    project_id: str
    mr_iid: int
    token: str
    token_variable: str


def _target(env: Mapping[str, str], token_variable: str) -> _Target:
    values = {}
    for name in (API_URL, PROJECT_ID, MR_IID):
        value = (env.get(name) or "").strip()
        if not value:
            raise GitLabError(
                f"{name} is not set; post to GitLab from a job in a merge-request pipeline "
                "(rules: if: $CI_PIPELINE_SOURCE == 'merge_request_event'), where GitLab sets it"
            )
        values[name] = value
    token = (env.get(token_variable) or "").strip()
    if not token:
        raise GitLabError(
            f"{token_variable} is not set; add a masked CI/CD variable holding a project access "
            "token with the api scope (the job token cannot write merge-request notes)"
        )
    iid = values[MR_IID]
    if not iid.isdigit():
        raise GitLabError(f"{MR_IID} must be a merge request number, not {iid!r}")
    return _Target(values[API_URL].rstrip("/"), values[PROJECT_ID], int(iid), token, token_variable)


def _client(target: _Target):
    import gitlab

    base = target.api_url.removesuffix("/api/v4")
    return gitlab.Gitlab(
        base, private_token=target.token, timeout=TIMEOUT_SECONDS, keep_base_url=True
    )


def _explain(exc: Exception, target: _Target, doing: str) -> GitLabError:
    """One sentence for a failed API call."""
    import gitlab
    import requests

    where = f"project {target.project_id}, merge request !{target.mr_iid}"
    if isinstance(exc, requests.exceptions.Timeout):
        return GitLabError(f"{doing}: {target.api_url} did not answer within {TIMEOUT_SECONDS} s")
    if isinstance(exc, requests.exceptions.RequestException):
        return GitLabError(
            f"{doing}: cannot connect to {target.api_url} ({_reason(exc)}); check {API_URL}"
        )
    if isinstance(exc, gitlab.exceptions.GitlabError):
        code = exc.response_code
        detail = _detail(exc)
        if code == 401:
            return GitLabError(
                f"{doing}: GitLab answered 401 Unauthorized; the token in "
                f"{target.token_variable} is wrong, expired or revoked{detail}"
            )
        if code == 403:
            return GitLabError(
                f"{doing}: GitLab answered 403 Forbidden; the token in {target.token_variable} "
                f"needs the api scope and a role that may comment on {where} (Reporter or "
                f"higher){detail}"
            )
        if code == 404:
            return GitLabError(
                f"{doing}: GitLab answered 404 Not Found; {where} does not exist or the token "
                f"in {target.token_variable} cannot see it{detail}"
            )
        if code is not None and code >= 500:
            return GitLabError(
                f"{doing}: GitLab answered {code}, a server error; retry the job later{detail}"
            )
        if code is not None:
            return GitLabError(f"{doing}: GitLab answered {code}{detail}")
        return GitLabError(f"{doing}: {exc}")
    return GitLabError(f"{doing}: {exc.__class__.__name__}")


def _detail(exc) -> str:
    message = str(getattr(exc, "error_message", "") or "").strip().replace("\n", " ")
    return f" ({message[:200]})" if message else ""


def _reason(exc: Exception) -> str:
    text = str(exc)
    for known in ("Connection refused", "Name or service not known", "No route to host"):
        if known in text:
            return known.lower()
    return exc.__class__.__name__


def _note_url(env: Mapping[str, str], target: _Target, note_id: int) -> str:
    web = (env.get("CI_MERGE_REQUEST_PROJECT_URL") or env.get("CI_PROJECT_URL") or "").rstrip("/")
    if web:
        return f"{web}/-/merge_requests/{target.mr_iid}#note_{note_id}"
    return (
        f"{target.api_url}/projects/{target.project_id}/merge_requests/{target.mr_iid}"
        f"/notes/{note_id}"
    )


def find_note(notes, marker: str, user_id: int) -> int | None:
    """The id of the note to update: the oldest non-system note by user_id holding marker."""
    ours = [
        int(n["id"])
        for n in notes
        if not n.get("system")
        and marker in (n.get("body") or "")
        and (n.get("author") or {}).get("id") == user_id
    ]
    return min(ours) if ours else None


def upsert_note(
    body: str,
    *,
    marker: str,
    env: Mapping[str, str] | None = None,
    token_variable: str = "GITLAB_TOKEN",
) -> NoteResult:
    """Create the report note on the merge request, or update the one an earlier run wrote."""
    env = os.environ if env is None else env
    if not marker:
        raise ValueError("marker must not be empty")
    target = _target(env, token_variable)
    if marker not in body:
        body = body.rstrip("\n") + "\n\n" + marker + "\n"

    import gitlab
    import requests

    gl = _client(target)
    doing = "reading the token's user"
    try:
        gl.auth()
        user_id = gl.user.id
        mr = gl.projects.get(target.project_id, lazy=True).mergerequests.get(
            target.mr_iid, lazy=True
        )
        doing = f"listing the notes of merge request !{target.mr_iid}"
        notes = [n.attributes for n in mr.notes.list(iterator=True, per_page=PER_PAGE, sort="asc")]
        note_id = find_note(notes, marker, user_id)
        if note_id is None:
            doing = f"creating a note on merge request !{target.mr_iid}"
            note = mr.notes.create({"body": body})
            return NoteResult("created", int(note.id), _note_url(env, target, int(note.id)))
        doing = f"updating note {note_id} on merge request !{target.mr_iid}"
        mr.notes.update(note_id, {"body": body})
        return NoteResult("updated", note_id, _note_url(env, target, note_id))
    except (gitlab.exceptions.GitlabError, requests.exceptions.RequestException) as exc:
        raise _explain(exc, target, doing) from None
