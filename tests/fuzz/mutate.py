"""Inputs for the fuzz targets: corpus seeds mutated byte-wise (flip, set, insert, delete,
duplicate, truncate, splice with another seed) or, for JSON inputs, value-wise (replace or
drop one value anywhere in the document), plus plain random bytes. Hypothesis drives the
choices, so a finding shrinks to a small input."""

import json

from hypothesis import strategies as st

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=6,
)  # fmt: skip

OPS = ("flip", "set", "insert", "delete", "duplicate", "truncate", "splice")
byte_ops = st.tuples(
    st.sampled_from(OPS), st.integers(0, 1 << 20), st.integers(0, 64), st.binary(max_size=16)
)


def apply_ops(data, ops, other):
    data = bytearray(data)
    for op, where, count, blob in ops:
        at = where % (len(data) + 1)
        if op == "flip" and data:
            data[at % len(data)] ^= 1 << (count % 8)
        elif op == "set" and data:
            data[at % len(data)] = count * 4 % 256
        elif op == "insert":
            data[at:at] = blob
        elif op == "delete":
            del data[at : at + count]
        elif op == "duplicate":
            data[at:at] = data[at : at + count]
        elif op == "truncate":
            del data[at:]
        elif op == "splice":
            data[at:] = other[where % (len(other) + 1) :]
    return bytes(data)


def _slots(doc, found):
    """Every (container, key) in a JSON document, depth first."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc)
    for key, value in list(items):
        found.append((doc, key))
        if isinstance(value, (dict, list)):
            _slots(value, found)
    return found


def json_mutate(data, pick, value, drop):
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # a crash seed may be nested that deep
        return data
    if not isinstance(doc, (dict, list)):
        return data
    found = _slots(doc, [])
    if not found:
        return data
    container, key = found[pick % len(found)]
    if drop and isinstance(container, dict):
        del container[key]
    else:
        container[key] = value
    return json.dumps(doc, allow_nan=True).encode()


def inputs(seeds, json_input):
    base = st.sampled_from(seeds)
    choices = [
        st.builds(apply_ops, base, st.lists(byte_ops, min_size=1, max_size=6), base),
        st.binary(max_size=600),
        base,
    ]
    if json_input:
        choices.append(
            st.builds(json_mutate, base, st.integers(0, 1 << 16), json_values, st.booleans())
        )
    return st.one_of(choices)
