import pytest
from hypothesis import given
from hypothesis import strategies as st

from thetadist.errors import ManifestError
from thetadist.manifest.bencoding import DecodeLimits, decode, encode

values = st.recursive(
    st.integers(min_value=-(10**18), max_value=10**18) | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.binary(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@given(values)
def test_round_trip(value):
    assert decode(encode(value)) == value


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_manifest_error(data):
    try:
        value = decode(data)
    except ManifestError:
        return
    assert encode(value) == data  # anything accepted is canonical


@given(values, st.binary(min_size=1, max_size=5))
def test_trailing_bytes_rejected(value, tail):
    with pytest.raises(ManifestError):
        decode(encode(value) + tail)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"i03e", "non-canonical integer"),
        (b"i-0e", "-0"),
        (b"ie", "non-canonical integer"),
        (b"i1x2e", "non-canonical integer"),
        (b"03:abc", "non-canonical string length"),
        (b"d1:bi1e1:ai1ee", "sorted"),
        (b"d1:ai1e1:ai1ee", "sorted"),
        (b"di1ei1ee", "not a string"),
        (b"5:ab", "runs past"),
        (b"99999999999999999999999:a", "too long"),
        (b"i" + b"9" * 30 + b"e", "too long"),
        (b"l" * 20 + b"e" * 20, "nesting"),
        (b"l", "ends early"),
        (b"", "ends early"),
    ],
)
def test_hostile_inputs(data, message):
    with pytest.raises(ManifestError, match=message):
        decode(data)


def test_item_count_bound():
    with pytest.raises(ManifestError, match="items"):
        decode(b"l" + b"i1e" * 50 + b"e", DecodeLimits(max_items=10))
