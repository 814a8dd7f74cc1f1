"""Model files: the one place the nodes list and resolve them.

The folders of a kind (``addsr``, ``ram``, ``stablesr``, ``vae``...) come from the ComfyUI bridge
(:func:`comfy_bridge.model_dirs`: ``ADDSR_<KIND>_DIR``, then ComfyUI's model folders and
``extra_model_paths.yaml``). Each folder's file listing is cached the way ComfyUI's
``folder_paths.get_filename_list`` caches its own: keyed by folder, with the modification time of
every directory walked, and walked again when one of them changed, so a file dropped into a
folder (or a subfolder) shows up at the next ``INPUT_TYPES`` call without a restart.

One addition: a directory modified within :data:`RACY_NS` of the walk is not trusted (a file
written in the same clock tick would leave its mtime unchanged), so such a folder is walked
again until it has settled; this is git's "racy timestamp" rule.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from . import comfy_bridge

WEIGHT_EXTENSIONS = frozenset(comfy_bridge.WEIGHT_EXTENSIONS)
TEXT_EXTENSIONS = frozenset({".txt"})
EXCLUDED_DIRS = frozenset({".git"})
RACY_NS = 2_000_000_000  # 2 s: well above any filesystem's timestamp granularity


@dataclass(frozen=True)
class _Listing:
    files: tuple[str, ...]  # every file under the folder, relative, POSIX separators, sorted
    dir_mtimes: dict[str, int]  # every directory walked (the folder itself included) -> st_mtime_ns
    settled: bool  # no directory changed within RACY_NS of the walk


_cache: dict[str, _Listing] = {}
_lock = threading.Lock()


def _walk(root: str) -> _Listing:
    """Every file under ``root`` (following links, skipping .git), and the mtime of every directory."""
    started = time.time_ns()
    files, dirs = [], {}
    try:
        dirs[root] = os.stat(root).st_mtime_ns
    except OSError:
        return _Listing((), {}, False)
    for dirpath, subdirs, filenames in os.walk(root, followlinks=True):
        subdirs[:] = [d for d in subdirs if d not in EXCLUDED_DIRS]
        rel = os.path.relpath(dirpath, root)
        for name in filenames:
            files.append(name if rel == "." else PurePosixPath(Path(rel).as_posix(), name).as_posix())
        for d in subdirs:
            path = os.path.join(dirpath, d)
            try:
                dirs[path] = os.stat(path).st_mtime_ns
            except OSError:
                continue
    settled = all(m < started - RACY_NS for m in dirs.values())
    return _Listing(tuple(sorted(files)), dirs, settled)


def _still_valid(listing: _Listing) -> bool:
    if not listing.settled:
        return False
    for path, mtime in listing.dir_mtimes.items():
        try:
            if os.stat(path).st_mtime_ns != mtime:
                return False
        except OSError:
            return False
    return True


def folder_files(root: Path | str) -> tuple[str, ...]:
    """Every file under ``root`` (relative POSIX names), from the cache while no directory changed."""
    key = os.path.abspath(root)
    listing = _cache.get(key)
    if listing is None or not _still_valid(listing):
        listing = _walk(key)
        with _lock:
            _cache[key] = listing
    return listing.files


def clear_cache() -> None:
    with _lock:
        _cache.clear()


def _suffix(name: str) -> str:
    return PurePosixPath(name).suffix.lower()


def _parents(name: str) -> list[str]:
    """'a/b/c.pt' -> ['', 'a', 'a/b'] (the folder itself is '')."""
    parts = name.split("/")[:-1]
    return [""] + ["/".join(parts[: i + 1]) for i in range(len(parts))]


def list_models(kind: str, *, folders_with: str | None = None) -> list[str]:
    """Weight files (relative names) under the ``kind`` folders, and release folders containing
    ``folders_with`` (e.g. ``unet``: a folder with ``unet/config.json``) listed by their folder
    name. Weight files inside a release folder (any folder with a ``config.json``, or below one)
    are left out: the release is picked as a whole."""
    names = set()
    for root in comfy_bridge.model_dirs(kind):
        files = folder_files(root)
        configs = {name.rpartition("/")[0] for name in files if name.rpartition("/")[2] == "config.json"}
        for name in files:
            if _suffix(name) in WEIGHT_EXTENSIONS and not any(p in configs for p in _parents(name)):
                names.add(name)
        if folders_with:
            for folder in configs:
                release, _, sub = folder.rpartition("/")
                if sub == folders_with and release:
                    names.add(release)
    return sorted(names)


def list_files(kinds: Iterable[str], extensions: Iterable[str]) -> list[str]:
    """Files with one of ``extensions`` (e.g. ``.txt``) under the folders of any of ``kinds``."""
    wanted = {e.lower() for e in extensions}
    return sorted({name for kind in kinds for root in comfy_bridge.model_dirs(kind)
                   for name in folder_files(root) if _suffix(name) in wanted})


def _searched(kinds: Iterable[str]) -> str:
    parts = []
    for kind in kinds:
        dirs = comfy_bridge.model_dirs(kind)
        parts.append(f"models/{kind} ({', '.join(str(d) for d in dirs)})" if dirs else f"models/{kind} (no such folder)")
    return " or ".join(parts)


def resolve(kinds: str | Iterable[str], name: str, *, what: str = "") -> Path:
    """The path of ``name`` (a name from the lists above) in the first folder of ``kinds`` that has
    it (checked on disk, so a file added since the last listing is found too); else
    ModelFileNotFoundError naming every folder searched."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    for kind in kinds:
        for root in comfy_bridge.model_dirs(kind):
            candidate = root / name
            if candidate.exists():
                return candidate
    subject = f"{what} {name!r}" if what else repr(name)
    raise comfy_bridge.ModelFileNotFoundError(
        f"{subject} not found in {_searched(kinds)}. Put the file there (then press R in ComfyUI to refresh "
        "the lists), or pick another one.")


_file_facts: dict[tuple[str, str], tuple[int, int, object]] = {}


def file_fact(path: Path, what: str, compute: Callable[[Path], object]):
    """``compute(path)`` (e.g. reading a header), cached while the file's size and mtime stay the same."""
    stat = os.stat(path)
    key = (os.path.abspath(path), what)
    cached = _file_facts.get(key)
    if cached is not None and cached[:2] == (stat.st_mtime_ns, stat.st_size):
        return cached[2]
    value = compute(path)
    _file_facts[key] = (stat.st_mtime_ns, stat.st_size, value)
    return value
