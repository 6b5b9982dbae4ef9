"""The namespace fixture for the PIM tests (tests/netns.py holds it; a conftest makes it visible)."""

from netns import topology

__all__ = ["topology"]
