"""Finding apps: the bundled ones by name, a folder of modules, and the `llmasos.apps` entry-point group."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from llmasos.sdk.app import App

ENTRY_POINT_GROUP = "llmasos.apps"


def _instances(module: Any) -> list[App]:
    out: list[App] = []
    for value in vars(module).values():
        if isinstance(value, App):
            out.append(value)
        elif isinstance(value, type) and issubclass(value, App) and value is not App and hasattr(value, "manifest") \
                and value.__module__ == module.__name__:
            out.append(value())
    return out


def bundled_names() -> list[str]:
    """The apps that ship in `llmasos.apps` (each a package there)."""
    import llmasos.apps

    root = Path(llmasos.apps.__file__).parent
    return sorted(p.name for p in root.iterdir() if (p / "__init__.py").is_file() and not p.name.startswith("_"))


def bundled(name: str) -> App | None:
    """An app shipped in `llmasos.apps.<name>`."""
    try:
        module = importlib.import_module(f"llmasos.apps.{name}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("llmasos.apps"):
            return None
        raise
    found = [a for a in _instances(module) if a.manifest.name == name]
    return found[0] if found else None


def from_folder(folder: Path) -> list[App]:
    """Every App in the folder's modules (`*.py`, and packages with an `__init__.py`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"apps folder {folder} does not exist")
    out: list[App] = []
    for path in sorted(folder.iterdir()):
        init = path / "__init__.py" if path.is_dir() else path
        if not init.is_file() or init.suffix != ".py" or path.name.startswith("_"):
            continue
        mod_name = f"llmasos_user_apps.{folder.name}.{path.stem}"
        spec = importlib.util.spec_from_file_location(mod_name, init,
                                                      submodule_search_locations=[str(path)] if path.is_dir() else None)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
        out.extend(_instances(module))
    return out


def from_entry_points() -> list[App]:
    out: list[App] = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        out.append(obj() if isinstance(obj, type) else obj)
    return out
