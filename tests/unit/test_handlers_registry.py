"""The kopf wiring registers only event and index handlers: kopf then stores nothing on our
objects, and the diff-base it would build on every event (NoDiffBase) is never read."""

from __future__ import annotations

import pytest

from modelops.handlers.operator import Operator
from modelops.handlers.registry import NoDiffBase, build_registry
from modelops.settings import Settings

pytestmark = pytest.mark.unit


def test_only_event_and_index_handlers_are_registered() -> None:
    registry = build_registry(Operator(Settings.from_env({}), lambda wake: None))  # type: ignore[arg-type, return-value]
    assert not registry._changing.get_all_handlers(), "an on.create/update/resume handler would need a real diff-base"
    assert not registry._spawning.get_all_handlers(), "a daemon or timer would need a real diff-base"
    assert registry._watching.get_all_handlers() and registry._indexing.get_all_handlers()


def test_no_diff_base_is_built_or_stored() -> None:
    storage = NoDiffBase()
    body = {"metadata": {"name": "a"}, "spec": {"x": 1}}
    assert storage.build(body=body) == {}  # type: ignore[arg-type]
    assert storage.fetch(body=body) is None  # type: ignore[arg-type]
