"""A stop a signal asked for, held off while C code is calling back into Python.

Python runs a signal handler between two bytecodes of the main thread, and that can be inside a
Python callback that C code called (XGBoost's DataIter, while a QuantileDMatrix is built). An
exception raised there leaves the callback through C: the library goes on with a garbage return
value and the process aborts (`malloc(): invalid size`), as a killed training once did in CI.

So code that hands Python callbacks to C runs the C call inside `callbacks_from_c()`. A handler
that sees `in_c_callbacks()` only records the stop (`request()`); the callbacks call
`raise_if_requested()`, whose ordinary exception the library catches and raises again once its
C call has returned; and the section raises on its way out if its callbacks never got the chance.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

_requested: list[str] = []  # why, once a stop is asked for
_sections = 0  # callbacks_from_c() sections open in this process


class StopRequested(RuntimeError):
    """Raised inside a callback from C (an Exception, so the library carries it out)."""


def request(why: str) -> None:
    if not _requested:
        _requested.append(why)


def requested() -> str | None:
    return _requested[0] if _requested else None


def clear() -> None:
    _requested.clear()


def in_c_callbacks() -> bool:
    return _sections > 0


def raise_if_requested() -> None:
    if _requested:
        raise StopRequested(_requested[0])


@contextmanager
def callbacks_from_c() -> Iterator[None]:
    """Run a C call that calls back into Python; a stop asked for meanwhile raises StopRequested
    from a callback or, at the latest, when the section ends."""
    global _sections
    _sections += 1
    try:
        yield
    finally:
        _sections -= 1
    raise_if_requested()
