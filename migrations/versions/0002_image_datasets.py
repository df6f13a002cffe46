"""image_datasets: an image may belong to several datasets

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 22:00:00

Every existing image joins the dataset its ``images.dataset`` names (that column stays: the first one).
Vector payloads written before this keep a string ``dataset``; filters match it as before, and
``samsearch doctor --repair`` rewrites it as the list of the image's datasets.
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('image_datasets',
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('dataset', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_image_datasets_image_id_images'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('image_id', 'dataset', name=op.f('pk_image_datasets'))
    )
    with op.batch_alter_table('image_datasets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_image_datasets_dataset'), ['dataset'], unique=False)
    op.execute("INSERT INTO image_datasets (image_id, dataset, created_at) "
               "SELECT id, dataset, created_at FROM images")


def downgrade() -> None:
    with op.batch_alter_table('image_datasets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_image_datasets_dataset'))
    op.drop_table('image_datasets')
