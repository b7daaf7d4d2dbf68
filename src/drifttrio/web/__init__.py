"""The web layer: the ASGI application."""

from .app import DriftApp as DriftApp

__all__ = ["DriftApp"]
