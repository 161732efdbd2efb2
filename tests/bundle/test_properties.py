"""Property tests: whatever bytes arrive, parsers answer with a value or MalformedBundle."""

import io
import json
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.bundle import format as fmt
from agent.bundle.reader import open_bundle
from agent.core import keyring
from agent.core.envelope import parse_envelope
from agent.core.errors import MalformedBundle, Truncated
from agent.core.manifest import parse_manifest
from tests.bundle.test_manifest import fields

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def rejects_cleanly(fn, data, allowed=(MalformedBundle,)):
    try:
        fn(data)
    except allowed:
        pass


@settings(deadline=None)  # a loaded CI box must not turn slowness into failure
@given(st.binary(max_size=2048))
def test_parse_manifest_arbitrary_bytes(data):
    rejects_cleanly(parse_manifest, data)


@settings(deadline=None)  # a loaded CI box must not turn slowness into failure
@given(json_values)
def test_parse_manifest_arbitrary_json(value):
    rejects_cleanly(parse_manifest, json.dumps(value).encode())


@settings(deadline=None)  # a loaded CI box must not turn slowness into failure
@given(
    st.sampled_from(sorted(fields()) + ["extra"]),
    json_values,
    st.sampled_from(["name", "slot_class", "size", "sha256", "compression", "installed_size"]),
    json_values,
)
def test_parse_manifest_one_field_mutated(field, value, pfield, pvalue):
    doc = fields()
    doc[field] = value
    rejects_cleanly(parse_manifest, json.dumps(doc).encode())
    doc = fields()
    doc["payloads"][0][pfield] = pvalue
    rejects_cleanly(parse_manifest, json.dumps(doc).encode())


@settings(deadline=None)  # a loaded CI box must not turn slowness into failure
@given(st.binary(max_size=64))
def test_bundle_header_parser_arbitrary_bytes(data):
    rejects_cleanly(fmt.parse_header, data)


@settings(deadline=None)  # a loaded CI box must not turn slowness into failure
@given(st.integers(min_value=0, max_value=2**32 - 1), st.binary(max_size=300))
def test_bundle_header_any_length_field(length, tail):
    data = struct.pack(">8sI", fmt.MAGIC, length)
    rejects_cleanly(fmt.parse_header, data)
    # A whole stream: rejected or cut short, never any other exception, never over-read.
    rejects_cleanly(
        lambda d: open_bundle(io.BytesIO(d).read), data + tail, (MalformedBundle, Truncated)
    )


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_open_bundle_arbitrary_stream(data):
    rejects_cleanly(
        lambda d: open_bundle(io.BytesIO(d).read), fmt.MAGIC + data, (MalformedBundle, Truncated)
    )


@settings(deadline=None)  # a loaded CI box must not turn slowness into failure
@given(st.binary(max_size=1024) | json_values.map(lambda v: json.dumps(v).encode()))
def test_envelope_and_root_parsers_arbitrary_input(data):
    rejects_cleanly(parse_envelope, data)
    rejects_cleanly(keyring.parse_root, data)
