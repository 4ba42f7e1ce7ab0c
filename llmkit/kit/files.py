"""Content keys for caches: a file or folder is known by what it holds, not by its name.

`digest(path)` is the SHA-256 of the file (or of a folder's files, names and sizes included). Hashing a
large checkpoint every time would be slow, so the digest is remembered against the file's fingerprint:
size, mtime, ctime, inode and device of the file (of every file, for a folder). A file rewritten in
place gets a new ctime even where the writer restores the mtime (``cp -p``, ``tar``, ``rsync -t``), and a
file replaced by another (rename) gets a new inode.

Timestamps have a granularity (a kernel tick, or 2 s on FAT): a file rewritten within the same tick in
which it was hashed keeps its fingerprint. As git does for its index ("racy clean" entries), a digest is
only remembered when every file is older than `RACY_SECONDS` at the time hashing began; younger files
are hashed again on each call until they are old enough.

The memo is kept in memory and under ``$LLMKIT_CACHE/digests.json`` (merged with what other processes
wrote; entries of paths that no longer exist are dropped).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

MEMO_VERSION = 2  # fingerprints and folder digests of version 1 are not trusted
RACY_SECONDS = 2.0  # a file changed less than this before hashing began is not memoised

_lock = threading.Lock()
_memos: dict[Path, dict[str, dict[str, str]]] = {}  # memo file -> {resolved path: {"fingerprint", "sha256"}}


def _files(path: Path, recursive: bool = True) -> list[Path]:
    """The files a digest covers: the file itself, or a folder's files in name order (symlinks followed),
    those of its sub-folders too unless `recursive` is false."""
    if path.is_file():
        return [path]
    return sorted(p for p in (path.rglob("*") if recursive else path.iterdir()) if p.is_file())


def _stamp(stat: os.stat_result) -> str:
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_ino}:{stat.st_dev}"


def _scan(path: Path, recursive: bool = True) -> tuple[str, int]:
    """The fingerprint of a file or folder, and the newest mtime/ctime (ns) among its files."""
    newest = 0
    if path.is_file():
        stat = path.stat()
        return f"v{MEMO_VERSION}:file:{_stamp(stat)}", max(stat.st_mtime_ns, stat.st_ctime_ns)
    parts = []
    for file in _files(path, recursive):
        stat = file.stat()
        newest = max(newest, stat.st_mtime_ns, stat.st_ctime_ns)
        parts.append(f"{file.relative_to(path).as_posix()}\0{_stamp(stat)}")
    return f"v{MEMO_VERSION}:{'dir' if recursive else 'top'}:" + hashlib.sha256("\n".join(parts).encode()).hexdigest(), newest


def fingerprint(path: str | Path, recursive: bool = True) -> str:
    """Size, mtime, ctime, inode and device of the file, or of every file under the folder (with relative
    names): changes whenever the content may have changed."""
    return _scan(Path(path), recursive)[0]


def _hash(path: Path, recursive: bool = True) -> str:
    """SHA-256 of the content: a file's is that of its bytes (what ``sha256sum`` prints, and the hub's
    LFS object id). A folder's: for each file in name order, its relative name, NUL, its size, NUL, then
    its bytes (the sizes make the stream unambiguous: no two folders give the same bytes)."""
    sha = hashlib.sha256()
    if path.is_file():
        _feed(sha, path)
        return sha.hexdigest()
    for file in _files(path, recursive):
        sha.update(file.relative_to(path).as_posix().encode() + b"\0" + str(file.stat().st_size).encode() + b"\0")
        _feed(sha, file)
    return sha.hexdigest()


def _feed(sha: "hashlib._Hash", file: Path) -> None:
    with open(file, "rb") as handle:
        while block := handle.read(1 << 20):
            sha.update(block)


def digest(path: str | Path, recursive: bool = True) -> str:
    """SHA-256 (hex) of a file's or folder's content (see `_hash`), memoised against its fingerprint.
    `recursive=False`: a folder's own files only, not its sub-folders' (e.g. a training run's checkpoints
    beside the final weights, when only the top level is read)."""
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    key = str(path) if recursive or path.is_file() else f"{path}{os.sep}*"
    started = time.time_ns()
    before, newest = _scan(path, recursive)
    memo_file = _memo_file()
    memo = _load(memo_file)
    with _lock:
        known = memo.get(key)
        if known and known.get("fingerprint") == before:
            return known["sha256"]
    value = _hash(path, recursive)
    after, _ = _scan(path, recursive)
    settled = newest < started - int(RACY_SECONDS * 1e9)
    if after == before and settled:  # unchanged while hashed, and too old to change within its timestamp tick
        with _lock:
            memo[key] = {"fingerprint": before, "sha256": value}
            _save(memo_file, memo, key)
    return value


def _memo_file() -> Path:
    from llmkit.catalog import cache_dir

    return cache_dir() / "digests.json"


def _read(memo_file: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _load(memo_file: Path) -> dict[str, dict[str, str]]:
    with _lock:
        if memo_file not in _memos:
            _memos[memo_file] = _read(memo_file)
        return _memos[memo_file]


def _save(memo_file: Path, memo: dict[str, dict[str, str]], key: str) -> None:
    """Merge this process's new entry into the file (others may have written theirs), dropping entries
    whose path is gone. Called with `_lock` held."""
    try:
        merged = {k: v for k, v in _read(memo_file).items() if os.path.exists(k.removesuffix(os.sep + "*"))}
        merged[key] = memo[key]
        memo.update(merged)
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        partial = memo_file.with_name(f"{memo_file.name}.{os.getpid()}.{threading.get_ident()}")
        partial.write_text(json.dumps(merged))
        partial.replace(memo_file)
    except OSError:  # a read-only cache only costs re-hashing
        pass


def forget() -> None:
    """Drop the in-memory memos (the files stay); the next `digest` reads them again (for tests)."""
    with _lock:
        _memos.clear()
