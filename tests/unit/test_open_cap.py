"""The broker-wide cap on open upstream connections (``pool_state.OpenCap``)."""

from __future__ import annotations

from broker.pool_state import OpenCap


def test_no_limit_counts_and_never_waits():
    cap = OpenCap()
    assert all(cap.take() for _ in range(1000))
    assert cap.open == 1000 and repr(cap) == "<OpenCap 1000/no limit open, 0 waiting>"


def test_waiters_are_granted_in_arrival_order_as_places_free():
    cap = OpenCap(2)
    assert cap.take() and cap.take() and not cap.take()
    cap.enqueue("a")
    cap.enqueue("b")
    assert cap.closed() == ["a"] and cap.open == 2
    assert not cap.take()  # "b" waits: nobody jumps the queue, even with room later
    assert cap.closed() == ["b"]
    assert cap.closed() == [] and cap.open == 1
    assert cap.take()


def test_a_waiter_that_gave_up_is_no_longer_granted():
    cap = OpenCap(1)
    assert cap.take()
    cap.enqueue("a")
    cap.enqueue("b")
    assert cap.cancel("a") and not cap.cancel("a")
    assert cap.closed() == ["b"]


def test_a_new_limit_lets_waiters_through_or_holds_against_what_is_open():
    cap = OpenCap(1)
    assert cap.take()
    cap.enqueue("a")
    cap.enqueue("b")
    assert cap.set_limit(2) == ["a"]
    assert cap.set_limit(0) == ["b"] and cap.open == 3
    assert cap.set_limit(1) == [] and not cap.take()
    assert cap.closed() == [] and cap.closed() == [] and not cap.take()  # 1 open of 1
    assert cap.closed() == [] and cap.take()
