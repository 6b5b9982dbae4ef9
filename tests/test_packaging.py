"""The package layout: every folder with an __init__.py is installed.

setuptools' package-dir maps core/, bus/ and plugins/ to mgm.core, mgm.bus
and mgm.plugins, and `packages` lists every subpackage by hand; a folder
missing from that list would install without its code.
"""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_subpackage_is_listed() -> None:
    setuptools = _pyproject()["tool"]["setuptools"]
    mapping = setuptools["package-dir"]
    listed = set(setuptools["packages"])
    on_disk = {".".join([dotted, *init.parent.relative_to(ROOT / folder).parts])
               for dotted, folder in mapping.items() for init in (ROOT / folder).rglob("__init__.py")}  # fmt: skip
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - on_disk == set(), "these are listed but have no __init__.py"


def test_packages_import_from_the_tree() -> None:
    for dotted, folder in _pyproject()["tool"]["setuptools"]["package-dir"].items():
        assert Path(importlib.import_module(dotted).__file__ or "").parent == ROOT / folder


def test_entry_points_resolve() -> None:
    from importlib.metadata import entry_points

    plugins = entry_points(group="mgm.plugins")
    declared = _pyproject()["project"].get("entry-points", {}).get("mgm.plugins", {})
    assert set(declared) <= {ep.name for ep in plugins}, "reinstall (pip install -e .) after changing entry points"
    for ep in plugins:
        if ep.name in declared:
            assert ep.load() is not None
