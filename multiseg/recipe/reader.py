"""Reading a recipe: the error it raises, a cursor over one mapping, and the value checks.

``Section`` reads one mapping of the recipe: it knows its field path, which keys were used,
and refuses unknown keys with a suggestion. The value checks (``positive``, ``at_most``...)
return why a value does not fit, or None; ``Section.get`` turns that into a ``RecipeError``
naming the field. The words of every message come from ``multiseg.options``, which the loss,
metric and source checks share.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from multiseg.errors import UserError
from multiseg.options import OptionError, check_value, show, suggest, type_name

Check = Callable[[Any], "str | None"]


# Whether reading a recipe also builds its losses and metrics and tries its activation, so
# that bad option values fail at load time. Those checks import Keras; the commands read a
# recipe once without them (answering most mistakes before Keras starts), then with them.
BUILD_CHECKS: contextvars.ContextVar[bool] = contextvars.ContextVar("build_checks",
                                                                    default=True)


@contextlib.contextmanager
def build_checks(enabled: bool):
    """Recipes read inside are checked with (True) or without (False) ``BUILD_CHECKS``."""
    token = BUILD_CHECKS.set(enabled)
    try:
        yield
    finally:
        BUILD_CHECKS.reset(token)


class RecipeError(ValueError, UserError):
    """A recipe mistake: ``path`` is the field (``heads.mask.loss[0].name``) or file at fault."""

    def __init__(self, path: str, message: str):
        # One line on the terminal, whatever the message quotes.
        message = " ".join(message.splitlines())
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


def key_text(key: Any) -> str:
    """A user's key as a piece of a field path: as written, or quoted (and shortened) when it
    is empty, long, or holds spaces or characters that do not print: a path stays one
    readable word."""
    text = str(key)
    plain = 0 < len(text) <= 80 and text.isprintable() and not any(c.isspace() for c in text)
    return text if plain else show(text)


def tidy(message: str) -> str:
    """A message from a data source or a loss/metric, shortened where it quotes a long value
    (a path, a number of a thousand digits) that the recipe gave it."""
    message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    return re.sub(r"\S{121,}", lambda m: f"{m[0][:50]}...{m[0][-50:]}", message)


def checked(value: Any, kind: type | tuple[type, ...], path: str,
            check: Check | None = None) -> Any:
    """``value`` checked by ``multiseg.options.check_value``; a ``RecipeError`` at ``path``."""
    try:
        return check_value(value, kind, path, check)
    except OptionError as exc:
        raise RecipeError(exc.key, exc.message) from None


class Section:
    """Reads one mapping of the recipe, remembering its path and the keys used."""

    def __init__(self, raw: Any, path: str, expected: str = "a mapping"):
        # ``expected`` says what belongs here, with an example, for the error on a non-mapping.
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise RecipeError(path, f"expected {expected}, got {type_name(raw)} ({show(raw)})")
        for key in raw:
            if not isinstance(key, str):
                raise RecipeError(path, f"keys must be strings, got {type_name(key)}"
                                  f" ({show(key)}); YAML reads unquoted yes, no, on, off,"
                                  " null and numbers as values: quote such a key")
        self.raw = raw
        self.path = path
        self.used: set[str] = set()

    def sub(self, key: str) -> str:
        return f"{self.path}.{key_text(key)}" if self.path else key_text(key)

    def has(self, key: str) -> bool:
        return key in self.raw

    def raw_value(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.raw.get(key, default)

    def section(self, key: str, expected: str = "a mapping") -> Section:
        return Section(self.raw_value(key), self.sub(key), expected)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...,
            check: Check | None = None) -> Any:
        self.used.add(key)
        if key not in self.raw or self.raw[key] is None and default is not ...:
            if default is ...:
                raise self.missing(key)
            return default
        return checked(self.raw[key], kind, self.sub(key), check)

    def missing(self, key: str, explain: str = "") -> RecipeError:
        """The error for a required key that is absent; a misspelling of it is pointed out."""
        typo = difflib.get_close_matches(key, [k for k in self.raw if k not in self.used],
                                         n=1, cutoff=0.6)
        hint = f" (found '{typo[0]}': a misspelling of '{key}'?)" if typo else ""
        return RecipeError(self.sub(key), f"is required{explain}{hint}")

    def choice(self, key: str, choices: tuple[str, ...], default: Any = ...) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise RecipeError(self.sub(key), f"unknown value {show(value)}"
                              f"{suggest(value, choices)}."
                              f" Expected one of: {', '.join(choices)}")
        return value

    def expect(self, *keys: str) -> None:
        """Declares the keys this mapping may hold and refuses any other at once: a misspelled
        key is usually the cause of the errors that would follow it, so it is reported first.
        It takes the place of ``finish``."""
        self.used.update(keys)
        self.finish()

    def finish(self) -> None:
        unknown = [k for k in self.raw if k not in self.used]
        if unknown:
            key = unknown[0]
            raise RecipeError(self.sub(key), f"unknown key{suggest(key, sorted(self.used))}."
                              f" Known keys here: {', '.join(sorted(self.used))}")


# ---------------------------------------------------------------------------------------------
# Value checks: why a value does not fit, or None.


def positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def below_one(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def inside_unit(value: float) -> str | None:
    return None if 0 < value < 1 else "must be in (0, 1)"


def at_most(limit: float) -> Check:
    text = f"{limit:g}" if float(f"{limit:g}") == limit else str(int(limit))  # 2**32 - 1 too
    return lambda value: None if value <= limit else f"must be <= {text}"


def every(*checks: Check) -> Check:
    """The first problem any of ``checks`` finds."""
    def run(value: Any) -> str | None:
        for check in checks:
            problem = check(value)
            if problem:
                return problem
        return None
    return run


def int_list(raw: Any, path: str, *, min_len: int, check: Check = positive,
             max_value: int = 4096) -> tuple[int, ...]:
    """A list of integers (one integer stands for a list of one), each checked."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, list):
        raise RecipeError(path, f"expected a list of integers, got {type_name(raw)}"
                          f" ({show(raw)})")
    if len(raw) < min_len:
        raise RecipeError(path, f"needs at least {min_len} entr{'y' if min_len == 1 else 'ies'}")
    return tuple(checked(v, int, f"{path}[{i}]", every(check, at_most(max_value)))
                 for i, v in enumerate(raw))


def run_name_problem(text: str) -> str | None:
    """Why ``text`` cannot name a run directory (runs/<name>), or None."""
    if not text:
        return "must be a non-empty name (it names the run directory)"
    if len(text) > 255:
        return (f"must be a name of at most 255 characters (it names the run directory), has"
                f" {len(text)}")
    if "/" in text:
        return "must be a name without '/' (it names one run directory, runs/<name>)"
    if text.strip() != text:
        return "must be a name without surrounding spaces"
    if not text.isprintable():
        return "must be a name without control characters"
    if text in (".", ".."):
        return "must be a name other than '.' and '..' (it names the run directory)"
    return None


def output_problem(path: str) -> str | None:
    """Why ``path`` cannot name a run directory, judged from the text alone, or None."""
    if not path.strip():
        return "must be a non-empty path (the run directory)"
    if not path.isprintable():
        return "must be a path without control characters"
    if len(path) > 4096 or any(len(part.encode()) > 255 for part in path.split(os.sep)):
        return "must be a path of at most 4096 characters, and 255 bytes for each of its parts"
    return None
