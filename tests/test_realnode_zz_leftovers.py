"""Runs after the other real-node modules (pytest collects files in order, and their node
fixtures are module-scoped): nothing they started or created may still be there."""

from __future__ import annotations

from tests.realnode.host import leftovers, require_host


def test_nothing_left_behind():
    require_host()
    assert leftovers() == []
