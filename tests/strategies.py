"""Hypothesis strategies for schemas and rows."""

from __future__ import annotations

from hypothesis import strategies as st

DTYPES = ["bool", "int8", "uint8", "int16", "int32", "int64", "uint16", "uint32",
          "float16", "float32", "float64"]
CODECS = ["raw", "lz4:1", "zstd:3", "lz4hc:5/rows", "blosclz:5"]

field_names = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True).filter(
    lambda n: n not in ("reward", "terminated", "truncated"))
shapes = st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple)


@st.composite
def field_specs(draw):
    return {"shape": draw(shapes), "dtype": draw(st.sampled_from(DTYPES)),
            "codec": draw(st.sampled_from(CODECS)), "chunk_rows": draw(st.integers(1, 40))}


schemas = st.dictionaries(field_names, field_specs(), min_size=1, max_size=4)
capacities = st.none() | st.integers(1, 120)
