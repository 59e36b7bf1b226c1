"""Old module paths kept for one release: importing one warns and re-exports from the new home."""

from __future__ import annotations

import importlib
import warnings


def reexport(old: str, names: dict[str, str]) -> dict:
    """Warn that module ``old`` moved, and return ``{name: object}`` for each ``name -> "new.module"``."""
    homes = sorted(set(names.values()))
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; import from {', '.join(homes)} instead",
        FutureWarning,
        stacklevel=3,
    )
    return {name: getattr(importlib.import_module(module), name) for name, module in names.items()}
