"""sdpo: post-training language models from feedback, above all from what users say next."""

__version__ = "0.1.0"

# The rich-feedback trainer pulls in TRL; load it only when asked for, so that
# `import sdpo` (and the CLI) stay fast.
_LAZY = {"SDPOTrainer": "sdpo.trainers.rich", "SDPOConfig": "sdpo.trainers.rich"}

__all__ = ["SDPOConfig", "SDPOTrainer", "__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sdpo' has no attribute {name!r}")
