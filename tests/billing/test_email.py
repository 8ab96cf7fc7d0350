"""Billing emails: templates, the two mailers, and the outbox against a real PostgreSQL.

SES is the local `SesServer` (real HTTP, real SigV4-signed boto3 requests); PostgreSQL is the
project's embedded one, migrated to head (tests/billing/conftest.py).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from support.ses import SEND_EMAIL_PATH, SesServer

from services.billing.email import (
    EmailDeliveryError,
    EmailKind,
    EmailOutbox,
    OutboxDirectoryMailer,
    SesMailer,
    mailer_from_settings,
    payment_failed,
    run_email_sender,
    subscription_expired,
    subscription_renewed,
    subscription_started,
    subscription_upgraded,
)
from services.common.database import Database
from services.common.defaults import DEFAULT_DB_SCHEMA
from services.common.schema import email_outbox, users
from services.common.settings import EmailSettings
from services.embedded.process import free_port
from services.migrations import EnvironmentUrls

SENDER = "Pingvas <no-reply@pingvas.studio>"
REGION = "ap-northeast-2"


# --- Fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ses() -> Iterator[SesServer]:
    with SesServer() as server:
        yield server


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials, and no shared config files, so boto3 never reaches for real AWS."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "test-session-token")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def ses_mailer(ses: SesServer) -> Iterator[SesMailer]:
    ses.reset()
    mailer = SesMailer(region=REGION, sender=SENDER, endpoint_url=ses.url)
    yield mailer
    mailer.close()


@pytest.fixture
async def user_id(database: Database, superuser: Database) -> AsyncIterator[uuid.UUID]:
    """A fresh user, in an outbox emptied of earlier tests' emails."""
    new_id = uuid.uuid4()
    async with superuser.system("test setup") as conn:
        await conn.execute(sa.delete(email_outbox))
        await conn.execute(sa.insert(users).values(id=new_id, email=f"{new_id}@example.com", plan="pro"))
    yield new_id


async def enqueue_one(
    database: Database, outbox: EmailOutbox, user_id: uuid.UUID, dedupe_key: str, to: str = "ada@example.com"
) -> bool:
    subject, body = subscription_started("pro", 15_000)
    async with database.tenant(user_id) as conn:
        return await outbox.enqueue(
            conn,
            user_id=user_id,
            dedupe_key=dedupe_key,
            kind=EmailKind.SUBSCRIPTION_STARTED,
            to_address=to,
            subject=subject,
            body=body,
        )


async def outbox_rows(database: Database) -> list[sa.Row[tuple[object, ...]]]:
    async with database.system("test check") as conn:
        result = await conn.execute(
            sa.select(email_outbox, sa.func.now().label("db_now")).order_by(email_outbox.c.id)
        )
        return list(result.all())


async def make_due(database: Database) -> None:
    """Stand in for time passing: every pending email is due now."""
    async with database.system("test clock") as conn:
        await conn.execute(
            sa.update(email_outbox)
            .where(email_outbox.c.sent_at.is_(None))
            .values(next_attempt_at=sa.func.now() - timedelta(seconds=1))
        )


# --- Templates -------------------------------------------------------------------------------


def test_templates_name_the_plan_and_the_numbers() -> None:
    renews_at = datetime(2025, 4, 15, 9, 30, tzinfo=UTC)
    grace_end = datetime(2025, 3, 18, 14, 0, tzinfo=UTC)

    subject, body = subscription_started("pro", 15_000)
    assert "Pingvas Pro" in subject
    assert "15,000 credits" in body

    subject, body = subscription_renewed("studio", 30_000, renews_at)
    assert "Pingvas Studio" in subject
    assert "30,000 credits" in body and "April 15, 2025" in body
    assert "next renewal" not in subscription_renewed("studio", 30_000, None)[1]
    assert "credits" not in subscription_started("enterprise", 0)[1]

    subject, body = payment_failed("starter", grace_end)
    assert "payment" in subject.lower()
    assert "Pingvas Starter" in body and "March 18, 2025 at 14:00 UTC" in body

    subject, body = subscription_expired()
    assert "ended" in subject and "Free plan" in body

    subject, body = subscription_upgraded("studio", 30_000)
    assert "Pingvas Studio" in subject and "30,000 credits" in body


def test_template_dates_are_shown_in_utc() -> None:
    seoul = datetime(2025, 4, 16, 2, 0, tzinfo=UTC).astimezone(ZoneInfo("Asia/Seoul"))
    _, body = payment_failed("pro", seoul)
    assert "April 16, 2025 at 02:00 UTC" in body


def test_retry_delay_doubles_from_five_seconds_up_to_an_hour() -> None:
    outbox = EmailOutbox()
    assert [outbox.retry_delay(n).total_seconds() for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert outbox.retry_delay(10).total_seconds() == 2560
    assert outbox.retry_delay(11) == timedelta(hours=1)
    assert outbox.retry_delay(10_000) == timedelta(hours=1)


# --- Mailers ---------------------------------------------------------------------------------


async def test_ses_mailer_sends_a_signed_send_email_request(ses: SesServer, ses_mailer: SesMailer) -> None:
    await ses_mailer.send(to="ada@example.com", subject="Hello ✓", body="Line one\nLine two")

    [request] = ses.requests
    assert request.method == "POST" and request.path == SEND_EMAIL_PATH
    assert request.signed
    assert request.authorization is not None
    assert f"/{REGION}/ses/aws4_request" in request.authorization
    assert request.headers["x-amz-security-token"] == "test-session-token"
    assert request.body == {
        "FromEmailAddress": SENDER,
        "Destination": {"ToAddresses": ["ada@example.com"]},
        "Content": {
            "Simple": {
                "Subject": {"Data": "Hello ✓", "Charset": "UTF-8"},
                "Body": {"Text": {"Data": "Line one\nLine two", "Charset": "UTF-8"}},
            }
        },
    }


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(500, "InternalFailure"), (400, "MessageRejected"), (429, "TooManyRequestsException")],
)
async def test_ses_mailer_reports_ses_errors_without_retrying_itself(
    ses: SesServer, ses_mailer: SesMailer, status: int, error_type: str
) -> None:
    ses.fail_next(1, status=status, error_type=error_type, message="Email address is not verified.")

    with pytest.raises(
        EmailDeliveryError, match=rf"HTTP {status}, {error_type}\): Email address is not verified"
    ):
        await ses_mailer.send(to="ada@example.com", subject="s", body="b")

    assert len(ses.requests) == 1  # the outbox, not botocore, decides when to try again
    await ses_mailer.send(to="ada@example.com", subject="s", body="b")
    assert len(ses.sent) == 1


async def test_ses_mailer_reports_an_unreachable_endpoint() -> None:
    mailer = SesMailer(region=REGION, sender=SENDER, endpoint_url=f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(EmailDeliveryError, match="SES SendEmail failed"):
            await mailer.send(to="ada@example.com", subject="s", body="b")
    finally:
        mailer.close()


async def test_outbox_directory_mailer_writes_a_parsable_eml(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    mailer = OutboxDirectoryMailer(directory, SENDER)

    await mailer.send(
        to="ada@example.com", subject="Your Pingvas Pro plan has renewed", body="Hi,\n\n15,000 ✓\n"
    )
    await mailer.send(to="bob@example.com", subject="Second", body="Two")

    files = sorted(directory.iterdir())
    assert len(files) == 2, "no partial files are left behind"
    pattern = re.compile(r"^\d{8}T\d{12}Z-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.eml$")
    assert all(pattern.match(path.name) for path in files), [path.name for path in files]

    raw = files[0].read_bytes()
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["From"] == SENDER
    assert message["To"] == "ada@example.com"
    assert message["Subject"] == "Your Pingvas Pro plan has renewed"
    assert message["Message-ID"].endswith("@pingvas.studio>")
    assert message["Date"].datetime.tzinfo is not None
    assert message.get_content().replace("\r\n", "\n") == "Hi,\n\n15,000 ✓\n"


def test_mailer_from_settings(tmp_path: Path) -> None:
    # model_validate, not the constructor: the test's settings, whatever PINGVAS_EMAIL_* says.
    outbox = mailer_from_settings(EmailSettings.model_validate({"backend": "outbox"}), tmp_path)
    assert isinstance(outbox, OutboxDirectoryMailer)
    assert outbox.directory == tmp_path / "outbox"
    assert outbox.sender == EmailSettings.model_fields["sender"].default

    ses = mailer_from_settings(
        EmailSettings.model_validate(
            {"backend": "ses", "ses_region": REGION, "ses_endpoint_url": "http://127.0.0.1:9"}
        ),
        tmp_path,
    )
    assert isinstance(ses, SesMailer)
    ses.close()


# --- The outbox, against PostgreSQL ----------------------------------------------------------


async def test_enqueue_is_idempotent_on_the_dedupe_key(database: Database, user_id: uuid.UUID) -> None:
    outbox = EmailOutbox()
    assert await enqueue_one(database, outbox, user_id, "started:sub-1") is True
    assert await enqueue_one(database, outbox, user_id, "started:sub-1", to="other@example.com") is False
    assert await enqueue_one(database, outbox, user_id, "started:sub-2") is True

    rows = await outbox_rows(database)
    assert [(row.dedupe_key, row.to_address) for row in rows] == [
        ("started:sub-1", "ada@example.com"),
        ("started:sub-2", "ada@example.com"),
    ]
    assert all(
        row.kind == "subscription_started" and row.attempts == 0 and row.sent_at is None for row in rows
    )


async def test_enqueue_rolls_back_with_the_callers_transaction(
    database: Database, user_id: uuid.UUID
) -> None:
    outbox = EmailOutbox()

    class WebhookFailed(Exception):
        pass

    with pytest.raises(WebhookFailed):
        async with database.tenant(user_id) as conn:
            subject, body = subscription_expired()
            await outbox.enqueue(
                conn,
                user_id=user_id,
                dedupe_key="expired:sub-1",
                kind=EmailKind.SUBSCRIPTION_EXPIRED,
                to_address="ada@example.com",
                subject=subject,
                body=body,
            )
            raise WebhookFailed

    assert await outbox_rows(database) == []


async def test_send_due_sends_once_and_marks_sent(
    database: Database, user_id: uuid.UUID, ses: SesServer, ses_mailer: SesMailer
) -> None:
    outbox = EmailOutbox()
    await enqueue_one(database, outbox, user_id, "started:sub-1")

    assert await outbox.send_due(database, ses_mailer) == 1
    assert await outbox.send_due(database, ses_mailer) == 0

    [request] = ses.sent
    subject, body = subscription_started("pro", 15_000)
    assert request.body["Destination"] == {"ToAddresses": ["ada@example.com"]}
    assert request.body["Content"]["Simple"]["Subject"]["Data"] == subject
    assert request.body["Content"]["Simple"]["Body"]["Text"]["Data"] == body
    [row] = await outbox_rows(database)
    assert row.sent_at is not None and row.attempts == 0 and row.last_error is None


async def test_failed_sends_back_off_and_a_later_send_succeeds(
    database: Database, user_id: uuid.UUID, ses: SesServer, ses_mailer: SesMailer
) -> None:
    outbox = EmailOutbox()
    await enqueue_one(database, outbox, user_id, "renewed:inv-1")

    ses.fail_next(1, status=500, error_type="InternalFailure", message="try again")
    [before] = await outbox_rows(database)
    assert await outbox.send_due(database, ses_mailer) == 0
    [row] = await outbox_rows(database)
    assert row.sent_at is None and row.attempts == 1
    assert (
        row.last_error == "EmailDeliveryError: SES refused SendEmail (HTTP 500, InternalFailure): try again"
    )
    assert before.db_now + timedelta(seconds=5) <= row.next_attempt_at <= row.db_now + timedelta(seconds=5)

    # Not due yet: nothing is tried.
    assert await outbox.send_due(database, ses_mailer) == 0
    assert len(ses.requests) == 1

    await make_due(database)
    ses.fail_next(1, status=400, error_type="MessageRejected", message="Email address is not verified.")
    [before] = await outbox_rows(database)
    assert await outbox.send_due(database, ses_mailer) == 0
    [row] = await outbox_rows(database)
    assert row.attempts == 2 and "MessageRejected" in (row.last_error or "")
    assert before.db_now + timedelta(seconds=10) <= row.next_attempt_at <= row.db_now + timedelta(seconds=10)

    await make_due(database)
    assert await outbox.send_due(database, ses_mailer) == 1
    [row] = await outbox_rows(database)
    assert row.sent_at is not None and row.attempts == 2
    assert len(ses.sent) == 1 and len(ses.requests) == 3


async def test_a_raising_mailer_never_escapes_send_due(database: Database, user_id: uuid.UUID) -> None:
    class BrokenMailer:
        async def send(self, *, to: str, subject: str, body: str) -> None:
            raise RuntimeError("boom")

    outbox = EmailOutbox()
    await enqueue_one(database, outbox, user_id, "a")
    await enqueue_one(database, outbox, user_id, "b")

    assert await outbox.send_due(database, BrokenMailer()) == 0
    rows = await outbox_rows(database)
    assert [(row.attempts, row.last_error) for row in rows] == [(1, "RuntimeError: boom")] * 2


async def test_an_email_is_given_up_after_max_attempts(
    database: Database, user_id: uuid.UUID, ses: SesServer, ses_mailer: SesMailer
) -> None:
    outbox = EmailOutbox(max_attempts=2)
    await enqueue_one(database, outbox, user_id, "a")
    ses.fail_next(2)

    assert await outbox.send_due(database, ses_mailer) == 0
    await make_due(database)
    assert await outbox.send_due(database, ses_mailer) == 0
    await make_due(database)
    assert await outbox.send_due(database, ses_mailer) == 0

    [row] = await outbox_rows(database)
    assert row.attempts == 2 and row.sent_at is None
    assert len(ses.requests) == 2


async def test_concurrent_senders_never_send_one_email_twice(
    roles: EnvironmentUrls, database: Database, user_id: uuid.UUID, ses: SesServer, ses_mailer: SesMailer
) -> None:
    outbox = EmailOutbox()
    count = 40
    for n in range(count):
        await enqueue_one(database, outbox, user_id, f"bulk:{n}", to=f"user{n}@example.com")

    class SlowMailer:
        """SES, a little slower, so the two senders overlap for the whole batch."""

        def __init__(self) -> None:
            self.sent = 0

        async def send(self, *, to: str, subject: str, body: str) -> None:
            await asyncio.sleep(0.005)
            await ses_mailer.send(to=to, subject=subject, body=body)
            self.sent += 1

    # Two senders as two processes would be: separate engines, separate connections.
    other = Database(roles.app, schema=DEFAULT_DB_SCHEMA, system_url=roles.system)
    first, second = SlowMailer(), SlowMailer()
    try:
        results = await asyncio.gather(
            outbox.send_due(database, first, limit=count), outbox.send_due(other, second, limit=count)
        )
    finally:
        await other.close()

    recipients = [request.body["Destination"]["ToAddresses"][0] for request in ses.sent]
    assert sorted(recipients) == sorted(f"user{n}@example.com" for n in range(count))
    assert sum(results) == count and list(results) == [first.sent, second.sent]
    assert first.sent > 0 and second.sent > 0, "both senders took part"
    assert all(row.sent_at is not None for row in await outbox_rows(database))


async def test_run_email_sender_delivers_in_the_background_until_stopped(
    database: Database, user_id: uuid.UUID, tmp_path: Path
) -> None:
    outbox = EmailOutbox()
    delivered = asyncio.Event()

    class NotifyingMailer(OutboxDirectoryMailer):
        async def send(self, *, to: str, subject: str, body: str) -> None:
            await super().send(to=to, subject=subject, body=body)
            delivered.set()

    mailer = NotifyingMailer(tmp_path / "outbox", SENDER)
    stop = asyncio.Event()
    sender = asyncio.create_task(run_email_sender(database, outbox, mailer, stop, interval_seconds=0.05))
    try:
        await enqueue_one(database, outbox, user_id, "started:sub-1")
        async with asyncio.timeout(10):
            await delivered.wait()
    finally:
        stop.set()
        async with asyncio.timeout(5):
            await sender

    [path] = (tmp_path / "outbox").iterdir()
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert message["To"] == "ada@example.com"
    [row] = await outbox_rows(database)
    assert row.sent_at is not None
