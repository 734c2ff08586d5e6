"""`skipstep migrate` and `skipstep keys` on a fresh embedded (SQLite) database."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import select

from core.db import ApiKey, session_scope
from core.db.models import utcnow
from core.keys import authenticate
from core.webhooks.signing import signing_secrets


def test_migrate_create_keys_and_rotate_the_webhook_secret(cli, tmp_path: Path) -> None:
    home = tmp_path / "home"
    migrated = cli(home, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "is at the newest schema" in migrated.stdout

    created = cli(home, "keys", "create", "--name", "ops", "--admin")
    assert created.returncode == 0, created.stderr
    raw = re.search(r"api key \(admin ops\): (sk_\S+)", created.stdout).group(1)
    secret = re.search(r"webhook secret: (whsec_\S+)", created.stdout).group(1)

    rotated = cli(home, "keys", "rotate-webhook-secret", "--name", "ops", "--grace-hours", "2")
    assert rotated.returncode == 0, rotated.stderr
    new_secret = re.search(r"new webhook secret: (whsec_\S+)", rotated.stdout).group(1)

    with session_scope(f"sqlite:///{home / 'skipstep.db'}") as session:
        key = authenticate(session, raw)
        assert key is not None and key.is_admin and key.name == "ops"
        assert signing_secrets(key, utcnow()) == [new_secret, secret]  # both sign during the grace period
        assert session.scalar(select(ApiKey.key_hash).where(ApiKey.name == "ops")) != raw  # stored hashed

    missing = cli(home, "keys", "rotate-webhook-secret", "--name", "nobody")
    assert missing.returncode == 2
    assert "--name: no active API key named 'nobody'" in missing.stderr
