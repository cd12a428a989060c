"""Errors a user can act on: one line naming the file, layer, field or value at fault."""

import reprlib


class LavaconvError(Exception):
    """A problem with the user's input (model, data, profile, options); exit code 2."""


def cut(text: str, limit: int = 160) -> str:
    """``text`` cut to ``limit`` characters for a message (user data can be huge)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxdict, _BRIEF.maxlist, _BRIEF.maxtuple = 2, 4, 4, 4
_BRIEF.maxstring = _BRIEF.maxother = _BRIEF.maxlong = 80


def check_int(name: str, value: object, lo: int, hi: int | None = None) -> None:
    """Refuse ``value`` unless it is an integer in ``[lo, hi]`` (for settings given from
    Python, which argparse did not check)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (
            hi is not None and value > hi):
        span = f"[{lo}, {'inf' if hi is None else hi}]"
        raise LavaconvError(f"{name} {shown(value)}: expected an integer in {span}")


def shown(value: object, limit: int = 80) -> str:
    """A short ``repr(value)`` for a message: nested and long data abbreviated (never built in
    full), at most ``limit`` characters."""
    return cut(_BRIEF.repr(value), limit)
