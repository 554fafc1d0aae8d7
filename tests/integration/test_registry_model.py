"""The registry against a dictionary model (hypothesis stateful testing): any sequence of
reserve and release calls leaves the file holding exactly what the model holds."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from portside.registry import GLOBAL_SCOPE, Registry, ReservationConflictError

NAMES = st.sampled_from(["web", "api", "db", "worker", "docs"])
SCOPES = st.sampled_from([GLOBAL_SCOPE, "/src/one", "/src/two"])
#: Explicit ports: few, so that conflicts happen; below the default range, so a hashed
#: choice never lands on one.
EXPLICIT = st.one_of(st.none(), st.sampled_from([9101, 9102, 9103]))


class RegistryMatchesADict(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ps-reg-model-"))
        self.registry = Registry.open(self.dir / "registry.sqlite3")
        self.model: dict[tuple[str, str], int] = {}

    def teardown(self) -> None:
        self.registry.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(name=NAMES, scope=SCOPES, port=EXPLICIT)
    def reserve(self, name: str, scope: str, port: int | None) -> None:
        key = (scope, name)
        owner = next((k for k, p in self.model.items() if p == port and k != key), None)
        if key in self.model and port not in (None, self.model[key]):
            with pytest.raises(ReservationConflictError, match="release"):
                self.registry.reserve(name, scope=scope, port=port)
            return
        if key not in self.model and owner is not None:
            with pytest.raises(ReservationConflictError, match="reserved for"):
                self.registry.reserve(name, scope=scope, port=port)
            return
        result = self.registry.reserve(name, scope=scope, port=port)
        assert result.created == (key not in self.model)
        if key in self.model:
            assert result.reservation.port == self.model[key]
        elif port is not None:
            assert result.reservation.port == port
        self.model[key] = result.reservation.port

    @rule(name=NAMES, scope=SCOPES)
    def release(self, name: str, scope: str) -> None:
        released = self.registry.release(name, scope=scope)
        expected = self.model.pop((scope, name), None)
        assert (released.port if released else None) == expected

    @invariant()
    def same_contents(self) -> None:
        stored = {(r.scope, r.name): r.port for r in self.registry.reservations()}
        assert stored == self.model
        assert len(set(stored.values())) == len(stored)


RegistryMatchesADict.TestCase.settings = settings(max_examples=40, stateful_step_count=25)
test_registry_matches_a_dict = RegistryMatchesADict.TestCase
