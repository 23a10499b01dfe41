"""Picscale: a photo-sharing service built along the classic scaling path."""

__version__ = "0.1.0"
