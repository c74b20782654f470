"""sdpo: post-training language models from feedback, above all from what users say next."""

__version__ = "0.1.0"
