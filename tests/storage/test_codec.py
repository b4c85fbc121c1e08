"""Records' JSON text (``app.storage.codec``): orjson's text is the standard library's
compact text for what records hold, read back the same; what orjson refuses is written
by the standard library."""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from app.storage import codec

ASCII = st.text(st.characters(max_codepoint=0x7E))  # DEL and beyond: escaped by one only
PLAIN = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1), ASCII
)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)


def records(scalars: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ASCII, inner, max_size=4),
        max_leaves=12,
    )


@given(records(PLAIN))
def test_the_text_is_the_standard_librarys(record):
    assert codec.dumps(record) == json.dumps(record, separators=(",", ":"))


@given(records(PLAIN | FLOATS | st.text()))
def test_records_read_back(record):
    # Floats are both shortest round trips, spelled ``1e-07`` by one and ``1e-7`` by the other.
    assert json.loads(codec.dumps(record)) == record


def test_what_orjson_refuses_the_standard_library_writes():
    for record in ({"v": "\ud800"}, {1: "x"}, {"v": 2**70}):
        assert codec.dumps(record) == json.dumps(record, separators=(",", ":"))
    assert json.loads(codec.dumps({"v": "é"})) == {"v": "é"}
    assert codec.dumps({"v": math.nan}) == '{"v":null}'
