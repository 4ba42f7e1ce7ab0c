"""Sentiment classification with guided decoding: `llmkit.Choice` makes the model answer one of the labels,
nothing else, on a two-shot prompt (`llmkit.tasks`: twelve real reviews, balanced).

    .venv/bin/python examples/guided_choice.py [backend]    # llamacpp by default
"""

import sys

import llmkit
from llmkit.tasks import FEW_SHOT, REVIEWS

LABELS = llmkit.Choice(choices=[" Positive", " Negative"])


def main(backend: str = "llamacpp") -> None:
    prompts = [FEW_SHOT.format(review=review) for review, _ in REVIEWS]
    with llmkit.load(backend, llmkit.DEFAULT_MODEL) as engine:
        answers = engine.generate(prompts, llmkit.greedy(constraint=LABELS, max_tokens=4))
    right = 0
    for (review, expected), answer in zip(REVIEWS, answers):
        label = answer.text.strip()
        right += label == expected
        print(f"{label:8} (expected {expected:8}) {review}")
    print(f"accuracy: {right}/{len(REVIEWS)}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
