"""Evaluation as in *Build a Large Language Model (From Scratch)* ch. 7: the tuned model answers the test
split, and a judge model — served by any engine, usually a larger one — scores each answer from 0 to 100
against the reference; the mean is the score. Beside it, the held-out loss that `TuneResult` reports.

The judge's reply is constrained to an integer from 0 to 100 (guided decoding), so every answer gets a
score and none is lost to parsing: the book parses free text and skips what does not parse.

    from llmkit.evaluate import answer, judge
    with llmkit.load("vllm", "out/merged") as tuned, llmkit.load("ollama", "llama3") as judge_engine:
        answers = answer(tuned, test)
        report = judge(judge_engine, test, answers)
        print(report.mean)
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from llmkit.data import Example
from llmkit.engine import Engine
from llmkit.types import Regex, SamplingParams

# ch. 7's judge prompt (`generate_model_scores`), for records with a reference output.
JUDGE_PROMPT = (
    "Given the input `{prompt}` and correct output `{reference}`, score the model response `{response}` on a scale "
    "from 0 to 100, where 100 is the best score. Respond with the integer number only."
)
SCORE = Regex(r"(100|[1-9]?[0-9])")


@dataclass
class JudgeReport:
    scores: list[int]
    answers: list[str]
    judge_model: str
    details: list[dict] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores) if self.scores else float("nan")


def answer(engine: Engine, examples: list[Example], *, max_tokens: int = 256) -> list[str]:
    """The engine's greedy answers to the examples' prompts (Alpaca text as a raw prompt, chat as chat)."""
    inputs = [e.prompt if isinstance(e.prompt, str) else [dict(m) for m in e.prompt] for e in examples]
    return [c.text.strip() for c in engine.generate(inputs, SamplingParams(temperature=0, max_tokens=max_tokens))]


def judge(judge_engine: Engine, examples: list[Example], answers: list[str]) -> JudgeReport:
    """Score each answer 0–100 against the example's reference with the judge model, in chat."""
    if len(examples) != len(answers):
        raise ValueError(f"{len(examples)} examples but {len(answers)} answers")
    conversations = []
    for example, response in zip(examples, answers):
        if example.completion is None:
            raise ValueError(f"example {example.index} has no reference output to judge against")
        prompt = example.prompt if isinstance(example.prompt, str) else "\n".join(m["content"] for m in example.prompt)
        text = JUDGE_PROMPT.format(prompt=prompt.strip(), reference=example.completion, response=response)
        conversations.append([{"role": "user", "content": text}])
    replies = judge_engine.generate(conversations, SamplingParams(temperature=0, max_tokens=4, constraint=SCORE))
    scores = [int(r.text) for r in replies]
    details = [{"index": e.index, "answer": a, "reference": e.completion, "score": s} for e, a, s in zip(examples, answers, scores)]
    return JudgeReport(scores=scores, answers=answers, judge_model=judge_engine.model, details=details)
