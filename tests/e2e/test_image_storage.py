"""Object storage: the mesh's embedded SeaweedFS, reached as production reaches AWS.

SeaweedFS listens only where it was told, and `pingvas storage init` is repeatable and its plan
is what botocore would send.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import botocore.session
import psutil
import pytest
from botocore.exceptions import ClientError
from botocore.validate import ParamValidator
from support.mesh import REPO_ROOT, RunningMesh

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ledger_sums_to_every_balance")]

IMAGES_BUCKET = "pingvas-studio-images"
BUCKETS = (IMAGES_BUCKET, "pingvas-studio-models", "pingvas-studio-logs", "pingvas-studio-backups")
# Long enough that the URLs are surely opened before it ends; the test then waits it out.
SHORT_URL_TTL_SECONDS = 15


def storage_state(mesh: RunningMesh) -> dict[str, dict[str, Any]]:
    """Each bucket's configuration as the server reports it (what it does not implement or
    has not got reads as the error code)."""
    bucket = mesh.s3()
    state: dict[str, dict[str, Any]] = {}
    for name in BUCKETS:
        reads = {
            "versioning": lambda name=name: bucket.get_bucket_versioning(Bucket=name).get("Status"),
            "encryption": lambda name=name: bucket.get_bucket_encryption(Bucket=name)[
                "ServerSideEncryptionConfiguration"
            ],
            "cors": lambda name=name: bucket.get_bucket_cors(Bucket=name)["CORSRules"],
            "lifecycle": lambda name=name: bucket.get_bucket_lifecycle_configuration(Bucket=name)["Rules"],
        }
        state[name] = {}
        for what, read in reads.items():
            try:
                state[name][what] = read()
            except ClientError as error:
                state[name][what] = error.response["Error"]["Code"]
    return state


def test_storage_init_twice_gives_the_same_state(mesh: RunningMesh) -> None:
    # `pingvas up` ran it once already; the command finds the mesh's SeaweedFS by itself.
    before = storage_state(mesh)
    first, second = mesh.pingvas("storage", "init"), mesh.pingvas("storage", "init")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout
    assert storage_state(mesh) == before
    lines = first.stdout.splitlines()
    assert all(f"{name}: exists" in lines for name in BUCKETS)
    # What SeaweedFS does not implement is named, and the rest is configured.
    assert lines[-1] == (
        "not implemented by this S3 server, so not configured: PutPublicAccessBlock "
        f"({', '.join(BUCKETS)}); PutBucketLifecycleConfiguration ({IMAGES_BUCKET})"
    )
    assert {name: before[name]["versioning"] for name in BUCKETS} == {
        IMAGES_BUCKET: "Enabled",
        "pingvas-studio-models": "Enabled",
        "pingvas-studio-logs": None,
        "pingvas-studio-backups": "Enabled",
    }
    for name in BUCKETS:
        assert before[name]["encryption"]["Rules"][0]["ApplyServerSideEncryptionByDefault"] == {
            "SSEAlgorithm": "AES256"
        }
    assert before[IMAGES_BUCKET]["cors"][0]["AllowedMethods"] == ["GET", "HEAD"]
    assert {rule["ID"] for rule in before["pingvas-studio-logs"]["lifecycle"]} >= {"logs-expire"}
    (logs_expire,) = [r for r in before["pingvas-studio-logs"]["lifecycle"] if r["ID"] == "logs-expire"]
    assert logs_expire["Expiration"] == {"Days": 30}


def test_storage_init_dry_run_prints_what_botocore_would_send(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PINGVAS_HOME": str(tmp_path),
        "S3_ENDPOINT_URL": "http://127.0.0.1:9",  # never reached: a dry run sends nothing
        "PINGVAS_S3_CORS_ORIGINS": '["https://console.pingvas.studio"]',
    }
    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "storage", "init", "--dry-run"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    calls = json.loads(result.stdout)
    model = botocore.session.get_session().get_service_model("s3")
    validator = ParamValidator()
    for call in calls:
        report = validator.validate(call["params"], model.operation_model(call["operation"]).input_shape)
        assert not report.has_errors(), f"{call['operation']}: {report.generate_report()}"
    by_operation: dict[tuple[str, str], dict[str, Any]] = {
        (call["bucket"], call["operation"]): call["params"] for call in calls
    }
    assert {bucket for bucket, _ in by_operation} == {"images", "models", "logs", "backups"}
    for role in ("images", "models", "logs", "backups"):
        assert by_operation[(role, "PutPublicAccessBlock")]["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        }
    images_rules = by_operation[("images", "PutBucketLifecycleConfiguration")]["LifecycleConfiguration"][
        "Rules"
    ]
    (tiering,) = [rule for rule in images_rules if "Transitions" in rule]
    assert tiering["Transitions"] == [
        {"Days": 30, "StorageClass": "STANDARD_IA"},
        {"Days": 90, "StorageClass": "GLACIER_IR"},
    ]
    assert any("NoncurrentVersionExpiration" in rule for rule in images_rules)
    logs_rules = by_operation[("logs", "PutBucketLifecycleConfiguration")]["LifecycleConfiguration"]["Rules"]
    assert {"Days": 30} in [rule.get("Expiration") for rule in logs_rules]
    cors = by_operation[("images", "PutBucketCors")]["CORSConfiguration"]["CORSRules"]
    assert cors[0]["AllowedOrigins"] == ["https://console.pingvas.studio"]
    assert by_operation[("images", "CreateBucket")] == {
        "Bucket": IMAGES_BUCKET,
        "CreateBucketConfiguration": {"LocationConstraint": "ap-northeast-2"},
    }


def test_embedded_seaweedfs_listens_only_on_the_ports_it_was_given(mesh: RunningMesh) -> None:
    (weed,) = [
        child for child in psutil.Process(mesh.process.pid).children(recursive=True) if child.name() == "weed"
    ]
    given = {
        int(argument.split("=", 1)[1])
        for argument in weed.cmdline()
        if argument.split("=", 1)[0].endswith((".port", ".port.grpc")) and argument.split("=", 1)[1] != "0"
    }
    assert len(given) == 8
    listening = {c.laddr.port for c in weed.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert listening == given
    assert 8080 not in listening
    assert f"127.0.0.1:{weed_port(weed, '-s3.port')}" in mesh.s3_env["S3_ENDPOINT_URL"]


def weed_port(weed: psutil.Process, flag: str) -> int:
    (value,) = [argument.split("=", 1)[1] for argument in weed.cmdline() if argument.split("=", 1)[0] == flag]
    return int(value)
