"""Load a script of scripts/ as a module, to call its ``main(argv)`` in-process."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]


def script_main(name: str) -> Callable[..., Any]:
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main
