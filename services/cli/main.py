"""The `pingvas` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.common.database import Database
    from services.user.accounts import UserAccounts
    from services.webhooks.sealing import SecretSealer


def _home() -> Path:
    return Path(os.environ.get("PINGVAS_HOME", ".pingvas"))


def _cmd_up(args: argparse.Namespace) -> int:
    from services.common.defaults import DEFAULT_DB_SCHEMA, DEFAULT_HTTP_PORT
    from services.supervisor import MeshOptions, run_mesh

    return run_mesh(
        MeshOptions(
            home=_home(),
            http_host=os.environ.get("PINGVAS_HTTP_HOST", "127.0.0.1"),
            http_port=int(os.environ.get("PINGVAS_HTTP_PORT", DEFAULT_HTTP_PORT)),
            workers=args.workers,
            # `pingvas up` runs dev unless told otherwise, and says so to every child explicitly.
            env=os.environ.get("PINGVAS_ENV", "dev"),
            admin_database_url=os.environ.get("PINGVAS_ADMIN_DATABASE_URL"),
            redis_url=os.environ.get("REDIS_URL"),
            s3_endpoint_url=os.environ.get("S3_ENDPOINT_URL") or os.environ.get("PINGVAS_S3_ENDPOINT_URL"),
            db_schema=os.environ.get("PINGVAS_DB_SCHEMA", DEFAULT_DB_SCHEMA),
            otlp_endpoint=args.otlp_endpoint or None,
        )
    )


def _cmd_generate(args: argparse.Namespace) -> int:
    from services.cli import generate

    return generate.run(args)


@dataclass(frozen=True)
class DatabaseLocation:
    urls: dict[str, str]
    schema: str
    env: str


def _database_location(*roles: str) -> DatabaseLocation:
    """The URLs of the environment's `roles` (app, system, owner), its schema and its name
    (dev, prod): from DATABASE_URL, SYSTEM_DATABASE_URL, OWNER_DATABASE_URL and PINGVAS_ENV if
    DATABASE_URL is set, else from the running embedded mesh. An external database names its
    environment explicitly, as a service must: a job run against production must never take
    dev's relaxed checks because a variable was forgotten."""
    from services.common.defaults import DEFAULT_DB_SCHEMA
    from services.supervisor import runtime_file

    variables = {"app": "DATABASE_URL", "system": "SYSTEM_DATABASE_URL", "owner": "OWNER_DATABASE_URL"}
    schema = os.environ.get("PINGVAS_DB_SCHEMA", DEFAULT_DB_SCHEMA)
    if os.environ.get("DATABASE_URL"):
        missing = [variables[role] for role in roles if not os.environ.get(variables[role])]
        if not os.environ.get("PINGVAS_ENV"):
            missing.append("PINGVAS_ENV")
        if missing:
            raise SystemExit(f"pingvas: set {' and '.join(missing)} as well as DATABASE_URL")
        return DatabaseLocation(
            {role: os.environ[variables[role]] for role in roles}, schema, os.environ["PINGVAS_ENV"]
        )
    mesh_file = runtime_file(_home().resolve())
    if not mesh_file.exists():
        raise SystemExit(
            f"pingvas: no database: set DATABASE_URL or start the mesh with `pingvas up` "
            f"(looked for {mesh_file})"
        )
    import json

    mesh = json.loads(mesh_file.read_text())
    return DatabaseLocation(
        {role: mesh[variables[role].lower()] for role in roles}, mesh["db_schema"], mesh["env"]
    )


def _cmd_admin(args: argparse.Namespace) -> int:
    from services.billing.ledger import CreditLedger
    from services.common.database import Database
    from services.common.errors import DomainError
    from services.user.accounts import UserAccounts

    location = _database_location("app", "system")

    async def run() -> int:
        database = Database(
            location.urls["app"],
            schema=location.schema,
            system_url=location.urls["system"],
            pool_size=1,
            application_name="pingvas-cli",
        )
        accounts = UserAccounts(database, CreditLedger(), free_grant_credits=0)
        try:
            if args.admin_command == "apikeys":
                return await _admin_api_keys(args, database, accounts)
            if args.admin_command == "set-plan":
                account = await accounts.set_plan(args.email, args.plan)
            else:
                account = await accounts.adjust_credits(args.email, args.credits, f"admin:{uuid.uuid4()}")
        except DomainError as error:
            print(f"pingvas: {error.message}", file=sys.stderr)
            return 2
        finally:
            await database.close()
        print(
            f"{account.email}: plan {account.plan}, {account.credits.balance} credits "
            f"({account.credits.held} held, {account.credits.available} available)"
        )
        return 0

    return asyncio.run(run())


def _webhook_sealer() -> SecretSealer | None:
    """What seals a new key's webhook signing secret: PINGVAS_JWT_SECRET as the services have it,
    from the environment or, for the laptop's mesh, the secrets `pingvas up` keeps."""
    import json

    from services.webhooks.sealing import SecretSealer

    secret = os.environ.get("PINGVAS_JWT_SECRET")
    stored = _home() / "secrets.json"
    if not secret and stored.exists():
        secret = json.loads(stored.read_text()).get("PINGVAS_JWT_SECRET")
    return SecretSealer(secret) if secret else None


async def _admin_api_keys(args: argparse.Namespace, database: Database, accounts: UserAccounts) -> int:
    """`pingvas admin apikeys`: a user's API keys, for the user named by email or id, as the
    ApiKeyService would manage them (the same domain, services/user/api_keys.py)."""
    from datetime import UTC, datetime, timedelta

    from services.user.api_keys import RESOURCE_PREFIX, ApiKeys

    try:
        account = await accounts.get(uuid.UUID(args.user))
    except ValueError:
        account = await accounts.find_by_email(args.user)
    keys = ApiKeys(database, sealer=_webhook_sealer())
    if args.apikeys_command == "create":
        expires_at = (
            datetime.now(UTC) + timedelta(days=args.expires_in_days)
            if args.expires_in_days is not None
            else None
        )
        created = await keys.create(
            account.id, display_name=args.name, scopes=args.scope or [], expires_at=expires_at
        )
        print(f"{RESOURCE_PREFIX}{created.key.id}\t{created.key.prefix}\t{','.join(created.key.scopes)}")
        if created.webhook_signing_secret:
            print(f"webhook signing secret, shown only now: {created.webhook_signing_secret}")
        else:
            print(
                "no webhook signing secret (PINGVAS_JWT_SECRET unknown here): this key cannot carry webhooks"
            )
        print(f"secret (shown only now): {created.secret}")
    elif args.apikeys_command == "list":
        token = ""
        while True:
            page, token = await keys.page(account.id, page_size=100, page_token=token)
            for key in page:
                print(
                    f"{RESOURCE_PREFIX}{key.id}\t{key.prefix}\t{','.join(key.scopes)}\t{key.display_name}\t"
                    f"created {key.created_at.isoformat()}\t"
                    f"last used {key.last_used_at.isoformat() if key.last_used_at else 'never'}\t"
                    f"expires {key.expires_at.isoformat() if key.expires_at else 'never'}"
                )
            if not token:
                break
    else:
        name = args.key if args.key.startswith(RESOURCE_PREFIX) else RESOURCE_PREFIX + args.key
        await keys.revoke(account.id, name)
        print(f"revoked {name}")
    return 0


def _cmd_billing(args: argparse.Namespace) -> int:
    if args.billing_command == "plans":
        from services.billing.plans import PlanCatalog
        from services.common.settings import LemonSqueezySettings, PlanSettings

        offers = PlanCatalog(PlanSettings(), LemonSqueezySettings()).offers()
        if args.json:
            import json

            print(
                json.dumps(
                    [
                        {
                            "plan": o.plan,
                            "variant_id": o.variant_id,
                            "monthly_credits": o.monthly_credits,
                            "price_usd": o.price_usd,
                        }
                        for o in offers
                    ]
                )
            )
        else:
            for o in offers:
                print(
                    f"{o.plan:11s} ${o.price_usd:<4d} {o.monthly_credits:>7,d} credits/month  variant {o.variant_id or '-'}"
                )
        return 0

    from services.billing.app import build_billing

    database = _database_location("app", "system")

    async def run() -> int:
        from services.common.errors import DomainError

        parts = build_billing(
            env=database.env,
            database_url=database.urls["app"],
            system_database_url=database.urls["system"],
            db_schema=database.schema,
            application_name="pingvas-cli",
        )
        try:
            if args.billing_command == "reconcile":
                counts = await parts.reconciler.reconcile()
                print(
                    f"reconciled: {counts['subscriptions']} subscriptions updated, {counts['renewal']} renewals "
                    f"and {counts['updated']} upgrades applied"
                    + "".join(
                        f", {count} {what}" for what, count in counts.items() if what.startswith("upgrades")
                    )
                )
            elif args.billing_command == "quarantine":
                if args.quarantine_command == "apply":
                    outcome = await parts.webhooks.apply_quarantined(args.id)
                    print(f"applied quarantined delivery {args.id}: {outcome}")
                else:
                    for delivery in await parts.webhooks.quarantined():
                        print(
                            f"{delivery.id}\t{delivery.received_at.isoformat()}\t{delivery.event_name}\t"
                            f"{delivery.resource_id}\t{delivery.reason}"
                        )
            else:
                expired = await parts.billing.expire_lapsed()
                print(f"expired {expired} subscriptions")
        except DomainError as error:
            print(f"pingvas: {error.message}", file=sys.stderr)
            return 2
        finally:
            await parts.close()
        return 0

    return asyncio.run(run())


def _cmd_models_create_tiny(args: argparse.Namespace) -> int:
    # Built by the inference package in its own process: services/ never imports gpu_inference.
    models_dir = Path(args.dir or os.environ.get("PINGVAS_MODELS_DIR") or _home() / "models")
    return subprocess.run([sys.executable, "-m", "gpu_inference.tiny", str(models_dir)]).returncode


def _models_dir(args: argparse.Namespace) -> Path:
    return Path(getattr(args, "dir", None) or os.environ.get("PINGVAS_MODELS_DIR") or _home() / "models")


def _default_model_name(source: Path) -> str:
    """A directory's name, or a checkpoint or LoRA file's name without `.safetensors`."""
    source = source.resolve()
    return source.stem if source.is_file() else source.name


def _cmd_models_push(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from services.common.settings import ModelStoreSettings, ObjectStoreSettings
    from services.common.storage import ObjectStoreUnavailable
    from services.generation.catalog import ModelKind
    from services.generation.model_store import ModelStoreError, open_model_store
    from services.generation.samplers import ModelFamily

    if args.name and len(args.sources) > 1:
        print("pingvas: --name names one model; push one source with it", file=sys.stderr)
        return 2
    os.environ.update(_object_store_env())
    settings = ObjectStoreSettings()
    # A checkpoint or LoRA file is named after its file (without .safetensors) by default.
    models = [(Path(source), args.name or _default_model_name(Path(source))) for source in args.sources]
    family = ModelFamily(args.family) if args.family else None
    kind = ModelKind(args.kind) if args.kind else None

    async def run() -> int:
        store, close = await open_model_store(settings, _models_dir(args), transfers=ModelStoreSettings())
        try:
            if args.if_bucket_empty and not await store.bucket.is_empty():
                print(f"s3://{settings.models_bucket} already holds models; pushed nothing")
                return 0
            for source, name in models:
                report = await store.bucket.push(source, name, family=family, kind=kind)
                manifest = report.manifest
                what = "LoRA" if manifest.kind == ModelKind.LORA else manifest.weight_format
                print(
                    f"pushed {name} ({manifest.family}, {what}, {len(manifest.files)} files, "
                    f"{manifest.total_bytes / 2**20:.1f} MiB) to s3://{settings.models_bucket}/{manifest.prefix}: "
                    f"{report.uploaded} uploaded, {report.unchanged} unchanged"
                )
        except ModelStoreError as error:
            print(f"pingvas: {error}", file=sys.stderr)
            return 2
        except (ObjectStoreUnavailable, BotoCoreError, ClientError) as error:
            print(f"pingvas: models push failed: {error}", file=sys.stderr)
            return 1
        finally:
            await close()
        return 0

    return asyncio.run(run())


def _cmd_models_list(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from services.common.settings import ModelStoreSettings, ObjectStoreSettings
    from services.common.storage import ObjectStoreUnavailable
    from services.generation.model_store import open_model_store

    os.environ.update(_object_store_env())
    settings = ObjectStoreSettings()

    async def run() -> int:
        store, close = await open_model_store(settings, _models_dir(args), transfers=ModelStoreSettings())
        try:
            manifests = {manifest.name: manifest for manifest in await store.bucket.manifests()}
        except (ObjectStoreUnavailable, BotoCoreError, ClientError) as error:
            print(f"pingvas: models list failed: {error}", file=sys.stderr)
            return 1
        finally:
            await close()
        cached = {model.name: model for model in store.cache.cached()}
        print(f"bucket s3://{settings.models_bucket}: {len(manifests)} model(s)")
        for name, manifest in sorted(manifests.items()):
            state = "cached" if store.cache.holds(manifest) else "not cached"
            size = (
                "LoRA" if manifest.kind == "lora" else f"{manifest.native_size}px\t{manifest.weight_format}"
            )
            print(
                f"  {name}\t{manifest.family}\t{size}\t{len(manifest.files)} files\t"
                f"{manifest.total_bytes / 2**20:.1f} MiB\t{state}"
            )
        print(f"cache {store.cache.cache_dir}: {len(cached)} model(s)")
        for name, model in sorted(cached.items()):
            if name not in manifests:
                state = "not in the bucket"
            elif store.cache.holds(manifests[name]):
                state = "current"
            elif model.complete:
                state = "another version: replaced at its next fetch"
            else:
                state = "put there by hand: adopted at its next fetch if its files match"
            print(f"  {name}\t{state}")
        return 0

    return asyncio.run(run())


def _cmd_proto_generate(_args: argparse.Namespace) -> int:
    from services.cli import codegen

    codegen.main()
    return 0


def _cmd_gateway_render(args: argparse.Namespace) -> int:
    from gateway.cluster import CHART_FILES, render_cluster_envoy_configs
    from services.common.settings import JwksSettings
    from services.supervisor import edge_limits

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    configs = render_cluster_envoy_configs(
        limits=edge_limits(), jwks_cache_seconds=JwksSettings().cache_seconds
    )
    for path, text in configs.items():
        out = out_dir / path.relative_to(CHART_FILES)
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}")
    return 0


def _cmd_db_upgrade(_args: argparse.Namespace) -> int:
    from services.migrations import upgrade

    database = _database_location("owner")
    asyncio.run(upgrade(database.urls["owner"], database.schema))
    print(f"schema {database.schema} is at the newest revision")
    return 0


def _object_store_env() -> dict[str, str]:
    """S3's settings: from the environment (S3_ENDPOINT_URL, PINGVAS_S3_*; boto's default chain
    for the keys when unset), else the running embedded mesh's SeaweedFS and its keys."""
    import json

    from services.embedded.seaweedfs import S3Credentials
    from services.supervisor import runtime_file

    if os.environ.get("S3_ENDPOINT_URL") or os.environ.get("PINGVAS_S3_ENDPOINT_URL"):
        return {}
    home = _home().resolve()
    mesh_file = runtime_file(home)
    if not mesh_file.exists():
        return {}
    endpoint = json.loads(mesh_file.read_text()).get("s3_endpoint_url")
    credentials = home / "s3-credentials.json"
    if not endpoint or not credentials.exists():
        return {}
    return S3Credentials(**json.loads(credentials.read_text())).env(endpoint)


def _cmd_storage_init(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from services.common.buckets import apply_plan, bucket_plan, plan_as_json, summary
    from services.common.settings import ObjectStoreSettings

    os.environ.update(_object_store_env())
    settings = ObjectStoreSettings()
    plan = bucket_plan(settings)
    if args.dry_run:
        print(plan_as_json(plan))
        return 0
    try:
        lines = asyncio.run(apply_plan(settings, plan))
    except (BotoCoreError, ClientError) as error:
        print(f"pingvas: storage init failed: {error}", file=sys.stderr)
        return 1
    for line in summary(lines):
        print(line)
    return 0


def _seconds(value: str) -> int:
    seconds = int(value)
    if seconds < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return seconds


def _cmd_storage_gc(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from botocore.exceptions import BotoCoreError, ClientError

    from services.common.database import Database
    from services.common.settings import ObjectStoreSettings
    from services.common.storage import ObjectStoreUnavailable, open_image_store
    from services.gallery.orphans import OrphanCollector

    os.environ.update(_object_store_env())
    settings = ObjectStoreSettings()
    grace = args.grace_seconds if args.grace_seconds is not None else settings.orphan_grace_seconds
    location = _database_location("app", "system")

    async def run() -> int:
        database = Database(
            location.urls["app"],
            schema=location.schema,
            system_url=location.urls["system"],
            pool_size=1,
            application_name="pingvas-cli",
        )
        store, close_store = await open_image_store(settings, url_ttl_seconds=60)
        removed = 0
        try:
            collector = OrphanCollector(database, store)
            orphans = collector.collect(
                grace=timedelta(seconds=grace), now=datetime.now(UTC), prefix=args.prefix
            )
            async for orphan in orphans:
                removed += 1
                print(
                    f"removed s3://{store.bucket}/{orphan.key} ({orphan.versions} "
                    f"version{'' if orphan.versions == 1 else 's'}, "
                    f"last written {orphan.last_modified.isoformat()})"
                )
        except (ObjectStoreUnavailable, BotoCoreError, ClientError) as error:
            print(f"pingvas: storage gc failed: {error}", file=sys.stderr)
            return 1
        finally:
            await close_store()
            await database.close()
        print(f"removed {removed} orphan object(s) older than {grace} seconds from s3://{store.bucket}")
        return 0

    return asyncio.run(run())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pingvas", description="Diffusion image generation as a service.")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run the whole mesh on this machine")
    up.add_argument("--workers", type=int, default=int(os.environ.get("PINGVAS_WORKERS", "1")))
    up.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        default=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        help="export traces and metrics of Envoy and every process over OTLP/gRPC to URL "
        "(http://host:4317); off by default (OTEL_EXPORTER_OTLP_ENDPOINT)",
    )
    up.set_defaults(handler=_cmd_up)

    from services.cli import generate

    generate_parser = commands.add_parser("generate", help="generate an image through the running mesh")
    generate.add_arguments(generate_parser)
    generate_parser.set_defaults(handler=_cmd_generate)

    admin = commands.add_parser("admin", help="administer users")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True)
    set_plan = admin_commands.add_parser("set-plan", help="set a user's plan")
    set_plan.add_argument("email")
    set_plan.add_argument("plan", choices=["free", "starter", "pro", "studio", "enterprise"])
    grant = admin_commands.add_parser("grant-credits", help="grant (or, negative, take back) credits")
    grant.add_argument("email")
    grant.add_argument("credits", type=int)
    api_keys = admin_commands.add_parser("apikeys", help="create, list and revoke a user's API keys")
    api_key_commands = api_keys.add_subparsers(dest="apikeys_command", required=True)
    create_key = api_key_commands.add_parser("create", help="create a key and print its secret, once")
    create_key.add_argument("user", help="the user's email or id")
    create_key.add_argument("--name", required=True, help="the key's display name")
    create_key.add_argument(
        "--scope", action="append", help="read or generate; repeat for both (at least one)"
    )
    create_key.add_argument(
        "--expires-in-days", type=int, help="days until the key stops working (never if unset)"
    )
    list_keys = api_key_commands.add_parser("list", help="list the user's keys that are not revoked")
    list_keys.add_argument("user", help="the user's email or id")
    revoke_key = api_key_commands.add_parser("revoke", help="revoke a key: it fails everywhere at once")
    revoke_key.add_argument("user", help="the user's email or id")
    revoke_key.add_argument("key", help="the key's id or name (apikeys/{id})")
    admin.set_defaults(handler=_cmd_admin)

    billing = commands.add_parser("billing", help="plans, and the billing jobs")
    billing_commands = billing.add_subparsers(dest="billing_command", required=True)
    plans = billing_commands.add_parser("plans", help="list the plans")
    plans.add_argument("--json", action="store_true", help="as a JSON list")
    billing_commands.add_parser("reconcile", help="apply what Lemon Squeezy webhooks missed")
    billing_commands.add_parser("expire", help="expire subscriptions past their grace period (daily job)")
    quarantine = billing_commands.add_parser(
        "quarantine", help="list webhook deliveries held because the payer is not provably the user"
    )
    quarantine_commands = quarantine.add_subparsers(dest="quarantine_command")
    quarantine_commands.add_parser(
        "list", help="list them (the default): id, received, event, resource, reason"
    )
    apply = quarantine_commands.add_parser("apply", help="apply one after review")
    apply.add_argument("id", type=int, help="the delivery's id, as listed")
    billing.set_defaults(handler=_cmd_billing)

    models = commands.add_parser("models", help="the model store: the models bucket and the local cache")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    tiny = model_commands.add_parser(
        "create-tiny",
        help="build the tiny random-weight models: SD1.5, SDXL, Flux, a single-file checkpoint and LoRAs",
    )
    tiny.add_argument("--dir", help="models directory (default PINGVAS_HOME/models)")
    tiny.set_defaults(handler=_cmd_models_create_tiny)
    push = model_commands.add_parser(
        "push",
        help="upload models, each with its manifest, to the models bucket (the running mesh's "
        "SeaweedFS unless S3_ENDPOINT_URL is set) under sd15/, sdxl/, flux/ or loras/; safe to run again",
    )
    push.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="a diffusers model directory, a single-file .safetensors checkpoint (or a directory "
        "holding one and its diffusers configs in config/), or a LoRA (a .safetensors file, a "
        "file in a loras/ folder, or a directory holding pytorch_lora_weights.safetensors)",
    )
    push.add_argument(
        "--name", help="the model's name (default: the directory's name or the file's stem; one SOURCE only)"
    )
    push.add_argument(
        "--family",
        choices=["sd15", "sdxl", "flux"],
        help="declare the architecture of a checkpoint or LoRA (default: detected from its tensors)",
    )
    push.add_argument(
        "--kind",
        choices=["pipeline", "lora"],
        help="declare a .safetensors file a LoRA or a checkpoint (default: a LoRA if in a loras/ folder)",
    )
    push.add_argument(
        "--if-bucket-empty",
        action="store_true",
        help="push only if the bucket holds no model yet (what `pingvas up` does in dev)",
    )
    push.set_defaults(handler=_cmd_models_push)
    list_models = model_commands.add_parser(
        "list", help="the models the bucket has and what the local cache holds"
    )
    list_models.add_argument(
        "--dir", help="the cache directory (default PINGVAS_MODELS_DIR, PINGVAS_HOME/models)"
    )
    list_models.set_defaults(handler=_cmd_models_list)

    storage = commands.add_parser("storage", help="object storage (S3)")
    storage_commands = storage.add_subparsers(dest="storage_command", required=True)
    init = storage_commands.add_parser(
        "init",
        help="create and configure the buckets (safe to run again); the running mesh's SeaweedFS "
        "unless S3_ENDPOINT_URL is set",
    )
    init.add_argument(
        "--dry-run", action="store_true", help="print the exact S3 calls, as JSON, and send nothing"
    )
    init.set_defaults(handler=_cmd_storage_init)
    gc = storage_commands.add_parser(
        "gc",
        help="remove orphan objects from the images bucket: older than the grace period and "
        "recorded by no images row (safe to run again)",
    )
    gc.add_argument("--prefix", default="", help="only keys under this prefix (one user's: USER_ID/)")
    gc.add_argument(
        "--grace-seconds",
        type=_seconds,
        help="how old an orphan must be (default PINGVAS_S3_ORPHAN_GRACE_SECONDS, 3600)",
    )
    gc.set_defaults(handler=_cmd_storage_gc)

    proto = commands.add_parser("proto", help="contract tooling")
    proto_commands = proto.add_subparsers(dest="proto_command", required=True)
    proto_commands.add_parser(
        "generate", help="regenerate the Python SDK and Envoy descriptors"
    ).set_defaults(handler=_cmd_proto_generate)

    from gateway.cluster import CHART_FILES

    gateway = commands.add_parser("gateway", help="the Envoy gateway")
    gateway_commands = gateway.add_subparsers(dest="gateway_command", required=True)
    render = gateway_commands.add_parser(
        "render",
        help="render the gateway's Envoy configs for Kubernetes, without and with the tracer, as the "
        "Helm chart ships them (same code as `pingvas up`; CI fails when a committed file is stale)",
    )
    render.add_argument("--out-dir", default=str(CHART_FILES), help=f"default {CHART_FILES}")
    render.set_defaults(handler=_cmd_gateway_render)

    db = commands.add_parser("db", help="database tooling")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser(
        "upgrade", help="apply migrations, as the environment's owner role (OWNER_DATABASE_URL)"
    ).set_defaults(handler=_cmd_db_upgrade)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.handler(args))


if __name__ == "__main__":
    main()
