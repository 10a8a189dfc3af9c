"""A small GitLab stand-in on 127.0.0.1: the merge-request notes endpoints, real HTTP.

Implements what upsert_note uses, shaped like GitLab's REST API v4:
  GET  /api/v4/user                                             (the token's user)
  GET  /api/v4/projects/:id/merge_requests/:iid/notes           (paginated like GitLab)
  POST /api/v4/projects/:id/merge_requests/:iid/notes           ({"body": ...} -> 201)
  PUT  /api/v4/projects/:id/merge_requests/:iid/notes/:note_id  ({"body": ...} -> 200)
Authentication is the PRIVATE-TOKEN header; a user may only edit their own notes (403 otherwise),
as on GitLab. `fail_with = 403` makes every request answer that status.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

NOTES = re.compile(r"^/api/v4/projects/([^/]+)/merge_requests/(\d+)/notes(?:/(\d+))?$")

BOT = {"id": 7, "username": "preview-bot", "name": "Preview bot"}
ALICE = {"id": 3, "username": "alice", "name": "Alice"}


@dataclass
class World:
    tokens: dict[str, dict] = field(default_factory=dict)
    # (project id, mr iid) -> list of notes (dicts as GitLab returns them)
    notes: dict[tuple[str, int], list[dict]] = field(default_factory=dict)
    max_per_page: int = 100
    fail_with: int | None = None
    log: list[tuple[str, str]] = field(default_factory=list)
    next_id: int = 1000

    def add_note(self, project: str, iid: int, author: dict, body: str, system=False) -> dict:
        self.next_id += 1
        note = {
            "id": self.next_id,
            "body": body,
            "author": dict(author),
            "system": system,
            "noteable_type": "MergeRequest",
            "noteable_iid": iid,
            "created_at": f"2025-01-01T00:00:{self.next_id % 60:02d}Z",
            "updated_at": f"2025-01-01T00:00:{self.next_id % 60:02d}Z",
        }
        self.notes.setdefault((project, iid), []).append(note)
        return note


class _Handler(BaseHTTPRequestHandler):
    world: World  # set on the subclass per server

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def _send(self, status: int, payload, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if "json" in (self.headers.get("Content-Type") or ""):
            return json.loads(raw or b"{}")
        return {k: v[0] for k, v in parse_qs(raw.decode()).items()}

    def _handle(self, method: str) -> None:
        w = self.world
        url = urlsplit(self.path)
        w.log.append((method, url.path + (f"?{url.query}" if url.query else "")))
        body = self._body() if method in ("POST", "PUT") else {}
        if w.fail_with is not None:
            messages = {
                401: "401 Unauthorized",
                403: "403 Forbidden",
                404: "404 Not Found",
                500: "500 Internal Server Error",
            }
            self._send(w.fail_with, {"message": messages.get(w.fail_with, "error")})
            return
        user = w.tokens.get(self.headers.get("PRIVATE-TOKEN") or "")
        if user is None:
            self._send(401, {"message": "401 Unauthorized"})
            return
        if method == "GET" and url.path == "/api/v4/user":
            self._send(200, {**user, "state": "active"})
            return
        m = NOTES.match(url.path)
        if not m:
            self._send(404, {"error": "404 Not Found"})
            return
        key = (m.group(1), int(m.group(2)))
        if key not in w.notes:
            self._send(404, {"message": "404 Not found"})
            return
        notes = w.notes[key]
        note_id = int(m.group(3)) if m.group(3) else None
        if method == "GET" and note_id is None:
            self._list(url, notes)
        elif method == "POST" and note_id is None:
            if not body.get("body"):
                self._send(400, {"message": "400 Bad request - body is missing"})
                return
            note = w.add_note(key[0], key[1], user, body["body"])
            self._send(201, note)
        elif method == "PUT" and note_id is not None:
            note = next((n for n in notes if n["id"] == note_id), None)
            if note is None:
                self._send(404, {"message": "404 Note Not Found"})
            elif note["author"]["id"] != user["id"]:
                self._send(403, {"message": "403 Forbidden"})
            else:
                note["body"] = body["body"]
                note["updated_at"] = "2025-01-02T00:00:00Z"
                self._send(200, note)
        else:
            self._send(405, {"message": "405 Method Not Allowed"})

    def _list(self, url, notes: list[dict]) -> None:
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        per_page = min(int(query.get("per_page", 20)), self.world.max_per_page)
        page = int(query.get("page", 1))
        ordered = sorted(notes, key=lambda n: n["id"], reverse=query.get("sort") != "asc")
        total_pages = max(1, -(-len(ordered) // per_page))
        chunk = ordered[(page - 1) * per_page : page * per_page]
        base = f"http://{self.headers['Host']}{url.path}"

        def link(p: int) -> str:
            return f"{base}?{urlencode({**query, 'page': p, 'per_page': per_page})}"

        links = []
        if page < total_pages:
            links.append(f'<{link(page + 1)}>; rel="next"')
        if page > 1:
            links.append(f'<{link(page - 1)}>; rel="prev"')
        links += [f'<{link(1)}>; rel="first"', f'<{link(total_pages)}>; rel="last"']
        headers = {
            "X-Page": str(page),
            "X-Per-Page": str(per_page),
            "X-Total": str(len(ordered)),
            "X-Total-Pages": str(total_pages),
            "X-Next-Page": str(page + 1) if page < total_pages else "",
            "X-Prev-Page": str(page - 1) if page > 1 else "",
            "Link": ", ".join(links),
        }
        self._send(200, chunk, headers)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")


class FakeGitLab:
    """Start with `FakeGitLab()`, stop with `.stop()`; `.api_url` is CI_API_V4_URL."""

    def __init__(self) -> None:
        self.world = World()
        handler = type("Handler", (_Handler,), {"world": self.world})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def api_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/api/v4"

    def reset(self) -> World:
        fresh = World()
        self.world.__dict__.update(fresh.__dict__)
        return self.world

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
