"""The `pingvas` command as a user runs it: generate through the gateway, and administer users."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from support.failpoints import parking_prompt, release, wait_parked
from support.generations import wait_for

pytestmark = pytest.mark.integration


def test_generate_writes_the_png_with_live_progress(mesh: Any, tmp_path: Path) -> None:
    out, stdout, stderr = tmp_path / "fox.png", tmp_path / "stdout", tmp_path / "stderr"
    # Parked after step 2 until the CLI's watch is open: a 5-step job on the tiny model could
    # otherwise end before it, and a watch on a finished generation carries only its end.
    prompt = parking_prompt(mesh, "a red fox in snow", after_step=2)
    command = mesh.pingvas_in_background(
        "generate",
        prompt,
        "--size",
        "64x64",
        "--steps",
        "5",
        "--seed",
        "3",
        "--out",
        str(out),
        stdout=stdout,
        stderr=stderr,
        env={"PINGVAS_EMAIL": "cli-user@example.com"},
    )
    try:
        wait_for(lambda: "started" in stderr.read_text(), message="the CLI's watch never showed the start")
        (row,) = mesh.sql("SELECT id FROM generations WHERE prompt = %s", prompt)
        wait_parked(mesh, str(row["id"]))
        release(mesh, str(row["id"]))
        assert command.wait(timeout=120) == 0, stderr.read_text()
    finally:
        command.kill()
    with Image.open(out) as image:
        assert image.size == (64, 64)
    assert "5/5 steps" in stderr.read_text()  # the progress bar, driven by the server stream
    summary = stdout.read_text().strip()
    assert str(out) in summary and "seed 3" in summary and "credits charged" in summary
    generation_id = summary.split(":", 1)[0]
    (row,) = mesh.sql("SELECT state, seed FROM generations WHERE id = %s", generation_id)
    assert (row["state"], row["seed"]) == ("SUCCEEDED", 3)


def test_generate_reports_invalid_input_in_one_line(mesh: Any, tmp_path: Path) -> None:
    result = mesh.pingvas(
        "generate", "fox", "--size", "64x64", "--steps", "151", "--out", str(tmp_path / "x.png")
    )
    assert result.returncode == 2
    assert "steps" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_generate_reports_insufficient_credits(mesh: Any, tmp_path: Path) -> None:
    email = "cli-broke@example.com"
    httpx.post(f"{mesh.gateway_url}/api/v1/auth/dev-login", json={"email": email}).raise_for_status()
    assert mesh.pingvas("admin", "grant-credits", email, "-100").returncode == 0
    result = mesh.pingvas(
        "generate", "fox", "--size", "64x64", "--out", str(tmp_path / "x.png"), env={"PINGVAS_EMAIL": email}
    )
    assert result.returncode == 4
    assert "insufficient credits" in result.stderr


def test_generate_says_when_the_mesh_is_not_running(mesh: Any, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        idle_port = probe.getsockname()[1]
    result = mesh.pingvas(
        "generate", "fox", "--out", str(tmp_path / "x.png"), env={"PINGVAS_HTTP_PORT": str(idle_port)}
    )
    assert result.returncode == 3
    assert "pingvas up" in result.stderr


def test_admin_sets_plans_and_grants_credits(mesh: Any, new_account: Any, rest: httpx.Client) -> None:
    account = new_account("admin-target")
    assert mesh.pingvas("admin", "set-plan", account.email, "pro").returncode == 0
    granted = mesh.pingvas("admin", "grant-credits", account.email, "250")
    assert granted.returncode == 0, granted.stderr
    me = rest.get("/api/v1/users/me", headers=account.headers).json()
    assert me["plan"] == "PLAN_PRO"
    assert me["credits"]["balance"] == "350"

    overdraw = mesh.pingvas("admin", "grant-credits", account.email, "-1000")
    assert overdraw.returncode == 2
    assert "overdraw" in overdraw.stderr
    unknown = mesh.pingvas("admin", "set-plan", "nobody@example.com", "pro")
    assert unknown.returncode == 2
    assert "no user" in unknown.stderr


def test_generate_uploads_the_init_image_and_makes_a_batch(mesh: Any, tmp_path: Path) -> None:
    """`--init` goes up through CreateUpload's presigned PUT, `--count` through
    BatchCreateGenerations; what acceptance recorded is checked, since the worker does not run
    image-to-image yet."""
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), "blue").save(init)
    email = "cli-img2img@example.com"
    result = mesh.pingvas(
        "generate",
        "a blue fox",
        "--init",
        str(init),
        "--strength",
        "0.5",
        "--sampler",
        "ddim",
        "--steps",
        "2",
        "--seed",
        "11",
        "--count",
        "2",
        "--out",
        str(tmp_path / "fox.png"),
        env={"PINGVAS_EMAIL": email},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "fox-1.png").exists() and (tmp_path / "fox-2.png").exists()
    ids = [line.split(":", 1)[0] for line in result.stdout.strip().splitlines()]
    rows = [
        mesh.sql("SELECT seed, sampler, strength, mode, init_image_key FROM generations WHERE id = %s", id_)[
            0
        ]
        for id_ in ids
    ]
    assert [(row["seed"], row["sampler"], row["strength"], row["mode"]) for row in rows] == [
        (11, "ddim", 0.5, "image_to_image"),
        (12, "ddim", 0.5, "image_to_image"),
    ]
    assert rows[0]["init_image_key"].startswith("inputs/")
