"""The data error: every problem with a file (or an array in a file) names that file."""

from __future__ import annotations

import os

from multiseg.errors import UserError


class DataError(ValueError, UserError):
    """A bad data file: unreadable, mask missing or of the wrong size, NaN pixels, bad labels...

    ``path`` is the file at fault (``images/a.png``, ``set.npz:images[3]``) or the folder when
    nothing usable was found; the message says what was expected and how to fix it.

    Example:
        >>> raise DataError("masks/a.png", "is 64x48 but its image images/a.png is 64x64")
    """

    def __init__(self, path: str | os.PathLike, message: str):
        self.path = os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}")
