"""`StrEnum` on every Python the project supports: members are their values, in f-strings and JSON too."""

from __future__ import annotations

import sys
from enum import Enum

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # Python 3.10 (JetPack 6): the same behaviour, by hand

    class StrEnum(str, Enum):
        """An enum whose members are their values as strings (in f-strings and JSON too)."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return format(str(self.value), spec)


__all__ = ["StrEnum"]
