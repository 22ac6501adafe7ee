"""Turn ``"module:attribute"`` into the ASGI application object.

Every way this can go wrong (no such module, the module itself raising, no such
attribute, not callable, a factory that fails) becomes one ``ImportFromStringError``
whose message is a single line a user can act on, so the CLI can print it without a
traceback.  The error inside the user's module is summarised with the file and line
where it was raised.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Any

from hornbeam_trio.types import ASGIApp


class ImportFromStringError(Exception):
    """The app reference could not be turned into an application; the message is one line."""


def load_app(app_ref: str, *, factory: bool, app_dir: str) -> ASGIApp:
    """Import ``module:attr`` (``attr`` may be dotted) with ``app_dir`` first on sys.path.

    With ``factory`` the attribute is called with no arguments and its result is the app,
    so an app can be built from configuration at start-up.
    """
    module_name, sep, attr_path = app_ref.partition(":")
    if not sep or not module_name or not attr_path:
        raise ImportFromStringError(
            f"cannot import {app_ref!r}: expected 'module:attribute', e.g. 'main:app'"
        )
    _put_first_on_path(app_dir)

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and _is_same_or_parent(exc.name, module_name):
            raise ImportFromStringError(f"cannot import {app_ref!r}: {exc}") from None
        # The module exists but something it imports does not: say where.
        raise ImportFromStringError(f"cannot import {app_ref!r}: {_describe(exc)}") from exc
    except Exception as exc:  # whatever the user's module raised, reported in one line
        raise ImportFromStringError(f"cannot import {app_ref!r}: {_describe(exc)}") from exc

    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportFromStringError(
                f"cannot import {app_ref!r}: module {module_name!r} has no attribute {attr_path!r}"
            ) from None

    if factory:
        if not callable(obj):
            raise ImportFromStringError(
                f"{app_ref!r} is not callable ({type(obj).__name__}), so it cannot be a factory"
            )
        try:
            obj = obj()
        except Exception as exc:
            raise ImportFromStringError(f"factory {app_ref!r} failed: {_describe(exc)}") from exc
        if not callable(obj):
            raise ImportFromStringError(
                f"factory {app_ref!r} returned a {type(obj).__name__}, not an ASGI application"
            )
    elif not callable(obj):
        raise ImportFromStringError(
            f"{app_ref!r} is not callable ({type(obj).__name__}), so it is not an ASGI application"
        )
    app: ASGIApp = obj
    return app


def _put_first_on_path(app_dir: str) -> None:
    path = os.path.abspath(app_dir)
    if not os.path.isdir(path):
        raise ImportFromStringError(f"app_dir {app_dir!r} is not a directory")
    if not sys.path or sys.path[0] != path:
        sys.path.insert(0, path)


def _is_same_or_parent(missing: str, module_name: str) -> bool:
    return module_name == missing or module_name.startswith(missing + ".")


def _describe(exc: BaseException) -> str:
    """``Type: message (file:line)``, the line being the deepest frame in the user's code.

    No location when the error is raised right at our call (a factory called with the
    wrong arguments): pointing into this module would mislead.
    """
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SyntaxError):
        return text  # its message already names the file and line
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith("<frozen ") and frame.filename != __file__
    ]
    if frames:
        text += f" ({frames[-1].filename}:{frames[-1].lineno})"
    return text.replace("\n", " ")


__all__ = ["ASGIApp", "ImportFromStringError", "load_app"]
