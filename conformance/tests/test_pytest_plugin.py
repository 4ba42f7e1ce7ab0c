"""The pytest plugin: the checks run as tests against --llmkit-backend, and `conformance_tests` turns a
plugin's engine fixture and expectations into tests that fail when a check ends otherwise."""

from __future__ import annotations

pytest_plugins = ["pytester"]

CHEAP = "greedy_repeatable or max_tokens_exact or prefix_cache"


def test_suite_runs_against_the_named_backend(pytester, tiny_model_dir):
    result = pytester.runpytest_inprocess(
        "--pyargs", "llmkit_conformance.suite", "--llmkit-backend", "transformers", "--llmkit-model", tiny_model_dir,
        "--llmkit-option", "max_batch_size=4", "-k", CHEAP, "-p", "no:cacheprovider",
    )
    result.assert_outcomes(passed=3)  # prefix_cache passes as "unsupported": the engine declares no cache


def test_suite_skips_without_a_backend(pytester):
    result = pytester.runpytest_inprocess("--pyargs", "llmkit_conformance.suite", "-k", CHEAP, "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=3)


def test_conformance_tests_hold_a_plugin_to_its_expectations(pytester, tiny_model_dir):
    pytester.makepyfile(f"""
        import pytest, llmkit
        from llmkit_conformance.pytest_plugin import conformance_tests

        @pytest.fixture(scope="module")
        def engine():
            with llmkit.load("transformers", {tiny_model_dir!r}) as e:
                yield e

        test_right = conformance_tests("engine", expected={{"prefix_cache": "unsupported"}}, checks=["prefix_cache", "seed"])
        test_wrong = conformance_tests("engine", checks=["prefix_cache"])  # expects "passed": the engine has no cache
    """)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*prefix_cache: unsupported, expected passed*"])
