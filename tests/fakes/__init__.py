"""In-process fakes of external services for tests."""

from .hcloud_api import DROP, RULE_ERRORS, FakeHcloud

__all__ = ["DROP", "RULE_ERRORS", "FakeHcloud"]
