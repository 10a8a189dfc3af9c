"""Targets: the clouds a blueprint can be built on, behind one interface (targets.base.Target)."""

from __future__ import annotations

import pulumi

from blueprints.settings import StackSettings
from blueprints.targets.base import FirewallRule, Target


def make_target(settings: StackSettings, parent: pulumi.Resource) -> Target:
    """The target for a stack; `localstack` is the aws target pointed at the emulator."""
    if settings.cloud == "aws":
        from blueprints.targets.aws import AwsTarget

        return AwsTarget(settings, parent)
    from blueprints.targets.hcloud import HcloudTarget

    return HcloudTarget(settings, parent)


__all__ = ["FirewallRule", "Target", "make_target"]
