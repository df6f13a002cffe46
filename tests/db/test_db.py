"""The schema is owned by Alembic and behaves the same on SQLite and Postgres."""

import pytest
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError

from samsearch.db import Image, Ingestion, Segment, open_database
from samsearch.db.schema import Base


def test_migrations_create_the_orm_schema(database_url):
    db = open_database(database_url)
    assert db.current_revision() is not None
    tables = set(db.table_names())
    assert set(Base.metadata.tables) <= tables and "alembic_version" in tables
    insp = inspect(db.engine)
    for name, table in Base.metadata.tables.items():
        assert {c["name"] for c in insp.get_columns(name)} == set(table.columns.keys()), name
    db.upgrade()  # idempotent
    db.dispose()


def test_content_hash_is_unique_and_cascade_deletes(database_url):
    db = open_database(database_url)
    with db.session() as s:
        img = Image(content_hash="a" * 64, path="/x.png", dataset="d")
        s.add(img)
        s.flush()
        s.add(Segment(id="00000000-0000-0000-0000-000000000001", image_id=img.id, settings_hash="h",
                      segment_index=0, source="mask", model_key="m", rle_counts="1", height=1, width=1,
                      bbox_x=0, bbox_y=0, bbox_w=1, bbox_h=1, area=1))
        s.add(Ingestion(image_id=img.id, settings_hash="h", n_segments=1))
    with pytest.raises(IntegrityError), db.session() as s:
        s.add(Image(content_hash="a" * 64, path="/y.png", dataset="d"))
    with db.session() as s:
        s.delete(s.get(Image, img.id))
    with db.session() as s:
        assert s.query(Segment).count() == 0 and s.query(Ingestion).count() == 0
    db.dispose()


def test_unreachable_database_is_one_line_error():
    from samsearch.db.engine import DatabaseError

    with pytest.raises(DatabaseError, match="cannot open database") as info:
        open_database("postgresql://nobody@127.0.0.1:1/none")
    assert "\n" not in str(info.value)


def test_migration_0002_gives_every_existing_image_its_dataset(database_url):
    """An image stored before image_datasets existed belongs to its ``images.dataset`` after the upgrade;
    a new ORM image joins its dataset; deleting the image deletes its memberships."""
    from alembic import command
    from sqlalchemy import text

    from samsearch.db import ImageDataset
    from samsearch.db.engine import alembic_config

    db = open_database(database_url, upgrade=False)
    cfg = alembic_config(db.url)
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO images (content_hash, path, dataset, status, attempts, created_at, updated_at)"
                          " VALUES ('h1', '/a.png', 'old', 'done', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
    db.upgrade()
    assert db.current_revision() == "0003"
    with db.session() as s:
        s.add(Image(content_hash="h2", path="/b.png", dataset="new"))
    with db.session() as s:
        got = {(i.content_hash, m.dataset)
               for i, m in s.query(Image, ImageDataset).join(ImageDataset, ImageDataset.image_id == Image.id)}
        assert got == {("h1", "old"), ("h2", "new")}
        s.delete(s.query(Image).filter_by(content_hash="h1").one())
    with db.session() as s:
        assert s.query(ImageDataset).count() == 1
    db.dispose()
