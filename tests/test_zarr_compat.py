"""Any zarr v3 reader sees the committed values the store returns."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import zarr
from conftest import rows_for

import replaystore as rs

CODECS = ["raw", "lz4:5", "zstd:3", "lz4hc:5/rows", "zstd:1/rows", "blosclz:5", "zlib:4/rows"]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype,shape", [("float32", (3,)), ("uint8", (6, 5)), ("bool", ()),
                                         ("int64", ()), ("float64", (2, 2)), ("uint16", (7,))])
def test_zarr_reads_what_the_store_returns(tmp_path, codec, dtype, shape):
    fields = {"x": {"shape": shape, "dtype": dtype, "codec": codec, "chunk_rows": 16}}
    store = rs.create(tmp_path / "s", fields)
    store.extend(rows_for(store.schema, 0, 50))  # 3 full chunks and a partial one
    store.commit()
    store.extend(rows_for(store.schema, 50, 7))  # appended, not committed: zarr must not see it
    ours = rs.open(tmp_path / "s").get(np.arange(50))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not recognized as a component" warnings either
        group = zarr.open_group(tmp_path / "s", mode="r")
        assert sorted(group.array_keys()) == sorted(store.schema.names)
        for name in store.schema.names:
            theirs = group[name][:]
            assert theirs.shape == ours[name].shape and theirs.dtype == ours[name].dtype
            np.testing.assert_array_equal(theirs, ours[name])


def test_ring_store_through_zarr(tmp_path):
    fields = {"x": {"shape": (2,), "dtype": "int32", "chunk_rows": 8}}
    store = rs.create(tmp_path / "s", fields, capacity=20)
    store.extend(rows_for(store.schema, 0, 53))
    store.commit()
    arr = zarr.open_group(tmp_path / "s", mode="r")["x"]
    assert arr.shape == (20, 2)
    np.testing.assert_array_equal(arr[:], store.get(np.arange(20))["x"])
    assert zarr.open_group(tmp_path / "s", mode="r").attrs["replaystore"]["capacity"] == 20


def test_zarr_metadata_is_valid_v3(tmp_path):
    store = rs.create(tmp_path / "s", {"obs": ((84, 84), "uint8"), "v": ((3,), "float32")})
    store.extend(rows_for(store.schema, 0, 3))
    store.commit()
    group = zarr.open_group(tmp_path / "s", mode="r")
    assert group["obs"].metadata.zarr_format == 3
    assert group["obs"].shards == (store.schema["obs"].chunk_rows, 84, 84)
    assert group["obs"].chunks == (1, 84, 84)
