"""The life of one stream, as one table that both ends drive.

A stream is one request. The broker's ``BrokerStream`` and the worker's ``StreamHandle``
step the same table with the events of the response side: the head, body data, the end,
a failure, or a cancel by the worker. Anything not in the table is a protocol violation:
the engine has a bug (the broker's side) or the broker sent garbage (the worker's side).

    OPEN --head--> BODY --data--> BODY --end--> DONE
    OPEN/BODY --fail--> FAILED          OPEN/BODY --cancel--> CANCELLED

DONE, FAILED and CANCELLED are final. A cancel that crosses an end or a failure on the
wire is harmless, so a cancel in a final state is allowed and changes nothing.
"""

from __future__ import annotations

import enum

__all__ = ["State", "Event", "StreamStateError", "step", "TRANSITIONS"]


# IntEnum: an int's hash is computed in C, and ``step`` runs for every body chunk.
class State(enum.IntEnum):
    OPEN = 0
    BODY = 1
    DONE = 2
    FAILED = 3
    CANCELLED = 4


class Event(enum.IntEnum):
    HEAD = 0
    DATA = 1
    END = 2
    FAIL = 3
    CANCEL = 4


class StreamStateError(Exception):
    """An event that the stream's state does not allow."""


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.OPEN, Event.HEAD): State.BODY,
    (State.OPEN, Event.FAIL): State.FAILED,
    (State.OPEN, Event.CANCEL): State.CANCELLED,
    (State.BODY, Event.DATA): State.BODY,
    (State.BODY, Event.END): State.DONE,
    (State.BODY, Event.FAIL): State.FAILED,
    (State.BODY, Event.CANCEL): State.CANCELLED,
    (State.DONE, Event.CANCEL): State.DONE,
    (State.FAILED, Event.CANCEL): State.FAILED,
    (State.CANCELLED, Event.CANCEL): State.CANCELLED,
}

FINAL = frozenset((State.DONE, State.FAILED, State.CANCELLED))


def step(state: State, event: Event) -> State:
    """The state after ``event``; raises ``StreamStateError`` if it is not allowed."""
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise StreamStateError(
            f"{event.name.lower()} is not allowed in state {state.name.lower()}"
        ) from None
