"""Import a script of ``benchmarks/`` by its file name, as tests of its pure parts need.

The scripts are not a package: run as ``python benchmarks/x.py`` they find their siblings
(``from regrowth_trajectory import Cache``) because the script's folder is on ``sys.path``.
Putting that folder on the path here gives an imported script the same view, so a script and
its siblings load once each, under their own names.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as module ``name`` (imported once, then reused)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)
