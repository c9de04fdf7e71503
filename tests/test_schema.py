"""Schema declaration and the checks every appended row passes before anything is stored."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import rows_for
from hypothesis import given, settings
from hypothesis import strategies as st

import replaystore as rs
from replaystore.schema import Schema


def test_episode_fields_are_added():
    schema = Schema.from_fields({"obs": ((4,), "float32")})
    assert schema.names == ("obs", "reward", "terminated", "truncated")
    assert schema["reward"].dtype == np.float32 and schema["terminated"].dtype == bool


@pytest.mark.parametrize("fields,message", [
    ({"../evil": ((1,), "float32")}, "invalid field name '../evil'"),
    ({"_private": ((1,), "float32")}, "invalid field name"),
    ({"obs": ((0,), "float32")}, "shape"),
    ({"obs": ((-3,), "float32")}, "shape"),
    ({"obs": (("a",), "float32")}, "shape must be a tuple of ints"),
    ({"obs": ((2,), "complex64")}, "dtype complex64 is not supported"),
    ({"obs": ((2,), "object")}, "not supported"),
    ({"obs": ((2,), "nonsense")}, "unknown dtype"),
    ({"obs": ((1 << 20, 1 << 20), "float64")}, "more than"),
    ({"reward": ((2,), "float32")}, "'reward' must be a scalar"),
    ({"terminated": ((), "int8")}, "'terminated' must be a scalar bool"),
    ({"obs": {"shape": (2,), "dtype": "float32", "codec": "snappy"}}, "unknown codec 'snappy'"),
    ({"obs": {"shape": (2,), "dtype": "float32", "codec": "zstd:0"}}, "cannot parse codec|level"),
    ({"obs": {"shape": (2,), "dtype": "float32", "codec": "raw/rows"}}, "needs a compressor"),
    ({"obs": {"shape": (2,), "dtype": "float32", "chunk_rows": -5}}, "chunk_rows"),
    ({"obs": {"shape": (2,), "colour": "red"}}, "unknown option"),
    ({"obs": 5}, "expected \\(shape, dtype\\)"),
    ({}, "non-empty"),
])
def test_bad_declarations_name_the_field(fields, message, tmp_path):
    with pytest.raises(rs.SchemaError, match=message):
        rs.create(tmp_path / "s", fields)
    assert not (tmp_path / "s").exists()


def test_codec_strings_round_trip():
    for text in ("raw", "zstd:3", "lz4hc:9/rows", "lz4:5"):
        assert str(rs.Codec.parse(text)) == text


@pytest.fixture
def store(make_store):
    return make_store({"obs": ((3,), "float32"), "action": ((), "uint8"),
                       "frame": ((4, 4), "uint8")})


def good_row(**changes):
    row = {"obs": np.zeros(3, np.float32), "action": 1, "frame": np.zeros((4, 4), np.uint8),
           "reward": 0.5, "terminated": False, "truncated": False}
    row.update(changes)
    return row


@pytest.mark.parametrize("changes,message", [
    ({"obs": np.zeros(4)}, r"field 'obs': expected shape \(3,\) float32, got shape \(4,\) float64"),
    ({"obs": np.zeros((1, 3))}, r"field 'obs': expected shape \(3,\)"),
    ({"action": 300}, r"field 'action': value 300 \(int\) does not fit a uint8 field"),
    ({"action": -1}, "fit a uint8 field"),
    ({"action": 1.5}, r"field 'action': value 1.5 \(float\) does not fit a uint8"),
    ({"terminated": 2}, "field 'terminated'"),
    ({"obs": np.array([1e300, 0, 0])}, "field 'obs'"),
    ({"obs": ["a", "b", "c"]}, "cannot store values of dtype <U1"),
    ({"frame": np.zeros((4, 4), np.float32) + 0.5}, "field 'frame'"),
])
def test_bad_rows_are_refused_and_store_unchanged(store, changes, message):
    store.append(good_row())
    with pytest.raises(rs.SchemaError, match=message):
        store.append(good_row(**changes))
    assert store.pending == 1
    store.commit()
    assert len(store) == 1


def test_missing_and_unknown_keys(store):
    row = good_row()
    del row["reward"]
    with pytest.raises(rs.SchemaError, match="missing field\\(s\\) 'reward'"):
        store.append(row)
    with pytest.raises(rs.SchemaError,
                       match=r"unknown field\(s\) 'rewrd' \(did you mean 'reward'\?\)"):
        store.append(good_row(rewrd=1.0))
    assert store.pending == 0


def test_lossless_casts_are_accepted(store):
    store.append(good_row(obs=[1, 2, 3], action=np.int64(7), terminated=np.int8(1), reward=2))
    store.append(good_row(obs=np.array([0.1, 0.2, 0.3])))  # float64 → float32 rounds
    store.commit()
    got = store.get([0, 1])
    assert got["action"].tolist() == [7, 1] and got["terminated"].tolist() == [True, False]
    np.testing.assert_allclose(got["obs"][1], [0.1, 0.2, 0.3], rtol=1e-6)


def test_bad_batches(store):
    batch = rows_for(store.schema, 0, 5)
    bad = dict(batch, reward=np.zeros(4, np.float32))
    with pytest.raises(rs.SchemaError, match="same number of rows"):
        store.extend(bad)
    with pytest.raises(rs.SchemaError, match=r"field 'obs': expected a batch of shape \(n, 3,\)"):
        store.extend(dict(batch, obs=np.zeros((5, 2))))
    with pytest.raises(rs.SchemaError, match="field 'action'"):
        store.extend(dict(batch, action=np.full(5, 256)))
    assert store.pending == 0


ALL_DTYPES = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
              "float16", "float32", "float64"]
INT_DTYPES = [d for d in ALL_DTYPES if np.dtype(d).kind in "iu"]


def in_range(dtype: str):
    """Integers that a ``dtype`` array can hold, biased to its ends and to 0."""
    info = np.iinfo(dtype)
    return st.integers(int(info.min), int(info.max)) | st.sampled_from(
        [int(info.min), int(info.max), 0, 1, -1 if info.min < 0 else 0])


def exactly_equal(stored: np.ndarray, given: np.ndarray) -> bool:
    """Value for value as Python numbers (exact: no cast back through either dtype)."""
    return all((a == b) or (a != a and b != b)  # NaN stays NaN
               for a, b in zip(stored.reshape(-1).tolist(), given.reshape(-1).tolist(),
                               strict=True))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@settings(max_examples=300, deadline=None)
@given(dtype=st.sampled_from(ALL_DTYPES), source=st.sampled_from(ALL_DTYPES),
       value=st.integers(-(1 << 63), (1 << 64) - 1) | st.floats(allow_nan=True,
                                                                allow_infinity=True))
def test_cast_rule_is_lossless_or_refused(dtype, source, value):
    field = rs.Field("x", (), dtype)
    try:
        array = np.asarray(value).astype(source)
    except (OverflowError, ValueError):
        return
    try:
        stored = field.check(array)
    except rs.SchemaError as exc:
        assert "field 'x'" in str(exc) and source in str(exc) and dtype in str(exc)
        return
    assert stored.dtype == np.dtype(dtype)
    src, dst = np.dtype(source), np.dtype(dtype)
    if src.kind == "f" and dst.kind == "f":  # rounded, but never overflowed to infinity
        assert np.isfinite(stored) or not np.isfinite(array)
    elif src.kind in "iu" and dst.kind == "f" and np.can_cast(src, dst, "safe"):
        # a cast numpy calls safe is done silently: int64 into float64 may round
        assert stored == array.astype(dst)
    else:
        assert exactly_equal(stored, array), (array, stored)


@pytest.mark.parametrize("dtype,value", [
    ("uint8", np.int8(-1)), ("int64", np.uint64((1 << 64) - 1)), ("uint32", np.int32(-5)),
    ("uint16", np.int16(-32768)), ("int8", np.uint8(200)), ("int8", np.uint64((1 << 64) - 1)),
    ("uint64", np.int64(-1)), ("int32", np.uint32(1 << 31)), ("uint64", np.int8(-128)),
])
def test_same_width_and_narrowing_sign_casts_are_refused(dtype, value, make_store):
    """int8 -1 into uint8 used to be stored as 255: the cast back wraps too, so a round trip
    through the source dtype saw nothing wrong."""
    store = make_store({"x": ((), dtype), "v": ((2,), dtype)})
    src = value.dtype.name
    message = rf"field '{{}}': .*{src}.* {dtype} field"
    row = {"reward": 0.0, "terminated": False, "truncated": False}
    for x in (value, np.asarray(value)):  # numpy scalar, 0-d array
        with pytest.raises(rs.SchemaError, match=message.format("x")):
            store.append(row, x=x, v=np.zeros(2, dtype))
    with pytest.raises(rs.SchemaError, match=message.format("v")):
        store.append(row, x=0, v=np.array([0, value], value.dtype))
    batch = {"x": np.array([1, value, 2], value.dtype), "v": np.zeros((3, 2), dtype),
             "reward": np.zeros(3, np.float32), "terminated": np.zeros(3, bool),
             "truncated": np.zeros(3, bool)}
    with pytest.raises(rs.SchemaError, match=message.format("x")):
        store.extend(batch)
    with pytest.raises(rs.SchemaError, match=message.format("v")):
        store.extend(dict(batch, x=np.zeros(3, dtype), v=np.full((3, 2), value)))
    assert store.pending == 0


@pytest.mark.parametrize("dtype,value", [
    ("uint8", -1), ("uint64", -1), ("int64", (1 << 64) - 1), ("uint32", -5), ("int8", 200)])
def test_python_ints_that_do_not_fit_are_refused(dtype, value, make_store):
    store = make_store({"x": ((), dtype), "v": ((2,), dtype)})
    row = {"reward": 0.0, "terminated": False, "truncated": False}
    with pytest.raises(rs.SchemaError, match=rf"field 'x': value {value} \(int\) does not fit "
                                             rf"a {dtype} field"):
        store.append(row, x=value, v=[0, 0])
    with pytest.raises(rs.SchemaError, match=rf"field 'v': .* {dtype} field"):
        store.append(row, x=0, v=[0, value])  # a list: numpy makes it int64 or uint64
    batch = {"x": [1, value], "v": [[0, 0], [0, 0]], "reward": [0.0, 0.0],
             "terminated": [False, False], "truncated": [False, False]}
    with pytest.raises(rs.SchemaError, match=rf"field 'x': .* {dtype} field"):
        store.extend(batch)
    assert store.pending == 0


def test_values_that_fit_keep_working(make_store):
    store = make_store({"u8": ((), "uint8"), "i64": ((), "int64"), "u32": ((2,), "uint32"),
                        "u64": ((), "uint64")})
    store.append(u8=np.int8(127), i64=np.uint64((1 << 63) - 1), u32=np.array([0, 7], np.int32),
                 u64=np.int64((1 << 63) - 1), reward=0.0, terminated=False, truncated=False)
    store.append(u8=np.array(5, np.int64), i64=(1 << 63) - 1, u32=[1, 2], u64=(1 << 64) - 1,
                 reward=1, terminated=True, truncated=False)
    store.extend({"u8": np.arange(128, dtype=np.int8), "i64": np.arange(128, dtype=np.uint64),
                  "u32": np.arange(256, dtype=np.int64).reshape(128, 2),
                  "u64": np.arange(128, dtype=np.int8), "reward": np.zeros(128),
                  "terminated": np.zeros(128, bool), "truncated": np.zeros(128, bool)})
    store.extend({"u8": np.zeros(0, np.int8), "i64": np.zeros(0, np.uint64),
                  "u32": np.zeros((0, 2), np.int64), "u64": np.zeros(0, np.int16),
                  "reward": np.zeros(0), "terminated": np.zeros(0, bool),
                  "truncated": np.zeros(0, bool)})
    store.commit()
    got = store.get(np.arange(130))
    assert got["u8"].tolist() == [127, 5, *range(128)]
    assert got["i64"].tolist() == [(1 << 63) - 1] * 2 + list(range(128))
    assert got["u32"][:2].tolist() == [[0, 7], [1, 2]]
    assert got["u64"].tolist() == [(1 << 63) - 1, (1 << 64) - 1, *range(128)]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), source=st.sampled_from(INT_DTYPES), dtype=st.sampled_from(INT_DTYPES))
def test_integer_batches_are_stored_exactly_or_refused(data, source, dtype):
    values = data.draw(st.lists(in_range(source), min_size=1, max_size=20))
    info = np.iinfo(dtype)
    fits = all(info.min <= v <= info.max for v in values)
    field = rs.Field("x", (), dtype)
    array = np.array(values, source)
    if fits:
        assert field.check_batch(array).tolist() == values
        assert field.check(array[-1]).item() == values[-1]  # a numpy scalar
        assert field.check(values[-1]).item() == values[-1]  # a Python int
        return
    with pytest.raises(rs.SchemaError, match=f"field 'x': batch values of dtype {source} .*"
                                             f"a {dtype} field"):
        field.check_batch(array)
    bad = next(v for v in values if not info.min <= v <= info.max)
    with pytest.raises(rs.SchemaError, match=f"field 'x'.*{source}.* {dtype} field"):
        field.check(np.array(bad, source)[()])
    with pytest.raises(rs.SchemaError, match=rf"field 'x': value {bad} \(int\)"):
        field.check(bad)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_huge_python_ints_into_float_fields_raise_schema_error(dtype):
    """10**400 has no float: it raised OverflowError from math.isfinite."""
    with pytest.raises(rs.SchemaError, match=rf"field 'x': value 1000.* \(int\) does not fit "
                                             rf"a {dtype} field"):
        rs.Field("x", (), dtype).check(10 ** 400)


def test_schema_json_round_trip_and_hash():
    schema = Schema.from_fields({"obs": {"shape": (84, 84), "dtype": "uint8", "codec": "zstd:3"},
                                 "action": ((), "int64")})
    again = Schema.from_json(schema.to_json())
    assert again == schema and again.hash == schema.hash
    assert schema["obs"].codec == rs.Codec("zstd", 3)
    assert Schema.from_fields({"obs": ((84, 84), "uint8")})["obs"].codec.per_row


def test_noshuffle_codec_spec_round_trips_and_old_schemas_keep_their_hash():
    codec = rs.Codec.parse("lz4:1/noshuffle")
    assert (codec.name, codec.level, codec.shuffle, str(codec)) == ("lz4", 1, False, "lz4:1/noshuffle")
    assert rs.Codec.from_json(codec.to_json()) == codec
    assert "shuffle" not in rs.Codec.parse("zstd:3").to_json()  # the hash of older schemas
    assert str(rs.Schema.from_fields({"obs": ((17,), "float32")})["obs"].codec) == "lz4:1/noshuffle"
    with pytest.raises(rs.SchemaError, match="noshuffle"):
        rs.Codec.parse("raw/noshuffle")
