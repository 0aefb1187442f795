"""The one error a metric raises when it cannot run here (missing package or weights)."""

from __future__ import annotations


class MetricUnavailableError(RuntimeError):
    """A metric's package or pretrained weights are missing; the message says how to get them.

    Callers that run "whatever is available" (``load_metrics``) catch this and record the metric
    as skipped with the message as the reason; every other error is a real fault and propagates.
    """
