"""Slipway bundled app."""
