"""The release channel: everything about the app, delivered over SSH to the node that holds the
data volume, kept there and rolled out by the release agent (see CONTRACT.md)."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def agent_source() -> str:
    """The release agent's script, as the bootstrap ships it to every node."""
    return resources.files("blueprints.release").joinpath("agent.py").read_text()
