from llmkit_conformance.parity import compare_pair, run


def test_compare_pair_rates_and_margins():
    a = [{"token_ids": [1, 2, 3, 4], "margins": [2.0, 1.5, 0.05, 1.0]}, {"token_ids": [5, 6], "margins": [3.0, 3.0]}]
    b = [{"token_ids": [1, 2, 9, 9], "margins": [2.0, 1.5, 0.1, 1.0]}, {"token_ids": [5, 6], "margins": [3.0, 3.0]}]
    result = compare_pair(a, b)
    assert result["identical_rate"] == 0.5
    assert result["mean_agreeing_prefix"] == (0.5 + 1.0) / 2
    assert result["divergences"] == [{"prompt": 0, "position": 2, "margin": 0.05}]


def test_same_engine_twice_is_identical(tiny_model_dir):
    result = run([("transformers", {}), ("transformers", {"max_batch_size": 1})], tiny_model_dir, max_tokens=8)
    assert result["pairs"][0]["identical_rate"] == 1.0
    forced = result["pairs"][0]["teacher_forced"]
    assert forced["top1_agreement"] == 1.0 and forced["max_abs_logprob_diff"] < 1e-3
    assert forced["positions"] > 0


def test_teacher_forced_counts_each_position_on_its_own():
    from llmkit_conformance.parity import teacher_forced

    a = [{"top": [1, 2, 3], "logprobs": [-0.1, -0.2, -0.3]}]
    b = [{"top": [1, 9, 3], "logprobs": [-0.1, -0.5, -0.3]}]  # differs at one position only, not from there on
    result = teacher_forced(a, b)
    assert result["top1_agreement"] == 2 / 3
    assert abs(result["max_abs_logprob_diff"] - 0.3) < 1e-9 and abs(result["mean_abs_logprob_diff"] - 0.1) < 1e-9
