"""Code on the heap only while it works: a phase's modules are imported when it starts and
dropped when it ends (the verifiers only while verifying, the installer only while installing).

Even precompiled and frozen, an imported module keeps its functions, classes and globals on the
heap for as long as it is in sys.modules. `Phase` notes the modules present when it starts and,
when it ends, removes every module imported since (from sys.modules and from its parent
package), then collects, so the next phase starts from the same heap as this one did.

Invariant: nothing that outlives a phase holds an object of a class defined by a module the
phase imported (copy what is needed into plain values first); otherwise that module stays on
the heap, unreachable by import but alive.
"""

import gc
import sys

LOG = None  # fn(text): every phase reports the heap it starts and ends with (agent "log_heap")


def heap():
    """(bytes allocated, bytes free) after a collection: what the next phase starts with."""
    gc.collect()
    return gc.mem_alloc(), gc.mem_free()


def report(text):
    """`text` through LOG, then the VM's interned names (MicroPython prints them itself): it
    never frees one, and its next qstr pool is one block (docs/micropython.md)."""
    LOG(text)
    try:
        import micropython
    except ImportError:  # CPython, in tests
        return
    micropython.qstr_info()


class Phase:
    def __init__(self, name):
        self.name = name
        self.log = LOG is not None
        # The modules present are noted when the phase is made, as a tuple (one 8-byte slot
        # each; a set's table is about twice that): a step can make a later phase before an
        # earlier one splits the heap (steps.install: at 96K, no run for this list was left
        # after install-check).
        self.before = tuple(sys.modules)

    def __enter__(self):
        if self.log:
            report("phase %s: start, heap used %d free %d" % ((self.name,) + heap()))
        self.started = _ms()
        return self

    def __exit__(self, *exc):
        took = _since(self.started)
        drop([name for name in sys.modules if name not in self.before])
        self.before = None
        if self.log:
            report("phase %s: end after %d ms, heap used %d free %d"
                   % ((self.name, took) + heap()))  # fmt: skip
        else:
            gc.collect()
        return False


def _ms():
    import time

    ticks = getattr(time, "ticks_ms", None)  # MicroPython; CPython runs these modules in tests
    return ticks() if ticks is not None else int(time.time() * 1000)


def _since(start):
    import time

    diff = getattr(time, "ticks_diff", None)  # ticks wrap around on a board
    return diff(_ms(), start) if diff is not None else _ms() - start


def drop(names):
    """Forget the modules `names` (dotted); their objects go at the next collection."""
    for name in names:
        sys.modules.pop(name, None)
        parent, _, child = name.rpartition(".")
        package = sys.modules.get(parent) if parent else None
        if package is not None and child in package.__dict__:
            delattr(package, child)
