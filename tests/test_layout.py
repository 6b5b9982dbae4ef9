"""Which part of mgmbus may import which: the rules of docs/architecture.md, checked on every module.

Imports are read from the source (ast), including those inside functions, so a lazy import cannot
slip past.  The rules:

- mgm.core's own modules (core/*.py) are the MGM's rules and nothing else: no I/O, no clock, no
  randomness, no logging; of mgmbus they import only each other and mgm.bus.status and mgm.bus.topics
  (the wire's statuses and stream names, which import nothing of mgmbus).
- mgm.bus knows nothing of the MGM: it imports no mgm.core and no mgm.plugins.
- mgm.core.runtime (configuration, logs, keys) serves every process: it imports mgm.bus and the
  rules' vocabulary (mgm.core.types), not the manager, the command line or plugins.
- mgm.core.manager (mgmd) imports no command line and no plugin.
- mgm.plugins reach the manager through the bus and the host: of mgm.core they import the vocabulary
  (mgm.core.types) and mgm.core.runtime only, never the state machine or the manager.
- mgm.core.cli is the top: the `mgm` command may import anything.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"core": "mgm.core", "bus": "mgm.bus", "plugins": "mgm.plugins"}
PURE_FORBIDDEN = {"socket", "select", "selectors", "zmq", "msgpack", "asyncio", "os", "time", "random",
                  "logging", "subprocess", "threading", "signal", "pyroute2", "sys"}  # fmt: skip
WIRE_VOCABULARY = {"mgm.bus.status", "mgm.bus.topics"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))}


def imports(path: Path, name: str) -> set[str]:
    """Every module `path` imports, absolute (relative imports resolved against `name`)."""
    return imports_in(path.read_text(), name, is_package=path.name == "__init__.py")


def imports_in(source: str, name: str, *, is_package: bool = False) -> set[str]:
    found: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def mgm_imports(path: Path, name: str) -> set[str]:
    """The mgmbus modules among `imports` (names that are a module, not an attribute of one)."""
    return mgm_imports_in(imports(path, name), name)


def mgm_imports_in(found: set[str], name: str) -> set[str]:
    return {m for m in found if m in KNOWN and m != name}


def under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def is_pure_core(module: str) -> bool:
    return module.count(".") == 2 and module.startswith("mgm.core.") and module not in SUBPACKAGES


SUBPACKAGES = {"mgm.core.manager", "mgm.core.cli", "mgm.core.runtime"}
ALL = modules()
KNOWN = set(ALL)


def test_the_layout_has_the_parts_the_rules_name() -> None:
    assert SUBPACKAGES <= KNOWN
    assert {"mgm.core.state", "mgm.core.types", "mgm.bus.status", "mgm.bus.topics", "mgm.plugins.host"} <= KNOWN


@pytest.mark.parametrize("module", sorted(m for m in ALL if is_pure_core(m) or m == "mgm.core"))
def test_the_rules_import_no_io_and_nothing_outside_them(module: str) -> None:
    found = imports(ALL[module], module)
    assert not {m.split(".")[0] for m in found} & PURE_FORBIDDEN, sorted(found)
    outside = {m for m in mgm_imports(ALL[module], module) if not is_pure_core(m)} - WIRE_VOCABULARY
    assert not outside, f"{module} imports {sorted(outside)}"


@pytest.mark.parametrize("module", sorted(WIRE_VOCABULARY))
def test_the_wire_vocabulary_imports_nothing_of_mgmbus(module: str) -> None:
    assert not mgm_imports(ALL[module], module)
    assert not {m.split(".")[0] for m in imports(ALL[module], module)} & PURE_FORBIDDEN


def broken(package: str, allowed: Callable[[str], bool]) -> list[str]:
    return [f"{module} imports {target}" for module, path in ALL.items() if under(module, package)
            for target in sorted(mgm_imports(path, module)) if not allowed(target)]  # fmt: skip


def test_the_bus_imports_nothing_of_the_mgm() -> None:
    assert broken("mgm.bus", lambda t: under(t, "mgm.bus")) == []


def test_the_runtime_imports_the_bus_and_the_vocabulary_only() -> None:
    allowed = ("mgm.bus", "mgm.core.runtime", "mgm.core.types")
    assert broken("mgm.core.runtime", lambda t: any(under(t, a) for a in allowed)) == []


def test_the_manager_imports_no_command_line_and_no_plugin() -> None:
    assert broken("mgm.core.manager", lambda t: not under(t, "mgm.core.cli") and not under(t, "mgm.plugins")) == []


def test_plugins_reach_the_manager_through_the_bus_not_its_internals() -> None:
    allowed = ("mgm.bus", "mgm.plugins", "mgm.core.runtime", "mgm.core.types")
    assert broken("mgm.plugins", lambda t: t == "mgm.core" or any(under(t, a) for a in allowed)) == []


def test_the_checker_sees_lazy_relative_and_from_imports() -> None:
    """The rules above are only as good as `imports`."""
    source = "import os\n\ndef f():\n    import socket\n    from ..bus import codec\n    from .state import Mgm\n"
    found = imports_in(source, "mgm.core.x")
    assert {"os", "socket", "mgm.bus.codec", "mgm.core.state"} <= found
    assert mgm_imports_in(found, "mgm.core.x") == {"mgm.bus", "mgm.bus.codec", "mgm.core.state"}
    assert is_pure_core("mgm.core.x") and not is_pure_core("mgm.core.manager.mgmd")
