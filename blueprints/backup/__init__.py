"""Backups off the servers, one mechanism for every rung: restic to the stack's S3 bucket.

- `node_backup`: `blueprints-backup`, the script on the node holding the data (backup with
  app-consistent dumps, snapshots, restore, load-dumps, check); stdlib, shipped as one file
  (node_kit inlined, see `backup_source`).
"""

from __future__ import annotations

from importlib import resources

from blueprints.release.node_kit_ship import shipped_source


def backup_source() -> str:
    """blueprints-backup as a node receives it: one self-contained file."""
    return shipped_source(resources.files("blueprints.backup") / "node_backup.py")
