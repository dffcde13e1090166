"""The exception of the evaluation harness."""

from slotq import SlotqError


class EvaluationError(SlotqError):
    """An evaluation cannot start or continue: invalid data file, option, service reply or results folder."""
