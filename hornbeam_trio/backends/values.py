"""What a stored or published value may be, and how it is copied.

ETS hands back a copy, and Redis hands back what it decoded: either way,
mutating a value you got never changes the store.  We keep the same rule in
memory by copying JSON-like containers on the way in and on the way out, and by
refusing what would not survive a trip through Redis (sets, objects, non-string
keys) at the call that tries to store it, not later on another machine.
"""

from __future__ import annotations

from typing import Any

_IMMUTABLE = (str, int, float, bool, bytes, type(None))


def checked_copy(value: Any) -> Any:
    """A deep copy of a JSON-like value (bytes allowed); TypeError names what is not."""
    if isinstance(value, _IMMUTABLE):
        return value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"keys of stored/published dicts must be str, got {type(key).__name__}"
                )
            out[key] = checked_copy(item)
        return out
    if isinstance(value, (list, tuple)):
        return [checked_copy(item) for item in value]
    raise TypeError(
        f"{type(value).__name__} is not a JSON-like value "
        "(str, int, float, bool, None, bytes, list, dict)"
    )
