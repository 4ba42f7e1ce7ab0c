"""`python -m llmkit_unsloth.child CALL.json`: one Unsloth training in a fresh process (see tuner.py).

Unsloth is imported first, before anything imports trl or transformers. Progress, the result and a failure go
to stdout as `LLMKIT_EVENT`, `LLMKIT_RESULT` and `LLMKIT_ERROR` lines for the parent.
"""

import json
import sys
import traceback


def main(call_path: str) -> int:
    import unsloth  # noqa: F401 - first: it patches trl, transformers and peft

    from llmkit.tuner import TuneJob, prepare_run
    from llmkit_unsloth.tuner import EVENT, FAILURE, RESULT, UnslothTraining

    try:
        call = json.loads(open(call_path).read())
        job = TuneJob.model_validate(call["job"])
        run = prepare_run(job, "unsloth")  # the parent claimed the folder for this same job: this finds its checkpoint
        result = UnslothTraining(call["checkpointing"])._finetune(run, lambda event: print(EVENT + event.model_dump_json(), flush=True))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it inside llmkit's error tree
        traceback.print_exc()
        print(FAILURE + json.dumps({"type": type(exc).__name__, "message": str(exc)}), flush=True)
        return 1
    print(RESULT + result.model_dump_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
