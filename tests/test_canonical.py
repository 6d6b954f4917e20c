"""The canonical JSON fast paths write exactly what rfc8785 writes, or defer to it or refuse."""

from __future__ import annotations

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from openexec.signing import canonical_json, canonical_json_of_text, request_sha256_of, sha256_hex

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
keys = st.one_of(text, st.sampled_from(["a", "b", "é", "\U0001f600", "\ufb01", "\U00010000x", ""]))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)
# What the service builds itself and writes with canonical_json_of_text: receipt statements
# and v1 artifacts, strings and nulls under ASCII keys, any text in the values.
ascii_keys = st.text(st.characters(max_codepoint=127), max_size=8)
text_values = st.recursive(
    st.one_of(st.none(), st.booleans(), text),
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(ascii_keys, children, max_size=5)
    ),
    max_leaves=40,
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=40,
)


@settings(max_examples=2000, deadline=None)
@given(values)
def test_canonical_json_is_rfc8785(value):
    assert canonical_json(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    "value",
    [
        {"\U0001f600": 1, "\ufb01": 2},  # UTF-16 order differs from code point order here
        {"b": [1, 2.5, -0.0, 1e21, 1e-7], "a": '\u0000\u001f\u007f\u2028"\\'},
        {"n": 2**53 - 1, "m": -(2**53) + 1},
        [True, False, None, "", {}],
    ],
)
def test_known_tricky_values(value):
    assert canonical_json(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    "value", [{"x": 2**53}, {"x": float("nan")}, {"x": "\ud800"}, {"x": {1, 2}}]
)
def test_values_jcs_cannot_represent_are_refused(value):
    with pytest.raises(ValueError):
        canonical_json(value)


@settings(max_examples=1000, deadline=None)
@given(st.dictionaries(ascii_keys, text_values, max_size=8))
def test_canonical_json_of_text_is_rfc8785(value):
    assert canonical_json_of_text(value) == rfc8785.dumps(value)


def test_canonical_json_of_text_refuses_a_lone_surrogate():
    with pytest.raises(ValueError):
        canonical_json_of_text({"error": {"message": "bad \ud800"}})


@given(values)
@settings(max_examples=300, deadline=None)
def test_request_sha256_of_the_payloads_bytes_is_the_jcs_hash_of_the_request(payload):
    payload = {"p": payload}
    whole = rfc8785.dumps({"action": "files.read", "payload": payload})
    assert request_sha256_of("files.read", rfc8785.dumps(payload)) == sha256_hex(whole)
