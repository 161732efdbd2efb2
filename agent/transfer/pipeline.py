"""One stage of a streaming pipeline: iterate something in a worker thread, hand the items
over through a bounded queue.

Invariant: at most `depth` items are in flight between the threads (memory stays flat
whatever the stream's length), items arrive in order, an error in the worker reaches the
consumer after the items produced before it, and no worker thread outlives the generator.
"""

import queue
import threading

# Two queued per stage keep the stages overlapped (each also holds one in hand); every extra
# slot costs a chunk buffer per stage in an install's peak RSS (docs/transfer.md).
QUEUE_DEPTH = 2
_END = object()


def prefetch(items, depth=QUEUE_DEPTH):
    """Iterate `items` in a worker thread, yielding here, with at most `depth` in flight.
    An error in the worker is raised here after the items before it; closing this generator
    early stops and joins the worker."""
    slots = queue.Queue(depth)
    stop = threading.Event()
    failure = []

    def put(item):
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as e:  # handed to the consuming thread below
            failure.append(e)
        put(_END)

    worker = threading.Thread(target=produce, name="slot-pipeline", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _END:
                break
            yield item
    finally:
        stop.set()
        worker.join()
        close = getattr(items, "close", None)
        if close is not None:
            close()  # safe now: the worker thread is gone
    if failure:
        raise failure[0]
