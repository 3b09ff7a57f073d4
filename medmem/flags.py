"""Yes/no settings that may arrive as text.

``python -m monai.bundle run ... --rotate90 false`` hands the config the *string* ``'false'`` (Fire parses only
Python literals: ``False``), and a non-empty string is true: before this, ``--rotate90 false``,
``--intensity_augment false`` and ``--resume false`` all switched their setting on (docs/design.md, "Session 13").
Every consumer of such a setting reads it through :func:`as_flag`.
"""

from __future__ import annotations

TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off", "")


def as_flag(value: object, name: str = "setting") -> bool:
    """``value`` as a bool: bools and 0/1 as they are, text ``true/false`` (also ``1/0``, ``yes/no``, ``on/off``, any
    case); anything else is refused with an error naming the setting."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise ValueError(f"{name} must be true or false, got {value!r}")
