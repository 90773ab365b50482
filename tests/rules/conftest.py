"""Every rule test also checks the rule's ``reads``: each ``check`` runs on a copy of its Evidence
that records which fields and table columns the rule touched, and a rule that reads something it
does not declare fails the test (the engine skips rules whose declared evidence is absent)."""

from __future__ import annotations

import copy
import functools
from dataclasses import fields

import pytest

from modeldebug.evidence import Evidence, Table
from modeldebug.rules import KEY_COLUMNS, registry

_FIELDS = {f.name for f in fields(Evidence)}


class _RecordingTable(Table):
    __slots__ = ("_seen", "_field")

    @classmethod
    def of(cls, table: Table, seen: set[str], name: str) -> "_RecordingTable":
        t = object.__new__(cls)
        object.__setattr__(t, "_cols", table._cols)
        object.__setattr__(t, "_seen", seen)
        object.__setattr__(t, "_field", name)
        return t

    def _saw(self, column: str) -> None:
        self._seen.add(f"{self._field}.{column}")

    def __getattr__(self, name):
        self._saw(name)
        return super().__getattr__(name)

    def __getitem__(self, selector):
        if isinstance(selector, str):
            self._saw(selector)
            return super().__getitem__(selector)
        return _RecordingTable.of(super().__getitem__(selector), self._seen, self._field)

    def __contains__(self, name):
        self._saw(name)
        return super().__contains__(name)

    def group_by(self, column):
        self._saw(column)
        return super().group_by(column)


class _RecordingEvidence(Evidence):
    def __getattribute__(self, name):
        if name in _FIELDS:
            object.__getattribute__(self, "_seen").add(name)
        return object.__getattribute__(self, name)


def recording(ev: Evidence) -> tuple[Evidence, set[str]]:
    seen: set[str] = set()
    rec = copy.copy(ev)
    object.__setattr__(rec, "__class__", _RecordingEvidence)
    object.__setattr__(rec, "_seen", seen)
    object.__setattr__(rec, "_layer_groups", None)  # regroup through the recording tables
    object.__setattr__(rec, "_param_groups", None)
    for f in fields(Evidence):
        value = object.__getattribute__(ev, f.name)
        if isinstance(value, Table):
            object.__setattr__(rec, f.name, _RecordingTable.of(value, seen, f.name))
    return rec, seen


def undeclared(reads: tuple[str, ...], seen: set[str]) -> set[str]:
    """What was read that ``reads`` does not cover."""
    declared = set(reads)
    tops = {r.partition(".")[0] for r in declared}
    out = set()
    for item in seen:
        name, _, column = item.partition(".")
        if not column:
            ok = name in tops
        else:
            ok = item in declared or name in declared or (column in KEY_COLUMNS and name in tops)
        if not ok:
            out.add(item)
    return out


@pytest.fixture(autouse=True)
def _rules_read_what_they_declare(monkeypatch):
    for cls in registry().values():
        if "check" not in vars(cls):
            continue
        original = vars(cls)["check"]

        @functools.wraps(original)
        def check(self, ev, _original=original, _cls=cls):
            if not isinstance(ev, Evidence) or isinstance(ev, _RecordingEvidence):
                return _original(self, ev)
            rec, seen = recording(ev)
            out = _original(self, rec)
            extra = undeclared(_cls.reads, seen)
            assert not extra, f"{_cls.__name__} reads {sorted(extra)} but its `reads` does not declare them"
            return out

        monkeypatch.setattr(cls, "check", check)
