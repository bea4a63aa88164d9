"""Wall-clock bounds as test parameters: `@pytest.mark.parametrize("bound", within(1.0))` runs a
test twice. The `eventually` case (default run) waits up to DEADLINE: a hang guard, no speed
claim. The `within-Ns` case carries the `timing` marker, so the default `pytest -q` deselects it
and .ci/run's timing step (`pytest -q -m timing`) holds the code to the bound."""

from __future__ import annotations

from typing import Any

import pytest

DEADLINE = 10.0  # seconds the correctness run waits for something that must happen


def within(seconds: float) -> list[Any]:
    return [pytest.param(DEADLINE, id="eventually"),
            pytest.param(seconds, id=f"within-{seconds:g}s", marks=pytest.mark.timing)]
