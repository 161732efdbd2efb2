"""The pipeline stage: order, bounded in-flight items, errors and early stop."""

import threading

import pytest

from agent.transfer.pipeline import prefetch


def test_items_arrive_in_order_and_worker_error_comes_after_them():
    def items():
        yield from range(10)
        raise ValueError("source broke")

    got = []
    with pytest.raises(ValueError):
        for item in prefetch(items()):
            got.append(item)
    assert got == list(range(10))


def test_in_flight_items_are_bounded():
    consumed = [0]
    depth = 3

    def items():
        for i in range(200):
            # Produced but not yet consumed: the queue plus the one item in the worker's hand.
            assert i - consumed[0] <= depth + 1, "pipeline buffers more than its depth"
            yield i

    for item in prefetch(items(), depth=depth):
        if item % 7 == 0:
            threading.Event().wait(0.001)  # a slow consumer, so the producer runs ahead
        consumed[0] += 1
    assert consumed[0] == 200


def test_closing_early_stops_and_joins_the_worker():
    stage = prefetch(iter(range(1000)), depth=2)
    assert next(stage) == 0
    stage.close()
    assert [t for t in threading.enumerate() if t.name == "slot-pipeline"] == []
