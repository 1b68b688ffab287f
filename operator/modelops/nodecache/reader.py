"""A serving pod's read-only use of its node's cache: find a verified artifact, or wait a while
for the agent to fill it.

The pod mounts the cache read-only, so it neither pins nor records a use; the agent pins for
it (nodecache.pods), from the pod's own fetch container arguments. What the reader returns was
verified on the way in: every entry's name is its sha256, and `Store.lookup` refuses an entry
whose size is not the one recorded when it was filled.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelops.nodecache import layout
from modelops.nodecache.layout import FillRequest, Phase
from modelops.nodecache.store import Store

# Phases after which waiting cannot help: the fetch downloads the artifact itself.
_GIVE_UP = {Phase.FAILED, Phase.EVICTED}


@dataclass(frozen=True)
class Hit:
    """Every file of the artifact in the cache: (path in the artifact, entry path)."""

    digest: str
    files: tuple[tuple[str, Path], ...]


class CacheReader:
    def __init__(self, root: Path, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self._clock = clock
        self.store = Store(self.root, budget=0, clock=clock)

    def find(self, request: FillRequest) -> Hit | None:
        if request.is_set:
            manifest = self.store.manifest(request.digest, touch=False)
            if manifest is None:
                return None
            return Hit(request.digest, tuple((f.path, self.store.entry_path(f.sha256)) for f in manifest.files))
        path = self.store.lookup(request.digest, touch=False)
        return None if path is None else Hit(request.digest, ((request.files[0][0], path),))

    def answer(self, name: str) -> dict[str, Any] | None:
        try:
            body = json.loads((self.root / layout.STATUS / f"{name}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    def agent_age(self) -> float | None:
        """Seconds since the agent's last scan; None when no agent ever ran here."""
        try:
            return max(0.0, self._clock() - (self.root / layout.HEARTBEAT).stat().st_mtime)
        except OSError:
            return None

    def wait(self, request: FillRequest, name: str | None, timeout_s: float, *,
             agent_timeout_s: float = 30.0, sleep: Callable[[float], None] = time.sleep) -> tuple[Hit | None, str]:
        """The artifact once the agent has it, or None and why not: no agent (its heartbeat is
        older than `agent_timeout_s`), no answer to this pod's request within `agent_timeout_s`
        (the agent does not know the pod), a failed or evicted fill, or `timeout_s` spent."""
        start = self._clock()
        while True:
            hit = self.find(request)
            if hit is not None:
                return hit, "in the node cache"
            age = self.agent_age()
            if age is None or age > agent_timeout_s:
                return None, "no node cache agent is running on this node"
            answer = self.answer(name) if name else None
            waited = self._clock() - start
            if answer is None and waited > agent_timeout_s:
                return None, "the node cache agent has not taken this pod's request"
            if answer is not None and answer.get("phase") in _GIVE_UP:
                return None, f"the node cache answered {answer.get('phase')} {answer.get('reason')}: {answer.get('message')}"
            if waited >= timeout_s:
                return None, f"the node cache did not fill the artifact within {timeout_s:g}s"
            sleep(0.5)
