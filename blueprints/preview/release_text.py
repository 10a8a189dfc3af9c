"""Planned documents read with libyaml: user data, rendered manifests, releases.

yaml.CSafeLoader gives the values yaml.safe_load gives, an order of magnitude sooner; planned
user data and releases run to megabytes at hundreds of services, and nothing reading them
needs node marks. What a release command delivers is read by blueprints.release.bundle
(parse_delivered), with the same loader.
"""

from __future__ import annotations

from typing import Any

import yaml

YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str) -> Any:
    """yaml.safe_load(text), with libyaml."""
    return yaml.load(text, Loader=YAML_LOADER)


__all__ = ["YAML_LOADER", "load_yaml"]
