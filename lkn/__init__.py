"""lkn: a homeostatic inference gateway for small GPU boxes."""
__version__ = "0.1.0"
