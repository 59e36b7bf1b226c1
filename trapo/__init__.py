"""TRAPO: Trust-Region Adaptive Policy Optimization on TRL.

``trapo.core`` holds the pure math and imports only torch; the trainer (TRL, transformers) is imported
lazily so ``import trapo.core`` stays light.
"""

__version__ = "0.1.0"

_LAZY = {"TRAPOConfig": "trapo.config", "TRAPOTrainer": "trapo.trainer"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trapo' has no attribute {name!r}")


__all__ = ["TRAPOConfig", "TRAPOTrainer", "__version__"]
