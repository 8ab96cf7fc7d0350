"""The catalog over REST: the models a generation may name, by name, with the sizes each
accepts and which one is the default, paged like every List."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.integration]


def test_the_catalog_lists_the_installed_models_page_by_page(rest: httpx.Client, new_account: Any) -> None:
    account = new_account("catalog")
    whole = rest.get("/api/v1/models", headers=account.headers)
    assert whole.status_code == 200, whole.text
    # The session's mesh also serves models other tests pushed into its bucket (a broken one,
    # for instance): the tiny models are there as built, the listing is by name.
    models = whole.json()["models"]
    by_id = {model["id"]: model for model in models}
    assert by_id["tiny-sd"] == {
        "name": "models/tiny-sd",
        "id": "tiny-sd",
        "nativeSize": 64,
        "minSize": 32,
        "maxSize": 128,
        "default": True,
        "family": "sd15",
        "samplers": ["euler", "euler_a", "dpmpp_2m", "dpmpp_2m_k", "ddim", "unipc", "lms", "heun"],
        "kind": "pipeline",
    }
    assert by_id["tiny-sd-b"] == {
        **by_id["tiny-sd"],
        "name": "models/tiny-sd-b",
        "id": "tiny-sd-b",
        "default": False,
    }
    assert [model["id"] for model in models] == sorted(by_id)
    assert [model["id"] for model in models if model["default"]] == ["tiny-sd"]
    # One model a page walks the same list, each model once.
    walked, token = [], ""
    while True:
        page = rest.get(
            "/api/v1/models", params={"pageSize": 1, "pageToken": token}, headers=account.headers
        ).json()
        walked += [model["id"] for model in page["models"]]
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert walked == [model["id"] for model in models]
    bad = rest.get("/api/v1/models", params={"pageToken": "nonsense"}, headers=account.headers)
    assert bad.status_code == 400 and "page_token" in bad.text
    assert rest.get("/api/v1/models").status_code == 401
