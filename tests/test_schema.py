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
    ({"action": 300}, "field 'action': value 300 does not fit a uint8 field"),
    ({"action": -1}, "fit a uint8 field"),
    ({"action": 1.5}, "field 'action': value 1.5 does not fit a uint8"),
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


dtypes = st.sampled_from(["bool", "int8", "uint8", "int16", "int32", "int64", "uint16",
                          "float16", "float32", "float64"])


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@settings(max_examples=60, deadline=None)
@given(dtype=dtypes, source=dtypes, value=st.integers(-300, 300) | st.floats(-1e6, 1e6))
def test_cast_rule_is_lossless_or_refused(dtype, source, value):
    field = rs.Field("x", (), dtype)
    try:
        array = np.asarray(value).astype(source)
    except (OverflowError, ValueError):
        return
    try:
        stored = field.check(array)
    except rs.SchemaError as exc:
        assert "field 'x'" in str(exc)
        return
    assert stored.dtype == np.dtype(dtype)
    if np.dtype(source).kind == "f" and np.dtype(dtype).kind == "f":
        assert np.isfinite(stored) or not np.isfinite(array)
    else:
        assert stored.astype(source) == array


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
