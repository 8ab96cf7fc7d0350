"""Which prompts compel's parser read, for the tests that a job's prompts are read once."""

from __future__ import annotations

from typing import Any

import pytest
from compel import PromptParser


def prompt_readings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every prompt compel's parser reads from now on, in order, as it reads them (the real
    parser still does the reading)."""
    readings: list[str] = []
    parse = PromptParser.parse_conjunction

    def reading(parser: PromptParser, prompt: str, verbose: bool = False) -> Any:
        readings.append(prompt)
        return parse(parser, prompt, verbose)

    monkeypatch.setattr(PromptParser, "parse_conjunction", reading)
    return readings
