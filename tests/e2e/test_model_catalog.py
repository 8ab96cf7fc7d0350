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
    assert whole.json()["models"] == [
        {
            "name": "models/tiny-sd",
            "id": "tiny-sd",
            "nativeSize": 64,
            "minSize": 32,
            "maxSize": 128,
            "default": True,
        },
        {
            "name": "models/tiny-sd-b",
            "id": "tiny-sd-b",
            "nativeSize": 64,
            "minSize": 32,
            "maxSize": 128,
            "default": False,
        },
    ]
    first = rest.get("/api/v1/models", params={"pageSize": 1}, headers=account.headers).json()
    second = rest.get(
        "/api/v1/models", params={"pageSize": 1, "pageToken": first["nextPageToken"]}, headers=account.headers
    ).json()
    assert [m["id"] for m in first["models"] + second["models"]] == ["tiny-sd", "tiny-sd-b"]
    assert second["nextPageToken"] == ""
    bad = rest.get("/api/v1/models", params={"pageToken": "nonsense"}, headers=account.headers)
    assert bad.status_code == 400 and "page_token" in bad.text
    assert rest.get("/api/v1/models").status_code == 401
