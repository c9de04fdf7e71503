"""Model-based test: random appends, extends, commits, reopens and ring wraps against a model.

The model is a plain Python list of committed rows; after every step the store (and a fresh
reader) must hold exactly the model's last ``capacity`` committed rows.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from conftest import rows_for
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from strategies import capacities, schemas

import replaystore as rs


class StoreModel(RuleBasedStateMachine):
    @initialize(fields=schemas, capacity=capacities)
    def create(self, fields, capacity):
        self.dir = Path(tempfile.mkdtemp(prefix="rs-model-"))
        self.store = rs.create(self.dir / "s", fields, capacity=capacity,
                               cache_bytes=int(np.random.default_rng(0).integers(0, 1 << 16)))
        self.schema = self.store.schema
        self.capacity = capacity
        self.appended = 0   # global rows appended
        self.committed = 0  # global rows committed
        self.retired = 0    # rows below this were retired by a ring writer that then died

    def teardown(self):
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(n=st.integers(1, 3))
    def append(self, n):
        for g in range(self.appended, self.appended + n):
            self.store.append({k: v[0] for k, v in rows_for(self.schema, g, 1).items()})
        self.appended += n

    @rule(n=st.integers(0, 150))
    def extend(self, n):
        self.store.extend(rows_for(self.schema, self.appended, n))
        self.appended += n

    @rule()
    def commit(self):
        manifest = self.store.commit()
        self.committed = self.appended
        # Right after a commit the ring holds exactly the last `capacity` committed rows.
        first = 0 if self.capacity is None else max(self.retired, self.committed - self.capacity)
        assert (manifest.start, manifest.end) == (first, self.committed)

    @rule(commit_first=st.booleans())
    def reopen(self, commit_first):
        if commit_first:
            self.store.commit()
            self.committed = self.appended
        self.store.close()
        self.store = rs.open(self.dir / "s", "a")
        self.appended = self.committed  # uncommitted rows are gone, by design
        # ...and so are committed rows that the lost rows had already begun to overwrite.
        self.retired = self.store.manifest.start

    @invariant()
    def holds_a_suffix_of_the_committed_rows(self):
        """Committed rows are never lost, except the oldest ones the ring has overwritten.

        Between commits a full ring may retire the oldest rows early: it shrinks the window
        before replacing their bytes, and a reopen without commit keeps that shrink.
        """
        if not hasattr(self, "store"):
            return
        m = self.store.manifest
        first = 0 if self.capacity is None else max(0, self.committed - self.capacity)
        assert m.end == self.committed and m.start >= first
        if m.rows == 0:
            return
        expected = rows_for(self.schema, m.start, m.rows)
        slots = self.store.slots()
        for reader in (self.store, rs.open(self.dir / "s")):
            got = reader.get(slots)
            for name in self.schema.names:
                np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


StoreModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("RS_MODEL_EXAMPLES", 40)), stateful_step_count=12,
    deadline=None, suppress_health_check=[HealthCheck.too_slow])
test_store_model = StoreModel.TestCase
