"""Hooks named by an import path (``drifttrio serve --hooks``, ``DRIFTTRIO_HOOKS``)."""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING

from .._errors import ConfigError
from ._api import Hooks

if TYPE_CHECKING:
    from ..runtime.config import Config

__all__ = ["configured_hooks", "load_hooks"]


def configured_hooks(config: Config) -> Hooks | None:
    """The hooks a config asks for: the ``hooks`` import path, or webhooks
    (``webhook_url``...), or none. :class:`ConfigError` if they cannot be had."""
    if config.webhook_url or config.webhook_secret:
        from .webhooks import hooks_from_config  # httpx is imported only when used

        return hooks_from_config(config)
    return load_hooks(config.hooks) if config.hooks else None


def load_hooks(path: str) -> Hooks:
    """The :class:`Hooks` that ``module:attr`` names: an instance, or a class or
    factory called with no arguments. One clear :class:`ConfigError` otherwise."""
    module_name, sep, attr = path.partition(":")
    # As ``python -m`` and ASGI servers do: the application's module may live in
    # the directory the server was started from.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if not sep or not module_name or not attr:
        raise ConfigError(f"hooks must be 'module:attribute', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module failed while importing
        raise ConfigError(f"hooks: cannot import {module_name!r}: {exc}") from None
    target: object = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"hooks: {module_name!r} has no attribute {attr!r}") from None
    if isinstance(target, Hooks):
        return target
    if callable(target):
        try:
            made = target()
        except Exception as exc:
            raise ConfigError(f"hooks: {path} raised {type(exc).__name__}: {exc}") from None
        if isinstance(made, Hooks):
            return made
        target = made
    raise ConfigError(f"hooks: {path} is a {type(target).__name__}, not a drifttrio.hooks.Hooks")
