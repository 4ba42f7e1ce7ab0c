"""The fine-tuning walk-through of ch. 7 (*Build a Large Language Model (From Scratch)*) in miniature: a LoRA
on 40 records of the instruction data with TRL, the adapter served by the transformers engine, its answers on
the test split scored 0-100 by a judge model (SmolLM2 itself here; a larger model in earnest).

Four optimizer steps teach the model next to nothing: this shows the workflow, not a better model.

    .venv/bin/python examples/tune_and_judge.py ../shared/datasets/instruction-data.json
"""

import json
import sys
import tempfile
from pathlib import Path

import llmkit
from llmkit.evaluate import answer, judge


def show(progress: llmkit.TuneProgress) -> None:
    if progress.loss is not None:
        print(f"step {progress.step}/{progress.total_steps}: training loss {progress.loss:.3f}", flush=True)


def main(data_file: str) -> None:
    records = json.loads(Path(data_file).read_text())[:40]
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "slice.json"
        data.write_text(json.dumps(records))
        job = {"model": llmkit.DEFAULT_MODEL, "data": str(data), "output_dir": str(Path(folder) / "run"),
               "method": "lora", "lora": {"r": 8, "alpha": 16}, "max_steps": 4, "batch_size": 4,
               "learning_rate": 2e-4, "max_seq_length": 256, "seed": 0}
        result = llmkit.tune("trl", job, on_progress=show)
        print(f"adapter: {result.path.name}, {result.steps} steps in {result.seconds:.0f} s, "
              f"validation loss {result.eval_loss_before:.3f} -> {result.eval_loss_after:.3f}")

        # The run kept its splits (ch. 7's 85/10/5): judge the test split.
        test = result.split("test")
        with llmkit.load("transformers", str(result.path)) as tuned:  # the adapter, merged on load
            answers = answer(tuned, test, max_tokens=32)
        with llmkit.load("transformers", llmkit.DEFAULT_MODEL) as judge_engine:
            report = judge(judge_engine, test, answers)
    for detail in report.details:
        print(f"[{detail['score']:3}] {detail['answer'][:70]!r}")
    print(f"judge {report.judge_model}: mean score {report.mean:.1f} over {len(report.scores)} test answers")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
