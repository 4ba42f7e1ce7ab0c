"""Engine processes (vLLM's EngineCore and workers, SGLang's scheduler): which are an engine's own, and
ending them when it closes.

`spawned_processes()` records the child processes that appear while an engine starts. Starts are
serialised process-wide, so two engines starting at once cannot claim each other's processes, and
closing one engine ends its own processes only.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import threading
from collections.abc import Iterator

_startup_lock = threading.RLock()


def child_pids() -> set[int]:
    import psutil

    pids = set()
    for process in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(process.cmdline()):
                pids.add(process.pid)
        except psutil.Error:  # exited, or a zombie
            pass
    return pids


@contextlib.contextmanager
def spawned_processes() -> Iterator[set[int]]:
    """`with spawned_processes() as pids: start()` — afterwards `pids` holds the processes start() made."""
    pids: set[int] = set()
    with _startup_lock:
        before = child_pids()
        try:
            yield pids
        finally:
            pids |= child_pids() - before


def wait_or_kill(pids: set[int], timeout: float = 15.0) -> list[int]:
    """Wait for the processes to exit, killing those still alive after `timeout`; returns the killed."""
    import psutil

    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in alive]


def alive(pids: set[int]) -> bool:
    import psutil

    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            pass
    return False


def unguarded_main_script() -> str | None:
    """The path of the `__main__` script when the engine is being loaded from its top-level code (no
    `if __name__ == "__main__":` guard). A spawned child process re-runs that code, so it would start
    the engine again. None when loaded from a function, an interactive session, `-c` or a guarded block."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or getattr(main, "__spec__", None) is not None and getattr(main.__spec__, "name", "") != "__main__":
        return None
    for frame_info in inspect.stack()[2:]:
        frame = frame_info.frame
        if frame.f_globals.get("__name__") in ("__main__", "__mp_main__") and frame.f_code.co_name == "<module>":
            if os.path.abspath(frame.f_code.co_filename) == os.path.abspath(path) and not _guarded(frame):
                return path
    return None


def _guarded(frame) -> bool:
    """Whether the module-level line running now sits inside an `if __name__ == "__main__":` block."""
    import ast

    try:
        source = open(frame.f_code.co_filename).read()
        tree = ast.parse(source)
    except (OSError, SyntaxError):
        return True  # cannot tell: do not accuse the script
    line = frame.f_lineno
    for node in tree.body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) and node.lineno <= line <= (node.end_lineno or line):
            return True
    return False
