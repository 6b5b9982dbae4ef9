"""Plugins that do not fit the hook specs: the host must refuse them at start."""

from __future__ import annotations

from mgm.core.types import Interface
from mgm.plugins.context import PluginContext
from mgm.plugins.hookspecs import hookimpl


class Misspelled:
    """`mgm_local_joins` is no hook: a typo that must not wait for the first event to show."""

    @hookimpl
    def mgm_protocol(self) -> tuple[int, int]:
        return 200, 1

    @hookimpl
    def mgm_local_joins(self, mgm: PluginContext, interface: Interface) -> None:
        raise AssertionError("never called")


class WrongArgument:
    """`iface` is not an argument of mgm_local_join."""

    @hookimpl
    def mgm_protocol(self) -> tuple[int, int]:
        return 201, 1

    @hookimpl
    def mgm_local_join(self, mgm: PluginContext, iface: Interface) -> None:
        raise AssertionError("never called")
