"""How a failure leaves the broker: the one exception the broker raises for a request,
and the one place it becomes a wire ``Failure``.

Everything that can fail a request (the exchange, the pool, the registry, the redirect
policy, the body) raises ``ConnectionFailure(code, message, **fields)`` with a code of
``shared.errors.ErrorCode``; ``failure_message`` turns it, or any other exception (a
bug: logged, sent as ``internal``, never fatal to the broker), into the ``Failure`` the
worker maps onto aiohttp's exception (``worker_client.exceptions``).
"""

from __future__ import annotations

import logging
from logging import DEBUG, ERROR
from typing import Any

from shared.errors import ErrorCode
from shared.messages import Failure, HistoryItem, Request

from .logs import event

__all__ = ["ConnectionFailure", "failure_message"]

log = logging.getLogger("broker.failures")


class ConnectionFailure(Exception):
    """The request failed; ``code`` is a wire error code (``shared.errors``)."""

    def __init__(self, code: ErrorCode | str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.fields = fields


def failure_message(req: Request, exc: BaseException, history: list[HistoryItem]) -> Failure:
    """The wire ``Failure`` for ``exc``, which ended ``req`` after ``history``."""
    if isinstance(exc, ConnectionFailure):
        event(log, DEBUG, "request_failed", stream=req.stream, method=req.method, url=req.url,
              code=exc.code.value, reason=exc.message)
        return Failure(req.stream, exc.code, exc.message, history=history, **exc.fields)
    # A bug here must not take the broker down: report it, keep serving.
    event(log, ERROR, "request_crashed", stream=req.stream, method=req.method, url=req.url,
          exc_info=exc)
    return Failure(req.stream, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
