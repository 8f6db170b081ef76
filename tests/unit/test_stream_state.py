import pytest

from shared.stream_state import FINAL, TRANSITIONS, Event, State, StreamStateError, step


def run(*events: Event) -> State:
    state = State.OPEN
    for e in events:
        state = step(state, e)
    return state


def test_happy_path():
    assert run(Event.HEAD, Event.DATA, Event.DATA, Event.END) is State.DONE
    assert run(Event.HEAD, Event.END) is State.DONE


def test_failures_and_cancels():
    assert run(Event.FAIL) is State.FAILED
    assert run(Event.HEAD, Event.DATA, Event.FAIL) is State.FAILED
    assert run(Event.CANCEL) is State.CANCELLED
    assert run(Event.HEAD, Event.END, Event.CANCEL) is State.DONE  # crossed on the wire


@pytest.mark.parametrize(
    "events",
    [
        (Event.DATA,),
        (Event.END,),
        (Event.HEAD, Event.HEAD),
        (Event.HEAD, Event.END, Event.DATA),
        (Event.FAIL, Event.HEAD),
        (Event.HEAD, Event.END, Event.END),
        (Event.CANCEL, Event.DATA),
    ],
)
def test_violations(events):
    with pytest.raises(StreamStateError):
        run(*events)


def test_final_states_only_accept_cancel():
    for (state, event), _ in TRANSITIONS.items():
        if state in FINAL:
            assert event is Event.CANCEL
