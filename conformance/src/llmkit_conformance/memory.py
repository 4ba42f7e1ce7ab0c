"""Memory: `llmkit plan`'s figures beside what the engine says it allocated, and what the machine shows
in use (the device's memory on a GPU, the process tree's resident set on a CPU)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from llmkit.planner import KV_BYTES, WEIGHT_BYTES, compare_with_engine, load_shape


def process_tree_rss() -> int:
    """Resident bytes of this process and its descendants (engine cores and workers run as children)."""
    total, pending = 0, [os.getpid()]
    while pending:
        pid = pending.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            total += next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
            for task in Path(f"/proc/{pid}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total


def device_memory() -> dict[str, Any] | None:
    """Memory in use on CUDA device 0 by every process (an engine's workers are other processes), or
    None without CUDA. Only looked at where torch is imported already: the engine brought it."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info(0)
    return {"device": torch.cuda.get_device_name(0), "used_bytes": total - free, "total_bytes": total}


def memory_report(engine: Any, model: str) -> dict[str, Any]:
    usage = engine.memory()
    report: dict[str, Any] = {"engine": usage.model_dump() if usage else None, "plan": [], "note": None,
                              "process_tree_rss_bytes": process_tree_rss() if sys.platform == "linux" else None,
                              "device": device_memory()}
    if usage is None:
        report["note"] = f"{engine.backend} does not report its allocations"
        return report
    try:
        shape = load_shape(model)
    except Exception as exc:  # noqa: BLE001 - e.g. an Ollama tag or a bare GGUF: no config.json to plan from
        report["note"] = f"no model config to plan from ({type(exc).__name__}: {exc})"
        return report
    report["plan"] = compare_with_engine(shape, usage)
    device = report["device"]
    if device and usage.weights_dtype in WEIGHT_BYTES and usage.kv_cache_tokens and usage.kv_dtype in KV_BYTES:
        planned = shape.parameters * WEIGHT_BYTES[usage.weights_dtype] + shape.kv_bytes_per_token(usage.kv_dtype) * usage.kv_cache_tokens
        report["plan"].append({"quantity": "device memory in use (weights + KV cache planned; CUDA contexts, activations "
                               "and graphs come on top)", "planned_bytes": planned, "engine_bytes": device["used_bytes"],
                               "ratio": device["used_bytes"] / planned})
    return report
