"""The kit's logprob rank counts the tokens at least as likely, itself included, as vLLM's sampler does."""

import numpy as np
import torch

from llmkit.kit.decoding import top_logprobs


def test_rank_counts_exact_ties_and_the_token_itself():
    row = [-1.0, -2.0, -2.0, -3.0]
    for make in (np.array, torch.tensor):
        assert top_logprobs(make(row), 0, 2, str).rank == 1
        assert top_logprobs(make(row), 1, 2, str).rank == 3  # -1.0 above, token 2 tied, itself
        assert top_logprobs(make(row), 2, 2, str).rank == 3
        assert top_logprobs(make(row), 3, 2, str).rank == 4
