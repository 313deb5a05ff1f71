"""Registries of stage variants, open to the user's own: a `package.module:function` is imported and kept
in the registry, so a camera's NV12 converter or a production NMS is a variant like the built-in ones.

Trust: a name is imported only by `load_user_function`, which is called for names the user typed on the
command line (`--variant color=mycam.isp:to_rgb`, MODEL as `package.module:factory`) or found in a file the
user passed with `--allow-code`. `lookup` never imports: a profile or gate file that names code without
that flag is refused (README, "Trust"), so a data or config file cannot run code by itself.
"""
from __future__ import annotations

import importlib

from harness.errors import UnknownName, UsageError


def is_code_reference(name) -> bool:
    """`package.module:function`: the form of a name that would import code."""
    return isinstance(name, str) and ":" in name


def load_user_function(registry: dict, kind: str, name: str):
    """Imports `package.module:function` into `registry` (the caller has the user's consent: see above)."""
    if name in registry:
        return registry[name]
    module_name, _, attribute = name.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError, TypeError) as err:
        raise UsageError(f"cannot import {kind} {name!r} ({type(err).__name__}: {err})") from None
    if not callable(function):
        raise UsageError(f"{kind} {name!r} is not callable")
    registry[name] = function
    return function


def lookup(registry: dict, kind: str, name: str):
    if name in registry:
        return registry[name]
    if is_code_reference(name):
        raise UsageError(f"{kind} {name!r} names code that was not loaded: code runs only when named on the "
                         "command line (--variant) or in a file passed with --allow-code")
    raise UnknownName(kind, name, sorted(k for k in registry if not is_code_reference(k))
                      + ["package.module:function"])
