"""The converted-model cache is keyed on the GGUF's content, and the content digest behind it is memoised.

The converter itself (transformers, ≈1 min for SmolLM2) is replaced by a fake that records its calls and
copies the source's bytes into the folder; everything else (`hf_folder`, the cache key, the record, the
digest and its memo) is the real code.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from llmkit import catalog
from llmkit.kit import files


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty $LLMKIT_CACHE, no in-memory memo, and a fake converter that records what it converted."""
    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path / "cache"))
    files.forget()
    calls: list[bytes] = []

    def fake_convert(gguf: Path, out: Path, *, source_sha256: str | None = None) -> Path:
        content = Path(gguf).read_bytes()
        calls.append(content)
        (out / "weights.bin").write_bytes(content)
        (out / catalog.RECORD).write_text(json.dumps({"source": str(gguf)}))  # as the real one does; replaced
        return out

    monkeypatch.setattr(catalog, "convert_gguf_to_hf", fake_convert)
    yield calls
    files.forget()


@pytest.fixture
def hashes(monkeypatch):
    """Every path `files.digest` actually reads (as opposed to answering from its memo)."""
    seen: list[Path] = []
    real = files._hash

    def spy(path, recursive=True):
        seen.append(Path(path))
        return real(path, recursive)

    monkeypatch.setattr(files, "_hash", spy)
    return seen


def write_gguf(path: Path, fill: bytes, size: int = 4096) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + fill * (size - 4))
    return path


def next_tick(path: Path) -> None:
    """Wait until a change made now gets a ctime different from `path`'s (timestamps have a granularity)."""
    probe = path.with_name(path.name + ".tick")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        probe.write_bytes(b"")
        if probe.stat().st_ctime_ns != path.stat().st_ctime_ns:
            probe.unlink()
            return
        time.sleep(0.01)
    raise AssertionError("file timestamps did not advance in 5 s")


def rewrite_same_size_same_mtime(path: Path, fill: bytes) -> None:
    """Replace the content in place, same size, and put the old mtime back (as `cp -p` or tar would)."""
    stat = path.stat()
    with open(path, "r+b") as handle:
        handle.write(b"GGUF" + fill * (stat.st_size - 4))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns


def test_two_ggufs_with_the_same_name_and_size_are_two_models(cache, tmp_path):
    a = write_gguf(tmp_path / "a" / "Model.Q4_1.gguf", b"A")
    b = write_gguf(tmp_path / "b" / "Model.Q4_1.gguf", b"B")
    os.utime(b, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns))  # even the mtime agrees
    folder_a, folder_b = Path(catalog.hf_folder(str(a))), Path(catalog.hf_folder(str(b)))
    assert folder_a != folder_b
    assert (folder_a / "weights.bin").read_bytes() == a.read_bytes()
    assert (folder_b / "weights.bin").read_bytes() == b.read_bytes()  # not A's weights
    assert len(cache) == 2
    record = json.loads((folder_b / catalog.RECORD).read_text())
    assert record["source_sha256"] == hashlib.sha256(b.read_bytes()).hexdigest()
    assert record["version"] == catalog.CONVERSION_VERSION


def test_a_gguf_rewritten_in_place_is_converted_again(cache, tmp_path, monkeypatch):
    """Same path, size and mtime, new content: the memo must not answer with the old digest either
    (RACY_SECONDS=0 makes the first digest memoised at once)."""
    monkeypatch.setattr(files, "RACY_SECONDS", 0)
    gguf = write_gguf(tmp_path / "Model.Q4_1.gguf", b"A")
    first = Path(catalog.hf_folder(str(gguf)))
    assert (first / "weights.bin").read_bytes() == gguf.read_bytes()
    next_tick(gguf)
    rewrite_same_size_same_mtime(gguf, b"B")
    second = Path(catalog.hf_folder(str(gguf)))
    assert second != first
    assert (second / "weights.bin").read_bytes() == gguf.read_bytes()
    assert len(cache) == 2


def test_a_file_rewritten_within_its_timestamp_tick_is_hashed_again(tmp_path, monkeypatch):
    """A file changed right after it was hashed may keep its fingerprint on a coarse-timestamp file
    system: such a young file is not memoised (the default RACY_SECONDS) and is hashed on every call."""
    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path / "cache"))
    files.forget()
    gguf = write_gguf(tmp_path / "Model.gguf", b"A")
    assert files.digest(gguf) == hashlib.sha256(gguf.read_bytes()).hexdigest()
    rewrite_same_size_same_mtime(gguf, b"B")  # no waiting: possibly the same tick
    assert files.digest(gguf) == hashlib.sha256(gguf.read_bytes()).hexdigest()


def test_a_moved_in_file_with_the_old_name_size_and_mtime_is_hashed_again(cache, tmp_path, monkeypatch):
    """`mv other.gguf model.gguf` over a memoised file: new inode (and ctime), so a new digest."""
    monkeypatch.setattr(files, "RACY_SECONDS", 0)
    gguf = write_gguf(tmp_path / "Model.gguf", b"A")
    first = files.digest(gguf)
    other = write_gguf(tmp_path / "other" / "Model.gguf", b"B")
    os.utime(other, ns=(gguf.stat().st_atime_ns, gguf.stat().st_mtime_ns))
    other.replace(gguf)
    assert files.digest(gguf) != first
    assert files.digest(gguf) == hashlib.sha256(b"GGUF" + b"B" * 4092).hexdigest()


def test_an_unchanged_gguf_is_hashed_once(cache, hashes, tmp_path, monkeypatch):
    monkeypatch.setattr(files, "RACY_SECONDS", 0)
    gguf = write_gguf(tmp_path / "Model.Q4_1.gguf", b"A")
    folders = {catalog.hf_folder(str(gguf)) for _ in range(3)}
    assert len(folders) == 1 and len(cache) == 1
    assert hashes == [gguf]
    files.forget()  # a new process: the memo comes back from $LLMKIT_CACHE/digests.json
    assert catalog.hf_folder(str(gguf)) in folders
    assert hashes == [gguf] and len(cache) == 1


def test_a_damaged_cache_entry_is_converted_again(cache, tmp_path):
    """A folder under the right key whose record names another source (or none) is not trusted."""
    gguf = write_gguf(tmp_path / "Model.Q4_1.gguf", b"A")
    folder = Path(catalog.hf_folder(str(gguf)))
    record = json.loads((folder / catalog.RECORD).read_text())
    (folder / catalog.RECORD).write_text(json.dumps({**record, "source_sha256": "0" * 64}))
    assert Path(catalog.hf_folder(str(gguf))) == folder
    assert len(cache) == 2
    assert json.loads((folder / catalog.RECORD).read_text())["source_sha256"] == record["source_sha256"]


def test_folder_digests_cover_names_sizes_and_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path / "cache"))
    files.forget()

    def folder(name: str, content: dict[str, bytes]) -> Path:
        root = tmp_path / name
        for rel, data in content.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        return root

    # the same bytes in one stream, split differently between files: different digests
    one = folder("one", {"a": b"xb\0y"})
    two = folder("two", {"a": b"x", "b": b"y"})
    assert files.digest(one) != files.digest(two)
    assert files.digest(folder("three", {"a": b"x", "b": b"y"})) == files.digest(two)  # content, not path
    nested = folder("nested", {"a": b"x", "b": b"y", "sub/checkpoint.bin": b"z" * 100})
    assert files.digest(nested) != files.digest(two)
    assert files.digest(nested, recursive=False) == files.digest(two, recursive=False)
