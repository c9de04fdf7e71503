"""Opening things that are not (healthy) stores gives specific errors naming the file."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import IMAGE, rows_for

import replaystore as rs
from replaystore.layout import MANIFEST


@pytest.fixture
def committed(make_store):
    store = make_store({"obs": {"shape": (4,), "dtype": "float32", "chunk_rows": 16},
                        "frame": {"shape": (16, 16), "dtype": "uint8", "chunk_rows": 16}})
    store.extend(rows_for(store.schema, 0, 40))
    store.commit()
    store.close()
    return store.path


def test_missing_path_and_plain_folder(tmp_path):
    with pytest.raises(rs.StoreNotFoundError, match="not a directory"):
        rs.open(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hi")
    with pytest.raises(rs.StoreNotFoundError, match=r"manifest\.json is missing"):
        rs.open(tmp_path / "plain")
    with pytest.raises(FileNotFoundError):  # also a builtin
        rs.open(tmp_path / "plain")


def test_create_refuses_existing(committed, tmp_path):
    with pytest.raises(rs.StoreExistsError, match="exists and is not empty"):
        rs.create(committed, {"obs": ((1,), "float32")})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.csv").write_text("1,2")
    with pytest.raises(rs.StoreExistsError, match="holds files but no replay store"):
        rs.create(tmp_path / "other", {"obs": ((1,), "float32")}, overwrite=True)
    fresh = rs.create(committed, {"obs": ((1,), "float32")}, overwrite=True)
    assert len(fresh) == 0


def test_edited_manifest_fails_its_checksum(committed):
    doc = json.loads((committed / MANIFEST).read_text())
    doc["end"] += 1
    (committed / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(rs.CorruptStoreError, match="crc32c"):
        rs.open(committed)


def test_newer_format_version(committed):
    doc = json.loads((committed / MANIFEST).read_text())
    doc["format_version"] = 99
    (committed / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(rs.FormatVersionError, match="format version 99 is newer"):
        rs.open(committed)


@pytest.mark.parametrize("content", [b"", b"{not json", b"[]", b'{"format_version": 1}',
                                     b'{"format_version": 1, "schema_hash": "x", "capacity": null,'
                                     b' "start": 5, "end": 2}'])
def test_malformed_manifest(committed, content):
    (committed / MANIFEST).write_bytes(content)
    with pytest.raises(rs.CorruptStoreError, match="manifest"):
        rs.open(committed)


def test_manifest_pointing_past_the_data(committed):
    doc = json.loads((committed / MANIFEST).read_text())
    doc.pop("crc32c")  # a crafted manifest, not a damaged one: checked on its merits
    doc["end"] = 10_000
    (committed / MANIFEST).write_text(json.dumps(doc))
    store = rs.open(committed)
    with pytest.raises(rs.CorruptChunkError, match="is missing but holds committed rows"):
        store.get([9_999])


def test_schema_hash_mismatch(committed):
    doc = json.loads((committed / MANIFEST).read_text())
    doc.pop("crc32c")
    doc["schema_hash"] = "0" * 16
    (committed / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(rs.CorruptStoreError, match="does not match the manifest's schema hash"):
        rs.open(committed)


@pytest.mark.parametrize("field,key", [("obs", "obs/c.1.0"), ("frame", "frame/c.1.0.0")])
@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_chunk_names_file_and_field(committed, field, key, damage):
    path = committed / key
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 3] ^= 0x10
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        path.unlink()
    store = rs.open(committed)
    np.testing.assert_array_equal(store.get([3])[field], rows_for(store.schema, 3, 1)[field])
    with pytest.raises(rs.CorruptChunkError) as info:
        store.get([20])  # row 20 lives in chunk 1
    assert info.value.field == field and key in str(info.value) and field in str(info.value)


def test_bad_group_document(committed):
    (committed / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    with pytest.raises(rs.CorruptStoreError, match="not a replaystore group"):
        rs.open(committed)


def test_symlinked_chunk_is_not_followed(committed, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"x" * 100)
    chunk = committed / "obs" / "c.1.0"
    chunk.unlink()
    os.symlink(secret, chunk)
    with pytest.raises(rs.CorruptStoreError, match=r"'obs/c\.1\.0': it is a symbolic link"):
        rs.open(committed).get([20])


def test_failed_append_keeps_last_commit(make_store):
    store = make_store(IMAGE)
    store.extend(rows_for(store.schema, 0, 10))
    store.commit()
    with pytest.raises(rs.SchemaError):
        store.extend(dict(rows_for(store.schema, 10, 5), frame=np.zeros((5, 3, 3))))
    assert len(rs.open(store.path)) == 10


def test_failed_commit_keeps_last_commit(make_store, monkeypatch):
    store = make_store()
    store.extend(rows_for(store.schema, 0, 10))
    store.commit()
    store.extend(rows_for(store.schema, 10, 10))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store._backend, "sync", disk_full)
    with pytest.raises(OSError, match="No space"):
        store.commit()
    reader = rs.open(store.path)
    assert len(reader) == 10
    np.testing.assert_array_equal(reader.get(np.arange(10))["obs"],
                                  rows_for(store.schema, 0, 10)["obs"])


def test_interrupted_create_can_be_created_again(tmp_path):
    path = tmp_path / "s"
    rs.create(path, {"obs": ((1,), "float32")}).close()
    (path / MANIFEST).unlink()  # as if killed before the first commit record
    with pytest.raises(rs.StoreNotFoundError, match="create\\(\\) was interrupted"):
        rs.open(path)
    store = rs.create(path, {"obs": ((2,), "float32")})  # no overwrite=True needed
    assert store.schema["obs"].shape == (2,)
