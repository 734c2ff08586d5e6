"""``skipstep keys``: API keys and their webhook signing secrets."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from core.errors import SkipstepError
from core.settings import Settings


def add_commands(commands: Any, settings: Settings) -> None:
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(required=True, metavar="ACTION")
    create = keys.add_parser("create", help="create an API key; prints the key and its webhook secret once")
    create.add_argument("--name", required=True)
    create.add_argument("--admin", action="store_true", help="may use the admin routes and see every job")
    create.set_defaults(run=_create_key)
    rotate = keys.add_parser("rotate-webhook-secret", help="new webhook secret; the old one stays valid for a while")
    rotate.add_argument("--name", required=True)
    rotate.add_argument("--grace-hours", type=float, default=24.0)
    rotate.set_defaults(run=_rotate_secret)


def _create_key(args: argparse.Namespace, settings: Settings) -> int:
    from core.db import session_scope
    from core.keys import create_key

    with session_scope(settings.database) as session:
        key, raw = create_key(session, args.name, is_admin=args.admin)
        secret = key.webhook_secret
    print(f"api key ({'admin' if args.admin else 'user'} {args.name}): {raw}")
    print(f"webhook secret: {secret}")
    print("both are shown only now: store them")
    return 0


def _rotate_secret(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from core.db import ApiKey, session_scope
    from core.keys import rotate_webhook_secret

    with session_scope(settings.database) as session:
        key = session.scalar(select(ApiKey).where(ApiKey.name == args.name, ApiKey.revoked_at.is_(None)))
        if key is None:
            raise SkipstepError(f"--name: no active API key named {args.name!r}")
        secret = rotate_webhook_secret(session, key, timedelta(hours=args.grace_hours)).webhook_secret
    print(f"new webhook secret: {secret}")
    print(f"deliveries carry both signatures for {args.grace_hours:g} h")
    return 0
