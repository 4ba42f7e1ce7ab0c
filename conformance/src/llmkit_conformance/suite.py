"""Every conformance check as a pytest test against --llmkit-backend:
`pytest --pyargs llmkit_conformance.suite --llmkit-backend NAME`. A backend that declares it lacks a
feature passes that check as "unsupported" (run `llmkit conformance run` for the full report)."""

import pytest

from llmkit_conformance.checks import CHECKS, run_check


@pytest.mark.parametrize("check_name", sorted(CHECKS))
def test_check(llmkit_engine, check_name):
    result = run_check(check_name, llmkit_engine)
    assert result.status in ("passed", "unsupported"), f"{check_name}: {result.status}: {result.detail} {result.data}"
