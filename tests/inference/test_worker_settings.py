"""A worker's settings refuse what would only fail later, at the first model load."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.common.failpoints import Failpoint
from services.common.settings import WorkerSettings


@pytest.fixture(autouse=True)
def required_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "DATABASE_URL": "postgresql://pingvas@127.0.0.1:5432/pingvas",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "PINGVAS_JWT_SECRET": "j" * 32,
        "PINGVAS_URL_SIGNING_SECRET": "u" * 32,
        "PINGVAS_HEALTH_PORT": "1",
        "PINGVAS_ENV": "dev",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PINGVAS_COMPILE_MODE", raising=False)
    monkeypatch.delenv("PINGVAS_MAX_BATCH", raising=False)
    monkeypatch.delenv("PINGVAS_FAILPOINTS", raising=False)


def only_error(error: pytest.ExceptionInfo[ValidationError]) -> tuple[str, ...]:
    (problem,) = error.value.errors()
    return tuple(str(part) for part in problem["loc"])


def test_an_unknown_compile_mode_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINGVAS_COMPILE_MODE", "fastest")

    with pytest.raises(ValidationError) as refused:
        WorkerSettings()

    assert only_error(refused) == ("compile_mode",)


def test_a_batch_below_one_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINGVAS_MAX_BATCH", "0")

    with pytest.raises(ValidationError) as refused:
        WorkerSettings()

    assert only_error(refused) == ("max_batch",)


def test_defaults_batch_on_cuda_only_and_do_not_compile() -> None:
    settings = WorkerSettings()

    assert settings.compile_mode is None
    assert (settings.resolved_max_batch("cuda"), settings.resolved_max_batch("cpu")) == (4, 1)


def test_failpoints_arm_in_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINGVAS_FAILPOINTS", '["park_after_step"]')

    assert WorkerSettings().failpoints == {Failpoint.PARK_AFTER_STEP}


def test_prod_refuses_to_start_with_failpoints_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINGVAS_ENV", "prod")
    monkeypatch.setenv("PINGVAS_FAILPOINTS", '["park_after_step"]')

    with pytest.raises(ValidationError, match="PINGVAS_FAILPOINTS is a dev-only setting"):
        WorkerSettings()
