"""The `llmcompressor` quantizer: a Hugging Face folder → a compressed-tensors checkpoint (a folder vLLM and
SGLang load as the model), made by llm-compressor's `oneshot` in its own environment.

Calibration (w8a8-int8, w4a16): the first `calibration_samples` records of the training split (ch. 7's
split: the first 85 %) of the data file, formatted as the model sees them: the Alpaca prompt followed by
the response (chat records: the conversation through the model's chat template; preference records: the
prompt and the chosen answer). The split keeps the conformance suite's held-out records (935-974 of the
ch. 7 set) out of calibration.

The folder is written under a temporary name and renamed when complete; `llmkit-quantization.json` in it
records the method, the recipe, the calibration data (file digest, records used) and the versions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmkit.catalog import hf_folder
from llmkit.errors import InvalidRequestError, UnsupportedFeatureError
from llmkit.kit.venvs import ensure
from llmkit.quantizer import QuantizeError, QuantizeJob, Quantizer
from llmkit_llmcompressor.env import ENV
from llmkit_llmcompressor.recipes import GROUPED, RECIPES, W4A16_GROUP, check_group_size, verify_checkpoint

SIDE_SCRIPT = Path(__file__).parent / "side" / "compress.py"
RECORD = "llmkit-quantization.json"


def calibration_records(job: QuantizeJob) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The job's calibration records, as text or messages for the side script (see the module docstring),
    and where they came from."""
    from llmkit.data import load_examples, split
    from llmkit.kit.files import digest

    fmt, examples = load_examples(job.calibration)
    train = split(examples).train
    if len(train) < job.calibration_samples:
        raise InvalidRequestError(f"llmcompressor: {job.calibration} has {len(train)} training records, fewer than "
                                  f"calibration_samples={job.calibration_samples}", parameter="calibration_samples",
                                  value=job.calibration_samples)
    records = []
    for example in train[: job.calibration_samples]:
        answer = example.completion if example.completion is not None else example.chosen
        if example.conversational:
            records.append({"messages": [*example.prompt, {"role": "assistant", "content": answer}]})
        else:
            records.append({"text": example.prompt + answer})
    source = {"file": str(job.calibration), "sha256": digest(job.calibration), "format": fmt,
              "records": f"train split, first {job.calibration_samples}"}
    return records, source


class LLMCompressorQuantizer(Quantizer):
    name = "llmcompressor"
    format = "compressed-tensors"
    engines = ("vllm", "sglang")
    methods = {method: recipe.description for method, recipe in RECIPES.items()}
    calibrated = frozenset(method for method, recipe in RECIPES.items() if recipe.calibrated)
    grouped = GROUPED

    def _quantize(self, job: QuantizeJob, emit: Callable[[str, str], None]) -> Path:
        if Path(job.model).suffix == ".gguf":
            raise UnsupportedFeatureError(self.name, "quantize from GGUF", "give the Hugging Face folder or a catalog name")
        folder = Path(hf_folder(job.model))
        config = json.loads((folder / "config.json").read_text())
        if config.get("quantization_config"):
            raise UnsupportedFeatureError(self.name, "quantize a quantized checkpoint",
                                          f"{folder} is already quantized ({config['quantization_config'].get('quant_method')})")
        if job.method in GROUPED:
            check_group_size(config, job.group_size or W4A16_GROUP)
        records, source = calibration_records(job) if job.method in self.calibrated else ([], None)
        ensure(ENV, lambda line: emit("environment", line))
        partial = job.output.with_name(f".{job.output.name}.{os.getpid()}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        spec = {"model": str(folder), "dtype": job.dtype, "recipe": RECIPES[job.method].modifiers(job.method, job.group_size),
                "records": records, "max_seq_length": job.max_seq_length, "output": str(partial)}
        job_file = partial.with_suffix(".job.json")
        job_file.write_text(json.dumps(spec))
        log_file = job.output.with_name(f"{job.output.name}.llmcompressor.log")
        try:
            done = self._run(ENV.python(), job_file, log_file, emit)
            try:
                counts = verify_checkpoint(partial, job.method)
            except ValueError as exc:
                raise QuantizeError(f"llmcompressor: the checkpoint is not {job.method}: {exc} (log: {log_file})") from None
            emit("verify", f"{counts['quantized']} Linear weights stored as {job.method}")
            record = {"method": job.method, "format": self.format, "quantizer": self.name, "source": str(folder),
                      "dtype": job.dtype, "recipe": spec["recipe"], "group_size": job.group_size,
                      "calibration": source,
                      "max_seq_length": job.max_seq_length if records else None,
                      "calibration_tokens": done.get("tokens"), "seconds": done.get("seconds"), "versions": done.get("versions")}
            (partial / RECORD).write_text(json.dumps(record, indent=2) + "\n")
            if job.output.exists():
                job.output.rmdir()  # checked empty by QuantizeJob
            partial.replace(job.output)
        finally:
            job_file.unlink(missing_ok=True)
            shutil.rmtree(partial, ignore_errors=True)
        return job.output

    def _run(self, python: Path, job_file: Path, log_file: Path, emit: Callable[[str, str], None]) -> dict[str, Any]:
        """The side script, its JSON progress lines passed on; its stderr (llm-compressor's log) to `log_file`."""
        summary: dict[str, Any] = {}
        with open(log_file, "w") as log:
            process = subprocess.Popen([str(python), str(SIDE_SCRIPT), str(job_file)], stdout=subprocess.PIPE, stderr=log,
                                       text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            assert process.stdout is not None
            for line in process.stdout:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a library printing to stdout
                summary.update({k: v for k, v in event.items() if k not in ("stage", "message")})
                emit(event["stage"], event["message"])
            code = process.wait()
        if code:
            tail = "".join(log_file.read_text(errors="replace").splitlines(keepends=True)[-12:])
            raise QuantizeError(f"llmcompressor: llm-compressor failed (exit {code}; log: {log_file}):\n{tail}")
        return summary
