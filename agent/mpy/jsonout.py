"""Compact JSON with sorted keys, as the MQTT API promises (docs/mqtt-api.md): MicroPython's
json.dumps has no sort_keys and its dicts keep no order, so published bytes are built here.

Invariant: dumps(x) equals CPython's json.dumps(x, sort_keys=True, separators=(",", ":")) for
dicts, lists, tuples, strings, ints, floats, booleans and None.
"""

import json


def dumps(obj):
    if isinstance(obj, dict):
        keys = sorted(obj)
        return "{" + ",".join(json.dumps(str(k)) + ":" + dumps(obj[k]) for k in keys) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in obj) + "]"
    return json.dumps(obj)
