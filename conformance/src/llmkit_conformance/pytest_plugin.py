"""The conformance checks as pytest tests (registered under the `pytest11` entry point; install
`llmkit-conformance[pytest]`).

Against any installed backend, from the command line:

    pytest --pyargs llmkit_conformance.suite --llmkit-backend llamacpp [--llmkit-model M] [--llmkit-option k=v ...]

In a plugin's own tests, with the engine fixture it already has and what it expects of each check:

    from llmkit_conformance.pytest_plugin import conformance_tests
    test_conformance = conformance_tests("vllm_engine", expected={"prefix_cache": "unsupported"})
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import llmkit


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmkit", "llmkit conformance")
    group.addoption("--llmkit-backend", help="Backend the llmkit_engine fixture loads (e.g. vllm, llamacpp).")
    group.addoption("--llmkit-model", default=llmkit.DEFAULT_MODEL, help="Model for --llmkit-backend.")
    group.addoption("--llmkit-option", action="append", default=[], metavar="KEY=VALUE", help="Engine option, repeatable.")


@pytest.fixture(scope="session")
def llmkit_engine(request: pytest.FixtureRequest):
    """The engine named by --llmkit-backend, loaded once per session; the tests using it skip without it."""
    backend = request.config.getoption("--llmkit-backend")
    if not backend:
        pytest.skip("no --llmkit-backend given")
    from llmkit.config import parse_options as _parse_options

    with llmkit.load(backend, request.config.getoption("--llmkit-model"), **_parse_options(request.config.getoption("--llmkit-option"))) as engine:
        yield engine


def conformance_tests(engine_fixture: str = "llmkit_engine", expected: dict[str, str] | None = None,
                      checks: list[str] | None = None) -> Callable[..., None]:
    """A test function parametrized over the checks: each must end as `expected[name]` (default
    "passed"; "unsupported" where the backend declares it lacks the feature)."""
    from llmkit_conformance.checks import CHECKS, DESTRUCTIVE, run_check

    names = sorted(checks or CHECKS, key=lambda name: (name in DESTRUCTIVE, name))  # those that close the engine last
    expected = expected or {}
    unknown = set(expected) - set(CHECKS)
    if unknown:
        raise ValueError(f"expected statuses for unknown checks: {sorted(unknown)}")

    @pytest.mark.parametrize("check_name", names)
    def test_conformance(request: pytest.FixtureRequest, check_name: str) -> None:
        engine: Any = request.getfixturevalue(engine_fixture)
        result = run_check(check_name, engine)
        want = expected.get(check_name, "passed")
        assert result.status == want, f"{check_name}: {result.status}, expected {want}: {result.detail} {result.data}"

    return test_conformance
