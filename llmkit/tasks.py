"""Small fixed tasks on real text, shared by the demo, the conformance suite and the tests.

On a 135M model a two-shot completion prompt is far more reliable than asking in chat: SmolLM2 gets
all five reviews right with it (zero-shot chat leans "Positive" whatever the review).
"""

from llmkit.types import Choice

FEW_SHOT = (
    "Review: I loved this film, the acting was wonderful and the story moving.\nSentiment: Positive\n\n"
    "Review: A dull, badly written mess. I want my money back.\nSentiment: Negative\n\n"
    "Review: {review}\nSentiment:"
)
REVIEWS = [
    ("An absolute delight from start to finish; I would happily watch it again.", "Positive"),
    ("The plot made no sense and the characters were boring.", "Negative"),
    ("Beautiful photography and a clever, funny script.", "Positive"),
    ("I walked out after half an hour. Terrible.", "Negative"),
    ("One of the best films I have seen this year.", "Positive"),
]
LABELS = Choice(choices=[" Positive", " Negative"])
FACTS = [
    ("What is the capital of France?", "Paris"),
    ("What is the largest planet in the solar system?", "Jupiter"),
    ("How many days are in a week?", "seven|7"),
]


def alpaca_prompt(record: dict) -> str:
    """The Alpaca prompt of *Build a Large Language Model (From Scratch)*, ch. 7 (`format_input`), ending
    where the response begins. `record` has instruction, input (may be empty) and output."""
    text = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{record['instruction']}"
    )
    if record.get("input"):
        text += f"\n\n### Input:\n{record['input']}"
    return text + "\n\n### Response:\n"
