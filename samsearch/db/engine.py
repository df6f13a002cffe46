"""Engine, sessions and schema migrations for SQLite (default, in the home) and Postgres (psycopg 3)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, make_url
from sqlalchemy.exc import DatabaseError as SqlDatabaseError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from samsearch.errors import SamsearchError, one_line

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


class DatabaseError(SamsearchError):
    pass


def default_sqlite_url(home: Path) -> str:
    return f"sqlite:///{Path(home) / 'samsearch.db'}"


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///FILE`` URL; None for other databases and in-memory SQLite."""
    try:
        parsed = make_url(normalise_url(url))
    except Exception:  # noqa: BLE001 - not a URL sqlalchemy reads: not a SQLite file either
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def normalise_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and route them through psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


class Database:
    """One metadata database: an engine, a session factory, and the migration step."""

    def __init__(self, url: str):
        self.url = normalise_url(url)
        self.engine = make_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def upgrade(self) -> None:
        """Apply every pending Alembic migration (idempotent)."""
        from alembic import command

        cfg = alembic_config(self.url)
        try:
            with self.engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except OperationalError as exc:
            raise DatabaseError(f"cannot open database {self.safe_url}: {one_line(exc.orig)}") from exc
        except SqlDatabaseError as exc:  # sqlite3: "file is not a database", "database disk image is malformed"
            path = sqlite_file(self.url)
            if path is None:
                raise
            raise DatabaseError(f"{path}: cannot open the SQLite database: {one_line(exc.orig)} (the file is "
                                "damaged or not a samsearch database; restore it from a backup)") from exc

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def table_names(self) -> list[str]:
        return inspect(self.engine).get_table_names()

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any exception."""
        with self._sessions() as session, session.begin():
            yield session

    def new_session(self) -> Session:
        return self._sessions()

    def dispose(self) -> None:
        self.engine.dispose()


def open_database(url: str, upgrade: bool = True) -> Database:
    db = Database(url)
    if upgrade:
        db.upgrade()
    return db
