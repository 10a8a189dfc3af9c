"""User data sizing: sent as text when it fits, gzip+base64 when it does not."""

from __future__ import annotations

import base64
import gzip

from blueprints.targets import userdata

SMALL = "#cloud-config\nruncmd: [echo hi]\n"
LARGE = "#cloud-config\nwrite_files:\n" + "".join(
    f"- path: /etc/f{i}\n  content: |\n    line {i} of a generated file\n" for i in range(2000)
)


def test_small_text_goes_as_is_or_plain_base64():
    assert userdata.encode(SMALL, 32768, base64_always=False, what="n", cloud="c") == SMALL
    b64 = userdata.encode(SMALL, 16384, base64_always=True, what="n", cloud="c")
    assert base64.b64decode(b64).decode() == SMALL
    assert userdata.decode(b64, base64_always=True) == SMALL
    assert userdata.decode(SMALL) == SMALL


def test_large_text_is_gzipped_deterministically_and_round_trips():
    a = userdata.encode(LARGE, 32768, base64_always=False, what="n", cloud="c")
    b = userdata.encode(LARGE, 32768, base64_always=False, what="n", cloud="c")
    assert a == b
    raw = base64.b64decode(a)
    assert raw[:2] == b"\x1f\x8b" and len(a) < 32768 < len(LARGE)
    assert gzip.decompress(raw).decode() == LARGE
    assert userdata.decode(a) == LARGE
    assert (
        userdata.decode(
            userdata.encode(LARGE, 16384, base64_always=True, what="n", cloud="c"),
            base64_always=True,
        )
        == LARGE
    )
