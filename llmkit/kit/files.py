"""Content keys for caches: a file or folder is known by what it holds, not by its name.

`digest(path)` is the SHA-256 of the file (or of a folder's files, names included). Hashing a large
checkpoint every time would be slow, so the digest is remembered against the file's fingerprint (path,
size, mtime); a file rewritten in place — same name and size — gets a new mtime and is hashed again.
The memo is kept in memory and under `$LLMKIT_CACHE/digests.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

_lock = threading.Lock()
_memo: dict[str, dict[str, str]] | None = None


def fingerprint(path: str | Path) -> str:
    """Size and mtime of the file, or of every file under the folder (with relative names)."""
    path = Path(path)
    if path.is_file():
        stat = path.stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    parts = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        parts.append(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def digest(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, or of a folder's files (relative name, then bytes, in name order)."""
    path = Path(path).resolve()
    key, print_ = str(path), fingerprint(path)
    memo = _load()
    with _lock:
        known = memo.get(key)
        if known and known.get("fingerprint") == print_:
            return known["sha256"]
    sha = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            sha.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
    value = sha.hexdigest()
    with _lock:
        memo[key] = {"fingerprint": print_, "sha256": value}
        _save(memo)
    return value


def _memo_file() -> Path:
    from llmkit.catalog import cache_dir

    return cache_dir() / "digests.json"


def _load() -> dict[str, dict[str, str]]:
    global _memo
    with _lock:
        if _memo is None:
            try:
                _memo = json.loads(_memo_file().read_text())
            except (OSError, ValueError):
                _memo = {}
        return _memo


def _save(memo: dict[str, dict[str, str]]) -> None:
    target = _memo_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}")
        partial.write_text(json.dumps(memo))
        partial.replace(target)
    except OSError:  # a read-only cache only costs re-hashing
        pass
