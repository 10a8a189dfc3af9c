"""Fitting user data into a cloud's size limit.

User data that fits is sent as it is, so the cloud console shows readable cloud-config. Larger
user data is gzip-compressed and base64-encoded: cloud-init recognises gzip by its magic bytes,
and its Hetzner datasource base64-decodes user data because that API takes text only.

Compression is deterministic here (no timestamp in the gzip header), but its bytes depend on
the zlib build: run `pulumi up` from one kind of machine (CI), or a different zlib (zlib-ng)
shows up as a user data change.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip

import pulumi

GZIP_MAGIC = b"\x1f\x8b"
# User data is a server's bootstrap (the app arrives as releases): the rung's own setup, a few
# KiB compressed, well under every limit. Of the app spec only the volumes reach it, one host
# volume each on the Nomad data node, so that is what a spec can do about it.
ADVICE = (
    "Of the app spec, only its volumes are in a server's user data (the Nomad data node "
    "declares each one as a host volume): declare fewer volumes, or give them shorter names"
)


class UserDataTooLarge(pulumi.RunError):
    """User data the cloud would refuse: the server could not be created. A RunError, so
    `pulumi up` and the offline plan stop with the message alone (no traceback)."""


def _quiet_leftovers() -> None:
    """The refusal ends the program and is reported once, but the futures of every resource that
    waited on this user data hold it too. Their event loop would print each one, traceback and
    all, when the garbage collector meets it later in a long-lived process (the next stack of
    `blueprints plan --all`); it is told to drop those, and only those."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    previous = loop.get_exception_handler()
    if getattr(previous, "drops_user_data_refusals", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if isinstance(context.get("exception"), UserDataTooLarge):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.drops_user_data_refusals = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


def _gzip(text: str) -> bytes:
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def encode(text: str, limit: int, *, base64_always: bool, what: str, cloud: str) -> str:
    """Text as the cloud takes it; UserDataTooLarge when even compressed it exceeds the limit.

    base64_always: the API field is base64 (AWS user_data_base64), and the limit applies to the
    decoded bytes; otherwise the field is text and the limit applies to the text sent.
    what: the server, cloud: the cloud's name, both for the message.
    """
    raw = text.encode()
    if len(raw) <= limit:
        return base64.b64encode(raw).decode() if base64_always else text
    packed = _gzip(text)
    sent = packed if base64_always else base64.b64encode(packed)
    if len(sent) > limit:
        form = "gzip-compressed" if base64_always else "gzip-compressed and base64-encoded"
        _quiet_leftovers()
        raise UserDataTooLarge(
            f"{what}: user data is {len(raw)} bytes, {len(sent)} bytes {form}, over "
            f"{cloud}'s limit of {limit} bytes; {cloud} would refuse the server. {ADVICE}"
        )
    return base64.b64encode(packed).decode()


def decode(value: str, *, base64_always: bool = False) -> str:
    """The cloud-config text back from what encode() produced."""
    if not base64_always and value.startswith("#"):
        return value
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return value
    if data.startswith(GZIP_MAGIC):
        data = gzip.decompress(data)
    return data.decode()
