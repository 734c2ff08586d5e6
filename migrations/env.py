"""Alembic environment: the URL comes from skipstep's settings unless a caller set one."""

from alembic import context

from core.db.models import Base
from core.db.session import engine_for
from core.settings import get_settings

config = context.config
if not config.get_main_option("sqlalchemy.url"):
    config.set_main_option("sqlalchemy.url", get_settings().database.replace("%", "%%"))


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    # The application's engine: same SQLite settings, and the database's directory created if missing.
    with engine_for(config.get_main_option("sqlalchemy.url")).connect() as connection:
        # render_as_batch: SQLite cannot ALTER most things in place; batch mode copies the table instead.
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
