"""One package per rung of the ladder: its Pulumi component, the bootstrap its machines boot
with, the release that ships the app to them, its spec rules, its failure model and its
templates. A rung that has not moved here yet still lives in blueprints/<rung>.py and
blueprints/render/<rung>.py.
"""
