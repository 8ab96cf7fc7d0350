"""Billing emails: what they say, the outbox that holds them, and the mailers that deliver them.

An email must never block or roll back the change it reports, so callers only `enqueue` a row in
their own transaction: the email exists exactly when the change committed, and a redelivered
webhook enqueues nothing new (the dedupe key names what the email is about). A background sender
(`run_email_sender`) delivers due rows later and retries failures with exponential backoff.

Each row is claimed with `FOR UPDATE SKIP LOCKED` in its own short transaction, sent, and marked
in that same transaction: two senders never send one email twice, a lock is never held across
more than one send, and a crash between sending and committing resends at most that one email
(delivery is at least once; SES offers nothing stronger).

Mailers: `OutboxDirectoryMailer` writes .eml files under PINGVAS_HOME/outbox (the embedded
mesh), `SesMailer` sends with Amazon SES v2 (production).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import email.utils
import enum
import logging
import os
import uuid
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

import boto3
import sqlalchemy as sa
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.database import Database
from services.common.schema import email_outbox
from services.common.settings import EmailSettings

log = logging.getLogger(__name__)


# --- What the emails say ---------------------------------------------------------------------


class EmailKind(enum.StrEnum):
    """The kinds of billing email; stored in `email_outbox.kind`."""

    SUBSCRIPTION_STARTED = "subscription_started"
    SUBSCRIPTION_RENEWED = "subscription_renewed"
    PAYMENT_FAILED = "payment_failed"
    SUBSCRIPTION_EXPIRED = "subscription_expired"
    SUBSCRIPTION_UPGRADED = "subscription_upgraded"


_SIGN_OFF = "Happy creating,\nThe Pingvas team\n"
_PLAIN_SIGN_OFF = "Thanks,\nThe Pingvas team\n"


def _plan_name(plan: str) -> str:
    return f"Pingvas {plan.strip().capitalize()}"


def _credits(amount: int) -> str:
    return f"{amount:,} credit" if amount == 1 else f"{amount:,} credits"


def _utc(when: datetime) -> datetime:
    return when.astimezone(UTC) if when.tzinfo is not None else when


def _date(when: datetime) -> str:
    when = _utc(when)
    return f"{when:%B} {when.day}, {when.year}"


def _date_time(when: datetime) -> str:
    return f"{_date(when)} at {_utc(when):%H:%M} UTC"


def _email(text: str, sign_off: str = _SIGN_OFF) -> str:
    return f"Hi,\n\n{text}\n\n{sign_off}"


# A plan granting no credits (an Enterprise plan whose credits an admin sets) gets no credit line.


def subscription_started(plan: str, monthly_credits: int) -> tuple[str, str]:
    name = _plan_name(plan)
    text = f"Thanks for subscribing to {name}!"
    if monthly_credits > 0:
        text += (
            f" {_credits(monthly_credits)} are in your account now, and a fresh "
            f"{_credits(monthly_credits)} arrive each month when your plan renews."
        )
    return f"Welcome to {name}", _email(text)


def subscription_renewed(plan: str, credits: int, renews_at: datetime | None) -> tuple[str, str]:
    """`renews_at` None (the provider sent no next date) leaves the next-renewal line out."""
    name = _plan_name(plan)
    text = f"Your {name} plan has renewed"
    text += f": {_credits(credits)} are ready for the month ahead." if credits > 0 else "."
    if renews_at is not None:
        text += f" Your next renewal is on {_date(renews_at)}."
    return f"Your {name} plan has renewed", _email(text)


def payment_failed(plan: str, grace_period_end: datetime) -> tuple[str, str]:
    text = (
        f"We couldn't take the payment for your {_plan_name(plan)} plan. Your plan stays active "
        f"until {_date_time(grace_period_end)}; please update your payment method before then "
        "to keep it."
    )
    return "Action needed: your Pingvas payment didn't go through", _email(text, _PLAIN_SIGN_OFF)


def subscription_expired() -> tuple[str, str]:
    text = (
        "Your Pingvas subscription has ended, and your account is now on the Free plan. "
        "You can subscribe again any time to get your monthly credits back."
    )
    return "Your Pingvas subscription has ended", _email(text, _PLAIN_SIGN_OFF)


def subscription_upgraded(plan: str, credits: int) -> tuple[str, str]:
    name = _plan_name(plan)
    text = f"Your upgrade to {name} is done"
    text += f": {_credits(credits)} from your new plan are ready to use." if credits > 0 else "."
    return f"You're now on {name}", _email(text)


def upgrade_payment_failed(plan: str, upgrade_plan: str) -> tuple[str, str]:
    text = (
        f"We couldn't take the payment for your upgrade to {_plan_name(upgrade_plan)}, so the "
        f"upgrade is cancelled. You stay on {_plan_name(plan)} with your credits as they were; "
        "please update your payment method before you try again."
    )
    return "Action needed: your Pingvas upgrade payment didn't go through", _email(text, _PLAIN_SIGN_OFF)


# --- Delivery --------------------------------------------------------------------------------


class EmailDeliveryError(Exception):
    """A mailer could not deliver a message; the outbox records it and retries later."""


class Mailer(Protocol):
    async def send(self, *, to: str, subject: str, body: str) -> None: ...


class OutboxDirectoryMailer:
    """The embedded mesh's mailer: each message becomes an RFC 5322 .eml file in `directory`,
    named `<UTC timestamp>-<uuid>.eml` so a listing sorts in sending order."""

    def __init__(self, directory: Path, sender: str) -> None:
        self.directory = directory
        self.sender = sender
        domain = email.utils.parseaddr(sender)[1].rpartition("@")[2]
        # Message-IDs name the sender's domain; make_msgid() would look up this host's FQDN.
        self._message_id_domain = domain or "pingvas.localhost"

    async def send(self, *, to: str, subject: str, body: str) -> None:
        await asyncio.to_thread(self.write, to=to, subject=subject, body=body)

    def write(self, *, to: str, subject: str, body: str) -> Path:
        """Write one message and return its path. Readers never see a partial file: it is
        written under a hidden name and renamed into place."""
        now = datetime.now(UTC)
        message_uuid = uuid.uuid4()
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = email.utils.format_datetime(now)
        message["Message-ID"] = f"<{message_uuid}@{self._message_id_domain}>"
        message.set_content(body)
        data = message.as_bytes(policy=email.policy.SMTP)  # CRLF line endings, as RFC 5322 has them

        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{now:%Y%m%dT%H%M%S%fZ}-{message_uuid}.eml"
        final = self.directory / name
        partial = self.directory / f".{name}.partial"
        try:
            partial.write_bytes(data)
            os.replace(partial, final)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return final


class SesMailer:
    """Production's mailer: Amazon SES v2 `SendEmail`. Credentials come from the environment the
    way boto3 always finds them (env variables, IRSA web identity, instance profile)."""

    def __init__(
        self,
        *,
        region: str,
        sender: str,
        endpoint_url: str | None = None,
        connect_timeout_seconds: float = 5.0,
        read_timeout_seconds: float = 15.0,
    ) -> None:
        self.sender = sender
        self._client = boto3.session.Session().client(
            "sesv2",
            region_name=region,
            endpoint_url=endpoint_url,
            config=Config(
                connect_timeout=connect_timeout_seconds,
                read_timeout=read_timeout_seconds,
                # The outbox is the retry policy (with backoff, recorded in attempts/last_error);
                # botocore retrying underneath would only hold the row's lock longer.
                retries={"mode": "standard", "total_max_attempts": 1},
            ),
        )

    async def send(self, *, to: str, subject: str, body: str) -> None:
        try:
            await asyncio.to_thread(
                self._client.send_email,
                FromEmailAddress=self.sender,
                Destination={"ToAddresses": [to]},
                Content={
                    "Simple": {
                        "Subject": {"Data": subject, "Charset": "UTF-8"},
                        "Body": {"Text": {"Data": body, "Charset": "UTF-8"}},
                    }
                },
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            raise EmailDeliveryError(
                f"SES refused SendEmail (HTTP {status}, {error.get('Code', 'unknown')}): "
                f"{error.get('Message', '')}"
            ) from exc
        except BotoCoreError as exc:
            raise EmailDeliveryError(f"SES SendEmail failed: {exc}") from exc

    def close(self) -> None:
        """Close the client's pooled HTTP connections."""
        self._client.close()


def mailer_from_settings(settings: EmailSettings, home: Path) -> Mailer:
    if settings.backend == "ses":
        return SesMailer(
            region=settings.ses_region, sender=settings.sender, endpoint_url=settings.ses_endpoint_url
        )
    return OutboxDirectoryMailer(home / "outbox", settings.sender)


# --- The outbox ------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 2000 else text[:1997] + "..."


class EmailOutbox:
    """Billing emails in PostgreSQL, enqueued transactionally and sent in the background.

    A failed send waits `base_delay_seconds * 2**(attempts - 1)` (5 s, 10 s, 20 s, ...), at most
    `max_delay_seconds`, before its next try. After `max_attempts` failures the row stays in the
    table unsent, with its last error, and is no longer tried.
    """

    def __init__(
        self,
        *,
        base_delay_seconds: float = 5.0,
        max_delay_seconds: float = 3600.0,
        max_attempts: int = 30,
        send_timeout_seconds: float = 60.0,
    ) -> None:
        if base_delay_seconds < 0 or max_delay_seconds < base_delay_seconds:
            raise ValueError("need 0 <= base_delay_seconds <= max_delay_seconds")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.base_delay_seconds = base_delay_seconds
        self.max_delay_seconds = max_delay_seconds
        self.max_attempts = max_attempts
        self.send_timeout_seconds = send_timeout_seconds

    def retry_delay(self, attempts: int) -> timedelta:
        """How long to wait after the `attempts`-th failed send (attempts >= 1)."""
        exponent = max(0, attempts - 1)
        # Past 2**30 the cap has long applied; bounding the exponent keeps the float finite.
        seconds = self.base_delay_seconds * 2.0 ** min(exponent, 30)
        return timedelta(seconds=min(seconds, self.max_delay_seconds))

    async def enqueue(
        self,
        conn: AsyncConnection,
        *,
        user_id: uuid.UUID,
        dedupe_key: str,
        kind: str,
        to_address: str,
        subject: str,
        body: str,
    ) -> bool:
        """Add an email in the caller's transaction; False if `dedupe_key` was already enqueued."""
        inserted = await conn.execute(
            insert(email_outbox)
            .values(
                user_id=user_id,
                dedupe_key=dedupe_key,
                kind=str(kind),
                to_address=to_address,
                subject=subject,
                body=body,
            )
            .on_conflict_do_nothing(index_elements=[email_outbox.c.dedupe_key])
            .returning(email_outbox.c.id)
        )
        return inserted.first() is not None

    async def send_due(self, database: Database, mailer: Mailer, *, limit: int = 20) -> int:
        """Try up to `limit` due emails and return how many were sent. A mailer's failure is
        recorded on its row and logged, never raised; database errors do propagate."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        sent = 0
        for _ in range(limit):
            outcome = await self._send_next(database, mailer)
            if outcome is None:
                break
            sent += outcome
        return sent

    async def _send_next(self, database: Database, mailer: Mailer) -> bool | None:
        """Claim, send and mark one due email; None when nothing is due."""
        async with database.system("email outbox") as conn:
            row = (
                await conn.execute(
                    sa.select(
                        email_outbox.c.id,
                        email_outbox.c.kind,
                        email_outbox.c.to_address,
                        email_outbox.c.subject,
                        email_outbox.c.body,
                        email_outbox.c.attempts,
                    )
                    .where(
                        email_outbox.c.sent_at.is_(None),
                        email_outbox.c.next_attempt_at <= sa.func.now(),
                        email_outbox.c.attempts < self.max_attempts,
                    )
                    .order_by(email_outbox.c.next_attempt_at, email_outbox.c.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
            ).one_or_none()
            if row is None:
                return None
            try:
                async with asyncio.timeout(self.send_timeout_seconds):
                    await mailer.send(to=row.to_address, subject=row.subject, body=row.body)
            except Exception as exc:
                await self._record_failure(conn, row.id, row.kind, row.attempts + 1, exc)
                return False
            await conn.execute(
                sa.update(email_outbox).where(email_outbox.c.id == row.id).values(sent_at=sa.func.now())
            )
            log.info("sent email %s (%s)", row.id, row.kind)
            return True

    async def _record_failure(
        self, conn: AsyncConnection, email_id: int, kind: str, attempts: int, exc: Exception
    ) -> None:
        delay = self.retry_delay(attempts)
        await conn.execute(
            sa.update(email_outbox)
            .where(email_outbox.c.id == email_id)
            .values(
                attempts=attempts,
                last_error=_describe(exc),
                next_attempt_at=sa.func.now() + delay,
            )
        )
        if attempts >= self.max_attempts:
            log.error(
                "giving up on email %s (%s) after %d attempts: %s", email_id, kind, attempts, _describe(exc)
            )
        else:
            log.warning(
                "email %s (%s) failed (attempt %d), retrying in %.0fs: %s",
                email_id,
                kind,
                attempts,
                delay.total_seconds(),
                _describe(exc),
            )


async def run_email_sender(
    database: Database,
    outbox: EmailOutbox,
    mailer: Mailer,
    stop: asyncio.Event,
    interval_seconds: float,
    *,
    batch_size: int = 20,
) -> None:
    """The billing service's background sender: sends due emails every `interval_seconds` (at
    once again while a full batch went out) until `stop` is set. Never raises on a failure."""
    while not stop.is_set():
        sent = 0
        try:
            sent = await outbox.send_due(database, mailer, limit=batch_size)
        except Exception:
            log.exception("email outbox: sending failed; retrying in %.1fs", interval_seconds)
        if sent >= batch_size:
            continue  # a backlog: keep draining
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_seconds)
