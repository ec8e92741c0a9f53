"""tiersplit: edge-cloud split inference. The ``tiersplit`` command lives in :mod:`tiersplit.cli`."""

__all__ = ["__version__"]
__version__ = "0.1.0"
