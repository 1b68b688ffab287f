"""The content-addressed store on a directory (the layout is in nodecache.layout).

Guarantees:
- An entry is visible (its name `sha256/<hex>` exists) only once its bytes hashed to `<hex>`
  while they streamed: `fill` downloads through ObjectStore.download, which writes
  `<hex>.partial` beside it, fsyncs it and renames it; the directory is fsynced after.
- `lookup` returns an entry only when its record exists and its size matches; an entry that
  fails is deleted. `verify` re-hashes it in full.
- Entries named under `pins/` are never evicted; pinning and eviction hold the same flock, so
  an entry pinned and then found by `lookup` stays until it is unpinned.
- The last use is the mtime of the entry's record, so LRU order survives a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from modelops.nodecache import layout
from modelops.nodecache.layout import Entry, EvictionPlan, Manifest

log = logging.getLogger("modelops.nodecache")

ViewMode = Literal["hardlink", "symlink"]


class CacheFull(Exception):
    """The pinned entries leave too little room under the budget for a fill."""


@dataclass
class RebuildReport:
    entries: int = 0
    bytes: int = 0
    corrupt_removed: list[str] = field(default_factory=list)
    partials_kept: list[str] = field(default_factory=list)
    partials_discarded: list[str] = field(default_factory=list)
    sets: int = 0


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, text: str) -> None:
    """`text` at `path`, whole or not at all: written beside it, fsynced, renamed, the folder fsynced."""
    tmp = path.with_name(path.name + layout.TMP_SUFFIX)
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class Store:
    def __init__(self, root: Path, budget: int, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.budget = budget
        self._clock = clock
        self.entries_dir = self.root / layout.ENTRIES
        self.sets_dir = self.root / layout.SETS
        self.pins_dir = self.root / layout.PINS
        for folder in (self.entries_dir, self.sets_dir, self.pins_dir):
            if not folder.is_dir():  # a reader on a read-only mount finds them made
                folder.mkdir(parents=True, exist_ok=True)
                folder.chmod(0o755)  # readable by a pod's non-root user, whatever the umask

    # ----------------------------------------------------------------- names

    def entry_path(self, digest: str) -> Path:
        return self.entries_dir / digest

    def _meta(self, digest: str) -> Path:
        return self.entries_dir / (digest + layout.META_SUFFIX)

    def _partial(self, digest: str) -> Path:
        return self.entries_dir / (digest + layout.PARTIAL_SUFFIX)

    def _journal(self, digest: str) -> Path:
        return self.entries_dir / (digest + layout.JOURNAL_SUFFIX)

    def _manifest_path(self, set_digest: str) -> Path:
        return self.sets_dir / f"{set_digest}.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The store's flock; not reentrant (each call opens its own descriptor)."""
        fd = os.open(self.root / layout.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # ----------------------------------------------------------------- reads

    def size_of(self, digest: str) -> int | None:
        """The entry's size as recorded when it was filled (None: no record)."""
        try:
            text = self._meta(digest).read_text(encoding="utf-8")
            return int(json.loads(text)["size"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _entry_problem(self, digest: str) -> str | None:
        """Why the entry may not be used (None: it may); absent entries are not problems."""
        size = self.size_of(digest)
        try:
            actual = self.entry_path(digest).stat().st_size
        except FileNotFoundError:
            return None
        if size is None:
            return "no record of its size"
        if actual != size:
            return f"{actual} bytes where {size} were stored"
        return None

    def lookup(self, digest: str, *, touch: bool = True) -> Path | None:
        """The entry's path, its last use set to now (unless `touch` is False); None when it is
        absent or fails its check (and is then deleted)."""
        path = self.entry_path(digest)
        if not path.exists():
            return None
        problem = self._entry_problem(digest)
        if problem is not None:
            # A reader on a read-only mount cannot remove it; the agent does when it next looks.
            with contextlib.suppress(OSError), self.locked():
                if self._entry_problem(digest) is not None:
                    log.warning("entry %s is corrupt (%s): removed", digest, problem)
                    self._remove_entry(digest)
            return None
        if touch:
            self.touch(digest)
        return path

    def verify(self, digest: str) -> bool:
        """Re-hash the entry in full; one that does not hash to its name is deleted."""
        path = self.lookup(digest)
        if path is None:
            return False
        hasher = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(8 * 2**20):
                hasher.update(chunk)
        if hasher.hexdigest() == digest:
            return True
        log.warning("entry %s hashes to %s: removed", digest, hasher.hexdigest())
        with self.locked():
            self._remove_entry(digest)
        return False

    def touch(self, digest: str) -> None:
        now = self._clock()
        # Absent, or a reader on a read-only mount: the agent records the use when it pins.
        with contextlib.suppress(OSError):
            os.utime(self._meta(digest), (now, now))

    def entries(self) -> list[Entry]:
        found = []
        for path in self.entries_dir.iterdir():
            if not layout.is_digest(path.name):
                continue
            size = self.size_of(path.name)
            try:
                last_used = self._meta(path.name).stat().st_mtime
            except FileNotFoundError:
                continue
            if size is not None:
                found.append(Entry(path.name, size, last_used))
        return found

    def manifest(self, set_digest: str, *, touch: bool = True) -> Manifest | None:
        """The set's manifest when every file of it is a usable entry (each then touched,
        unless `touch` is False)."""
        path = self._manifest_path(set_digest)
        try:
            manifest = Manifest.parse(path.read_text(encoding="utf-8"), set_digest)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("manifest %s is unreadable (%s): removed", set_digest, err)
            path.unlink(missing_ok=True)
            return None
        if all(self.lookup(f.sha256, touch=touch) is not None for f in manifest.files):
            return manifest
        return None

    def _manifests(self) -> dict[str, Manifest]:
        found = {}
        for path in self.sets_dir.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                found[path.stem] = Manifest.parse(path.read_text(encoding="utf-8"), path.stem)
        return found

    # ----------------------------------------------------------------- writes

    def fill(self, digest: str, size: int, download: Callable[[Path], Any]) -> Any:
        """Make entry `digest` of `size` bytes with `download(dest)`, which must write `dest`
        only once its bytes verified (ObjectStore.download does: `<dest>.partial` and its
        journal until then, kept across a transient failure so the next fill resumes)."""
        write_atomically(self._meta(digest), f'{{"size": {size}}}\n')
        try:
            result = download(self.entry_path(digest))
        except BaseException:
            if not self._partial(digest).exists():  # nothing to resume: the record goes too
                self._meta(digest).unlink(missing_ok=True)
            raise
        os.chmod(self.entry_path(digest), 0o444)
        fsync_dir(self.entries_dir)
        self.touch(digest)
        return result

    def store_manifest(self, manifest: Manifest) -> None:
        write_atomically(self._manifest_path(manifest.digest), manifest.render())

    def pin(self, claim: str, digests: Iterable[str]) -> None:
        """Mark the digests (entries or sets) as used by `claim`; eviction never takes them."""
        folder = self.pins_dir / layout.validate_claim(claim)
        with self.locked():
            folder.mkdir(exist_ok=True)
            for digest in digests:
                if not layout.is_digest(digest):
                    raise ValueError(f"pin {digest!r}: not a sha256 hex digest")
                (folder / digest).touch()
            fsync_dir(folder)

    def unpin(self, claim: str) -> None:
        with self.locked():
            shutil.rmtree(self.pins_dir / layout.validate_claim(claim), ignore_errors=True)

    def pins(self) -> dict[str, list[str]]:
        return {
            folder.name: sorted(p.name for p in folder.iterdir() if layout.is_digest(p.name))
            for folder in self.pins_dir.iterdir()
            if folder.is_dir()
        }

    def pinned(self) -> set[str]:
        return layout.pinned_digests(self.pins(), self._manifests())

    def reserve(self, needed: int, keep: Iterable[str] = ()) -> list[str]:
        """Evict least recently used entries, never a pinned one nor one in `keep` (the fill's
        own), so that `needed` more bytes fit the budget; return what went. CacheFull, evicting
        nothing, when what must stay leaves too little room."""
        with self.locked():
            plan = layout.plan_eviction(self.entries(), self.pinned() | set(keep), self.budget, needed)
            if plan.shortfall:
                raise CacheFull(
                    f"{needed} bytes do not fit the budget of {self.budget} bytes: "
                    f"{plan.shortfall} bytes short with every unpinned entry gone"
                )
            return self._apply(plan)

    def trim(self) -> list[str]:
        """Evict least recently used unpinned entries until the store fits its budget."""
        with self.locked():
            return self._apply(layout.plan_eviction(self.entries(), self.pinned(), self.budget))

    def _apply(self, plan: EvictionPlan) -> list[str]:
        for digest in plan.evict:
            log.info("evicting %s (least recently used)", digest)
            self._remove_entry(digest)
        return list(plan.evict)

    def _remove_entry(self, digest: str) -> None:
        """The entry, its record and every manifest that names it (the set is no longer whole)."""
        self.entry_path(digest).unlink(missing_ok=True)
        self._meta(digest).unlink(missing_ok=True)
        for set_digest, manifest in self._manifests().items():
            if any(f.sha256 == digest for f in manifest.files):
                self._manifest_path(set_digest).unlink(missing_ok=True)

    def discard_partial(self, digest: str) -> None:
        self._partial(digest).unlink(missing_ok=True)
        self._journal(digest).unlink(missing_ok=True)

    # ----------------------------------------------------------------- restart

    def rebuild(self, wanted: set[str]) -> RebuildReport:
        """Check the store after a restart: corrupt entries and leftovers go; a partial download
        of an entry in `wanted` stays to be resumed, any other is discarded."""
        report = RebuildReport()
        with self.locked():
            names = {p.name for p in self.entries_dir.iterdir()}
            for name in sorted(names):
                self._rebuild_one(name, names, wanted, report)
            manifests = self._manifests()
            for path in self.sets_dir.iterdir():
                manifest = manifests.get(path.stem) if path.suffix == ".json" else None
                if manifest is not None and all(self.entry_path(f.sha256).exists() for f in manifest.files):
                    report.sets += 1
                else:
                    path.unlink(missing_ok=True)  # unreadable, another set's, incomplete, or a leftover
        log.info(
            "store rebuilt: %d entries (%d bytes), %d sets; corrupt removed %s; partials kept %s, discarded %s",
            report.entries, report.bytes, report.sets, report.corrupt_removed, report.partials_kept,
            report.partials_discarded,
        )
        return report

    def _rebuild_one(self, name: str, names: set[str], wanted: set[str], report: RebuildReport) -> None:
        path = self.entries_dir / name
        digest = name.split(".", 1)[0]
        if not layout.is_digest(digest) or name.endswith(layout.TMP_SUFFIX):
            path.unlink(missing_ok=True)
        elif name == digest:
            problem = self._entry_problem(digest)
            if problem is None:
                report.entries += 1
                report.bytes += path.stat().st_size
            else:
                report.corrupt_removed.append(digest)
                self._remove_entry(digest)
        elif name == digest + layout.PARTIAL_SUFFIX:
            if digest in wanted and digest not in names:
                report.partials_kept.append(digest)
            else:
                report.partials_discarded.append(digest)
                self.discard_partial(digest)
        elif name == digest + layout.META_SUFFIX:
            if digest not in names and (digest + layout.PARTIAL_SUFFIX not in names or digest not in wanted):
                path.unlink(missing_ok=True)
        elif name == digest + layout.JOURNAL_SUFFIX:
            if digest + layout.PARTIAL_SUFFIX not in names:
                path.unlink(missing_ok=True)
        else:
            path.unlink(missing_ok=True)

    # ----------------------------------------------------------------- views

    def make_view(
        self,
        manifest: Manifest,
        dest: Path,
        mode: ViewMode = "hardlink",
        *,
        target_root: Path | None = None,
        rename: Mapping[str, str] | None = None,
    ) -> Path:
        """A folder with every file of the set at its path (or `rename[path]`), each a link into
        the store: hard links (same filesystem as the store) or symbolic links to
        `target_root/sha256/<hex>`, where a pod that mounts the store sees it (default: the
        store's own root). The folder appears whole or not at all. Make views of pinned sets
        only: a hard link keeps an evicted entry's bytes on disk."""
        dest = Path(dest)
        staging = dest.with_name(f".{dest.name}{layout.TMP_SUFFIX}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        target_entries = (Path(target_root) if target_root is not None else self.root) / layout.ENTRIES
        for file in manifest.files:
            link = staging / (rename or {}).get(file.path, file.path)
            link.parent.mkdir(parents=True, exist_ok=True)
            if mode == "hardlink":
                os.link(self.entry_path(file.sha256), link)
            else:
                link.symlink_to(target_entries / file.sha256)
        os.replace(staging, dest)
        fsync_dir(dest.parent)
        return dest
