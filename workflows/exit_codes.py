"""The one mapping from what went wrong to the exit code and the line the user reads.

Every ``sdn`` command runs inside :func:`handled`, so the codes hold everywhere:

====  ==========================================================================================
0     success
1     the work ran but part of it failed (a sweep with failed or skipped cells)
2     bad input: a user mistake, or a file that is missing, damaged or of the wrong kind; one
      ``error:`` line on stderr, nothing written
3     a service could not be reached: Ray, or an MLflow tracking server (probed with short,
      bounded timeouts before any work)
130   interrupted (Ctrl-C); the line says how to continue where there is something to continue
70    an internal error (a bug): one line, ``SDN_DEBUG=1`` shows the traceback
====  ==========================================================================================

:func:`classify` decides the class of an exception; docs/reliability.md lists each class with the
test that covers it.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from enum import IntEnum
from typing import Any, TypeVar

from sdn.errors import SDNError, ServiceUnreachable

F = TypeVar("F", bound=Callable[..., Any])


class ExitCode(IntEnum):
    OK = 0
    PARTIAL = 1
    BAD_INPUT = 2
    UNREACHABLE = 3
    INTERNAL = 70
    INTERRUPTED = 130


# Words of MLflow's and the HTTP client's errors when a tracking server went away mid-command.
_CONNECTION_WORDS = (
    "max retries exceeded",
    "connection refused",
    "connection aborted",
    "failed to establish a new connection",
    "timed out",
    "name or service not known",
    "temporary failure in name resolution",
)


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (library messages often span several)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines)[:1000] if lines else type(exc).__name__


def classify(exc: BaseException) -> tuple[ExitCode, str]:
    """(exit code, message) for an exception that escaped a command."""
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED, "interrupted"
    if isinstance(exc, ServiceUnreachable):
        return ExitCode.UNREACHABLE, one_line(exc)
    if isinstance(exc, SDNError):
        return ExitCode.BAD_INPUT, one_line(exc)
    module = type(exc).__module__ or ""
    if module.startswith(("mlflow", "requests", "urllib3")):
        text = one_line(exc)
        if any(word in text.lower() for word in _CONNECTION_WORDS):
            return ExitCode.UNREACHABLE, f"MLflow is unreachable: {text}"
        return ExitCode.BAD_INPUT, f"MLflow: {text}"
    if module.startswith("ray") and "ConnectionError" in type(exc).__name__:
        return ExitCode.UNREACHABLE, f"Ray is unreachable: {one_line(exc)}"
    if isinstance(exc, OSError):  # a full disk, a read-only or vanished path the command needed
        where = f"{exc.filename}: " if exc.filename else ""
        return ExitCode.BAD_INPUT, f"{where}{exc.strerror or one_line(exc)}"
    return (
        ExitCode.INTERNAL,
        f"internal error: {type(exc).__name__}: {one_line(exc)} (set SDN_DEBUG=1 for the traceback)",
    )


def fail(message: str, code: int = ExitCode.BAD_INPUT) -> None:
    """Print ``error: message`` on stderr (one line) and exit with ``code``."""
    import typer

    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    sys.stderr.flush()
    raise typer.Exit(int(code))


def handled(on_interrupt: str = "") -> Callable[[F], F]:
    """Run a command so that whatever goes wrong ends as one line on stderr and its exit code
    (:func:`classify`), never a traceback. ``on_interrupt`` is appended to the Ctrl-C line when
    the command has something to continue (a sweep: ``sdn sweep resume NAME``); ``{name}`` in it
    is filled from the command's ``name`` argument, or its spec's name when known."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            import typer

            try:
                return func(*args, **kwargs)
            except typer.Exit:
                raise
            except BaseException as exc:
                if isinstance(exc, SystemExit | GeneratorExit):
                    raise
                code, message = classify(exc)
                if code is ExitCode.INTERNAL and os.environ.get("SDN_DEBUG"):
                    raise
                if code is ExitCode.INTERRUPTED and on_interrupt:
                    hint = on_interrupt.format(name=kwargs.get("name") or "NAME")
                    message = f"{message}; {hint}"
                fail(message, code)

        return wrapper  # type: ignore[return-value]

    return decorate
