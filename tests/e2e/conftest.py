"""The namespace fixture for the end-to-end tests (tests/netns.py holds it; a conftest makes it visible)."""

from netns import topology

__all__ = ["topology"]
