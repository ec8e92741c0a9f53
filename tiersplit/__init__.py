"""tiersplit: edge-cloud split inference; the command lives in :mod:`tiersplit.cli`."""

__all__ = ["__version__"]
__version__ = "0.1.0"
