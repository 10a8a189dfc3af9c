"""Fitting user data into a cloud's size limit.

User data that fits is sent as it is, so the cloud console shows readable cloud-config. Larger
user data is gzip-compressed and base64-encoded: cloud-init recognises gzip by its magic bytes,
and its Hetzner datasource base64-decodes user data because that API takes text only.

Compression is deterministic here (no timestamp in the gzip header), but its bytes depend on
the zlib build: run `pulumi up` from one kind of machine (CI), or a different zlib (zlib-ng)
shows up as a user data change.
"""

from __future__ import annotations

import base64
import binascii
import gzip

import pulumi

GZIP_MAGIC = b"\x1f\x8b"


class UserDataTooLarge(ValueError):
    pass


def _gzip(text: str) -> bytes:
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def encode(text: str, limit: int, *, base64_always: bool, what: str) -> str:
    """Text as the cloud takes it.

    base64_always: the API field is base64 (AWS user_data_base64), and the limit applies to the
    decoded bytes; otherwise the field is text and the limit applies to the text sent.
    """
    raw = text.encode()
    if len(raw) <= limit:
        return base64.b64encode(raw).decode() if base64_always else text
    packed = _gzip(text)
    sent = packed if base64_always else base64.b64encode(packed)
    if len(sent) > limit:
        pulumi.log.warn(
            f"{what}: user data is {len(raw)} bytes ({len(sent)} compressed), over this "
            f"cloud's limit of {limit} bytes; the server will be rejected. Trim the spec."
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
