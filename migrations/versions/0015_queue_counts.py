"""Each API key's queued and running jobs per model, and the newest job it queued there (``core.db.QueueCount``), and
its jobs in flight in all (``api_keys.in_flight``), kept by triggers on ``jobs``: a queue position reads one row per key
instead of counting every job in the queue, and the in-flight cap reads the key's row as it locks it.

The triggers are created before the counts are filled in, in the same transaction: on PostgreSQL creating them
blocks writes to ``jobs`` until the migration commits, so no change falls between the two.

Revision ID: 0015_queue_counts
Revises: 0014_lora26_loras
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from core.db.models import UTCDateTime

# revision identifiers, used by Alembic.
revision: str = "0015_queue_counts"
down_revision: str | Sequence[str] | None = "0014_lora26_loras"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTED = "('queued', 'running')"
CHANGED = (
    "(OLD.status IS DISTINCT FROM NEW.status OR OLD.model IS DISTINCT FROM NEW.model "
    "OR OLD.owner_id IS DISTINCT FROM NEW.owner_id)"
)

POSTGRESQL = [
    f"""
    CREATE FUNCTION count_queue() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- The key's row first, then its count's: the order a submit takes them in (core.limits.active).
        IF TG_OP <> 'INSERT' AND OLD.status IN {COUNTED}
           AND NOT (TG_OP = 'UPDATE' AND NEW.status IN {COUNTED} AND NEW.owner_id = OLD.owner_id) THEN
            UPDATE api_keys SET in_flight = in_flight - 1 WHERE id = OLD.owner_id;
        END IF;
        IF TG_OP <> 'DELETE' AND NEW.status IN {COUNTED}
           AND NOT (TG_OP = 'UPDATE' AND OLD.status IN {COUNTED} AND NEW.owner_id = OLD.owner_id) THEN
            UPDATE api_keys SET in_flight = in_flight + 1 WHERE id = NEW.owner_id;
        END IF;
        IF TG_OP <> 'INSERT' AND OLD.status IN {COUNTED} THEN
            UPDATE queue_counts
            SET queued = queued - (OLD.status = 'queued')::int, running = running - (OLD.status = 'running')::int
            WHERE model = OLD.model AND owner_id = OLD.owner_id;
        END IF;
        IF TG_OP <> 'DELETE' AND NEW.status IN {COUNTED} THEN
            INSERT INTO queue_counts AS counts (model, owner_id, queued, running, latest_queued_at)
            VALUES (NEW.model, NEW.owner_id, (NEW.status = 'queued')::int, (NEW.status = 'running')::int,
                    CASE WHEN NEW.status = 'queued' THEN NEW.created_at END)
            ON CONFLICT (model, owner_id) DO UPDATE
            SET queued = counts.queued + EXCLUDED.queued, running = counts.running + EXCLUDED.running,
                latest_queued_at = GREATEST(counts.latest_queued_at, EXCLUDED.latest_queued_at);
        END IF;
        RETURN NULL;
    END $$
    """,
    "CREATE FUNCTION clear_queue_counts() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN DELETE FROM queue_counts; UPDATE api_keys SET in_flight = 0; RETURN NULL; END $$",
    "CREATE TRIGGER jobs_count_rows AFTER INSERT OR DELETE ON jobs FOR EACH ROW EXECUTE FUNCTION count_queue()",
    f"CREATE TRIGGER jobs_count_changes AFTER UPDATE OF status, model, owner_id ON jobs FOR EACH ROW "
    f"WHEN {CHANGED} EXECUTE FUNCTION count_queue()",
    "CREATE TRIGGER jobs_count_truncate AFTER TRUNCATE ON jobs FOR EACH STATEMENT "
    "EXECUTE FUNCTION clear_queue_counts()",
]

_SQLITE_ENTER = """
    INSERT INTO queue_counts (model, owner_id, queued, running, latest_queued_at)
    VALUES (NEW.model, NEW.owner_id, NEW.status = 'queued', NEW.status = 'running',
            CASE WHEN NEW.status = 'queued' THEN NEW.created_at END)
    ON CONFLICT (model, owner_id) DO UPDATE SET queued = queued + excluded.queued, running = running + excluded.running,
        latest_queued_at = coalesce(max(latest_queued_at, excluded.latest_queued_at), latest_queued_at,
                                    excluded.latest_queued_at);
"""
_SQLITE_LEAVE = """
    UPDATE queue_counts SET queued = queued - (OLD.status = 'queued'), running = running - (OLD.status = 'running')
    WHERE model = OLD.model AND owner_id = OLD.owner_id;
"""
_SQLITE_CHANGED = CHANGED.replace("IS DISTINCT FROM", "IS NOT")
_SQLITE_ADD = "UPDATE api_keys SET in_flight = in_flight + 1 WHERE id = NEW.owner_id"
_SQLITE_TAKE = "UPDATE api_keys SET in_flight = in_flight - 1 WHERE id = OLD.owner_id"
_SAME_KEY_STILL_COUNTED = f"(OLD.status IN {COUNTED} AND NEW.status IN {COUNTED} AND NEW.owner_id = OLD.owner_id)"
SQLITE = [
    f"CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs WHEN NEW.status IN {COUNTED} "
    f"BEGIN {_SQLITE_ADD}; {_SQLITE_ENTER} END",
    f"CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs WHEN OLD.status IN {COUNTED} "
    f"BEGIN {_SQLITE_TAKE}; {_SQLITE_LEAVE} END",
    f"CREATE TRIGGER jobs_count_leave AFTER UPDATE OF status, model, owner_id ON jobs "
    f"WHEN OLD.status IN {COUNTED} AND {_SQLITE_CHANGED} "
    f"BEGIN {_SQLITE_TAKE} AND NOT {_SAME_KEY_STILL_COUNTED}; {_SQLITE_LEAVE} END",
    f"CREATE TRIGGER jobs_count_enter AFTER UPDATE OF status, model, owner_id ON jobs "
    f"WHEN NEW.status IN {COUNTED} AND {_SQLITE_CHANGED} "
    f"BEGIN {_SQLITE_ADD} AND NOT {_SAME_KEY_STILL_COUNTED}; {_SQLITE_ENTER} END",
]

FILL = f"""
    INSERT INTO queue_counts (model, owner_id, queued, running, latest_queued_at)
    SELECT model, owner_id, SUM(CASE WHEN status = 'queued' THEN 1 ELSE 0 END),
           SUM(CASE WHEN status = 'running' THEN 1 ELSE 0 END), MAX(CASE WHEN status = 'queued' THEN created_at END)
    FROM jobs WHERE status IN {COUNTED} GROUP BY model, owner_id
"""
FILL_KEYS = f"""
    UPDATE api_keys SET in_flight = (SELECT count(*) FROM jobs WHERE owner_id = api_keys.id AND status IN {COUNTED})
"""


def upgrade() -> None:
    op.create_table(
        "queue_counts",
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("queued", sa.Integer(), server_default="0", nullable=False),
        sa.Column("running", sa.Integer(), server_default="0", nullable=False),
        sa.Column("latest_queued_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["owner_id"], ["api_keys.id"]),
        sa.PrimaryKeyConstraint("model", "owner_id"),
    )
    op.create_index("ix_queue_counts_owner_id", "queue_counts", ["owner_id"])
    op.add_column("api_keys", sa.Column("in_flight", sa.Integer(), server_default="0", nullable=False))
    for statement in POSTGRESQL if op.get_bind().dialect.name == "postgresql" else SQLITE:
        op.execute(statement)
    op.execute(FILL)
    op.execute(FILL_KEYS)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for trigger in ("jobs_count_rows", "jobs_count_changes", "jobs_count_truncate"):
            op.execute(f"DROP TRIGGER {trigger} ON jobs")
        op.execute("DROP FUNCTION count_queue()")
        op.execute("DROP FUNCTION clear_queue_counts()")
    else:
        for trigger in ("jobs_count_insert", "jobs_count_delete", "jobs_count_leave", "jobs_count_enter"):
            op.execute(f"DROP TRIGGER {trigger}")
    op.drop_index("ix_queue_counts_owner_id", table_name="queue_counts")
    op.drop_table("queue_counts")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("in_flight")
