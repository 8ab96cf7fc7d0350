"""The stream caps refuse, at start, a per-user cap below the floor of 20 streams."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.common.settings import WatchSettings


def test_a_per_user_stream_cap_below_twenty_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PINGVAS_WATCH_STREAMS_PER_USER", '{"free": 19, "pro": 40}')

    with pytest.raises(ValidationError) as refused:
        WatchSettings()

    (problem,) = refused.value.errors()
    assert problem["loc"] == ("streams_per_user",)
    assert "free" in problem["msg"]


def test_caps_by_plan_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINGVAS_WATCH_STREAMS_PER_USER", '{"free": 25, "pro": 60}')

    assert WatchSettings().streams_per_user == {"free": 25, "pro": 60}
