"""Makes infergate.cascade importable while setup.py does not list it yet (the editable install maps only
the folders it lists), by loading cascade/ from this checkout under that name."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

CASCADE_DIR = Path(__file__).resolve().parents[2] / "cascade"


def _register_cascade() -> None:
    if importlib.util.find_spec("infergate.cascade") is not None:
        return  # installed (setup.py lists it): import it the ordinary way
    spec = importlib.util.spec_from_file_location("infergate.cascade", CASCADE_DIR / "__init__.py",
                                                  submodule_search_locations=[str(CASCADE_DIR)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["infergate.cascade"] = module
    spec.loader.exec_module(module)


_register_cascade()
