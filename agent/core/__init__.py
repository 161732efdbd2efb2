"""Pure decisions of the update agent: no I/O, no clocks, no threads.

Everything here takes bytes, numbers and dicts and returns or raises. It runs unchanged on
CPython >= 3.9 and on MicroPython 1.27, so it avoids typing, dataclasses, enum, abc,
pathlib, exception chaining and any reliance on dict order.
"""
