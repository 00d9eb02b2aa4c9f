"""Errors that users cause and can fix. Each message is one line naming the bad value and the fix."""

from __future__ import annotations

from collections.abc import Iterable


class SDNError(ValueError):
    """A user mistake (bad name, bad value, missing file). The CLI prints it on one line."""


class DataError(SDNError):
    """A data set cannot be found or read."""


class CheckpointError(SDNError):
    """A checkpoint is missing, corrupted or does not fit the model asked for."""


class ServiceUnreachable(SDNError):
    """A service the work needs (Ray, an MLflow tracking server) does not answer. The CLI exits
    with 3 instead of 2: the input may be fine, the service is what must be started or fixed."""


class TrainingDiverged(SDNError):
    """The loss became NaN or infinite: the run's settings (usually its learning rate) must change."""


def choice_error(kind: str, value: object, allowed: Iterable[object]) -> SDNError:
    """The standard "unknown X" error: names the value and every allowed one."""
    allowed_text = ", ".join(repr(a) for a in allowed)
    return SDNError(f"unknown {kind} {value!r}; choose one of: {allowed_text}")
