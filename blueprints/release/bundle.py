"""The two documents a release travels in (see CONTRACT.md): what the app runs (RELEASE, not
secret, so a preview shows it line by line) and the secret files it needs (SECRETS, a secret).

Both are YAML with sorted keys and every multi-line text as a `|` block, so a changed line of a
unit file is one changed line of the document. Digests are HMAC-SHA256 keyed with the stack's
deploy private key: the release names the secrets it needs without revealing anything about them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

# The formats and the release id are the agent's: what the node checks is what is built here.
from blueprints.release.agent import RELEASE_FORMAT, SECRETS_FORMAT, release_id
from blueprints.yaml_text import FastDumper, SafeDumper, fast_load

DIGEST_CHARS = 16


class BundleError(ValueError):
    """A text is not the release (or secrets) document it claims to be; one sentence why."""


@dataclass(frozen=True)
class Documents:
    """A release's two documents (the secrets one is None when the app has no secrets)."""

    release: str
    secrets: str | None


@dataclass(frozen=True)
class ServiceRelease:
    """One service as the agent rolls it out."""

    name: str
    image: str
    replicas: int
    # "surge": stateless, new containers are healthy before old ones stop; "restart": stop first.
    rollout: str
    # Digest of the container definition (everything but the replica count).
    digest: str
    # Seconds a new container may take to become healthy; None: no health check.
    budget: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "health": None if self.budget is None else {"budget": self.budget},
            "image": self.image,
            "name": self.name,
            "replicas": self.replicas,
            "rollout": self.rollout,
        }


@dataclass(frozen=True)
class TaskRelease:
    """One task as the agent runs it: once per release, after the release's files are installed
    and its images pulled, before any container is replaced; in the document's order."""

    name: str
    # The command the agent runs on the node (single-vm: the task's script; compose: an
    # `app-compose run`); it should stop the work itself at `timeout` seconds.
    argv: list[str]
    # Seconds the task may take; the agent gives up on it (and on the release) a little later.
    timeout: int
    # Services the task reaches (its service's dependencies, a database): a release bringing
    # them new starts them before the tasks run. Written only when there are some.
    needs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"argv": list(self.argv), "name": self.name, "timeout": self.timeout}
        if self.needs:
            out["needs"] = list(self.needs)
        return out


def digest(key: str, *parts: object) -> str:
    """HMAC of the parts' canonical JSON, keyed with `key` (the deploy private key)."""
    body = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(key.encode(), body.encode(), hashlib.sha256).hexdigest()[:DIGEST_CHARS]


def _files(files: Mapping[str, str], modes: Mapping[str, str]) -> dict[str, dict[str, str]]:
    return {path: {"mode": modes[path], "text": files[path]} for path in sorted(files)}


def secrets_document(
    key: str, files: Mapping[str, str], modes: Mapping[str, str] | None = None
) -> tuple[str | None, str | None]:
    """(digest, document) of the secret files (mode 0600 unless `modes` says otherwise: a
    service's secret file keeps its own); (None, None) when the app has none."""
    if not files:
        return None, None
    body = _files(files, {path: (modes or {}).get(path, "0600") for path in files})
    name = digest(key, SECRETS_FORMAT, body)
    return name, dump({"digest": name, "files": body, "format": SECRETS_FORMAT})


def release_document(
    key: str,
    *,
    rung: str,
    app: str,
    services: Sequence[ServiceRelease],
    files: Mapping[str, str],
    modes: Mapping[str, str],
    volumes: Sequence[str],
    units: Sequence[str],
    secrets: str | None,
    tasks: Sequence[TaskRelease] = (),
) -> str:
    """The release document; `tasks` appear (key `tasks`) only when there are some, so that a
    release without tasks is the document (and has the id) it had before tasks existed."""
    body: dict[str, Any] = {
        "app": app,
        "files": _files(files, modes),
        "format": RELEASE_FORMAT,
        "rung": rung,
        "secrets": secrets,
        "services": [s.as_dict() for s in services],
        "units": sorted(units),
        "volumes": sorted(volumes),
    }
    if tasks:
        body["tasks"] = [t.as_dict() for t in tasks]
    body["release"] = release_id(body)
    return dump(body)


class _BlockDumper(SafeDumper):
    """Blocks for multi-line text; a string another YAML reader would take for a bool, number,
    null or date quoted (blueprints/yaml_text.py)."""


# Characters YAML does not keep as themselves inside a block: control characters, and the
# other characters YAML reads as a line break (NEL, LS, PS) or a byte order mark.
_NOT_PLAIN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff]")
_NOT_PLAIN_LINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff]")
# A space or tab at the end of a line, which a block cannot hold.
_TRAILING = re.compile(r"[ \t](?:\n|$)")


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    # Block style for multi-line text (readable diffs) that a block can hold as it is.
    if "\n" in value and not _NOT_PLAIN.search(value) and not _TRAILING.search(value):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    if _NOT_PLAIN_LINE.search(value):
        # Double quotes escape every such character (PyYAML would fold a NEL in other styles).
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_BlockDumper.add_representer(str, _str)


class _FastBlockDumper(FastDumper):
    """_BlockDumper on libyaml's emitter: the same bytes for every document _fast_ok accepts."""


_FastBlockDumper.add_representer(str, _str)

# Where libyaml's emitter writes other bytes than PyYAML's (found by comparing the two on random
# documents): a character beyond U+FFFF (libyaml escapes it even in a plain or block scalar); a
# key PyYAML does not write as a simple key (empty, multi-line, or 123 characters and more,
# where libyaml counts 128 bytes); a block kept with `|+` (libyaml then ends the document with
# `...`); a double-quoted string long enough to be folded (libyaml folds elsewhere). A lone
# surrogate is not UTF-8, which libyaml refuses.
_ASTRAL = re.compile("[\U00010000-\U0010ffff\ud800-\udfff]")
# What makes a string double-quoted: _NOT_PLAIN_LINE (the representer asks for it), or in a
# block a tab, U+FFFE or U+FFFF (the emitter does not write those in a block).
_DOUBLE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")
_BREAK = re.compile("[\r\n\x85\u2028\u2029]")
_KEY_BYTES = 120
_QUOTED_CHARS = 500


def _fast_str(value: str) -> bool:
    if _ASTRAL.search(value):
        return False
    if "\n" in value and not _DOUBLE.search(value) and not _TRAILING.search(value):
        return not value.endswith("\n\n") and value != "\n"  # a block, not kept with |+
    if "\n" in value or _DOUBLE.search(value):
        return len(value) < _QUOTED_CHARS  # quoted on several lines or double: never folded
    return True  # one line, plain or single-quoted, which both emitters fold alike


def _fast_ok(value: object, seen: set[int]) -> bool:
    """Whether libyaml writes `value` as PyYAML does: only str, int, bool and None scalars,
    strings and keys in the classes above, no object twice (an anchor)."""
    if isinstance(value, str):
        return _fast_str(value)
    if value is None or isinstance(value, (bool, int)):
        return True
    if isinstance(value, (dict, list)):
        if id(value) in seen:
            return False
        seen.add(id(value))
        if isinstance(value, list):
            return all(_fast_ok(item, seen) for item in value)
        return all(
            isinstance(k, str)
            and k != ""
            and len(k.encode()) < _KEY_BYTES
            and not _BREAK.search(k)
            and not _DOUBLE.search(k)
            and _fast_str(k)
            and _fast_ok(v, seen)
            for k, v in value.items()
        )
    return False


def dump(body: Mapping[str, Any]) -> str:
    """The document's text; by libyaml when it writes the same bytes (several times faster:
    the text is hashed, so any byte PyYAML would write differently would change a digest)."""
    data = dict(body)
    return yaml.dump(
        data,
        Dumper=_FastBlockDumper if _fast_ok(data, set()) else _BlockDumper,
        sort_keys=True,
        allow_unicode=True,
        default_flow_style=False,
        width=4096,
    )


def _load(text: object, what: str) -> dict[str, Any]:
    if not isinstance(text, str):
        raise BundleError(f"the {what} document is not text")
    try:
        body = fast_load(text)
    except yaml.YAMLError as exc:
        raise BundleError(f"the {what} document is not YAML ({exc.__class__.__name__})") from None
    if not isinstance(body, dict):
        raise BundleError(f"the {what} document is not a YAML mapping")
    return body


def parse_release(text: object) -> dict[str, Any]:
    """The release document as a dict, checked: its format, its id, its services and files."""
    return _checked_release(_load(text, "release"))


def _checked_release(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("format") != RELEASE_FORMAT:
        raise BundleError(
            f"not a release document: format is {body.get('format')!r}, expected {RELEASE_FORMAT}"
        )
    try:
        expected = release_id(body)
    except (TypeError, ValueError):  # a date, a set or a binary value: not what we write
        raise BundleError("the release document holds values no release document has") from None
    if body.get("release") != expected:
        raise BundleError(
            "the release document's id does not match its content (edited or truncated)"
        )
    services = body.get("services")
    if not isinstance(services, list) or not all(
        isinstance(s, dict) and isinstance(s.get("name"), str) for s in services
    ):
        raise BundleError("the release document's services are not a list of named services")
    files = body.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(f, dict) and isinstance(f.get("text"), str) for f in files.values()
    ):
        raise BundleError("the release document's files are not a map of path to mode and text")
    return body


def parse_secrets(text: object) -> dict[str, Any]:
    return _checked_secrets(_load(text, "secrets"))


def _checked_secrets(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("format") != SECRETS_FORMAT:
        raise BundleError(
            f"not a secrets document: format is {body.get('format')!r}, expected {SECRETS_FORMAT}"
        )
    if not isinstance(body.get("files"), dict):
        raise BundleError("the secrets document's files are not a map of path to mode and text")
    return body


def parse_delivered(text: object) -> tuple[str, dict[str, Any]] | None:
    """("release.yaml" or "secrets.yaml", its body) when `text` (a command's stdin) is a
    document parse_release or parse_secrets accepts, else None; the text is parsed once."""
    try:
        body = _load(text, "delivered")
    except BundleError:
        return None
    for name, check in (("release.yaml", _checked_release), ("secrets.yaml", _checked_secrets)):
        try:
            return name, check(body)
        except BundleError:
            continue
    return None
