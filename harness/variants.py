"""Registries of stage variants, open to the user's own: a name that is `package.module:function` is
imported on first use and kept in the registry, so a camera's NV12 converter or a production NMS is a
variant like the built-in ones (on the command line, `--variant color=mycam.isp:to_rgb`, or as a profile
field in TOML)."""
from __future__ import annotations

import importlib

from harness.errors import UnknownName, UsageError


def lookup(registry: dict, kind: str, name: str):
    if name in registry:
        return registry[name]
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            function = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as err:
            raise UsageError(f"cannot import {kind} {name!r} ({type(err).__name__}: {err})") from None
        if not callable(function):
            raise UsageError(f"{kind} {name!r} is not callable")
        registry[name] = function
        return function
    raise UnknownName(kind, name, sorted(registry) + ["package.module:function"])
