"""space_embeddings: per image, which extra embedding spaces hold its segments' vectors (samsearch embed)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 22:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('space_embeddings',
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('space', sa.String(length=64), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('n_segments', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_space_embeddings_image_id_images'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_space_embeddings_run_id_runs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('image_id', 'space', name=op.f('pk_space_embeddings'))
    )
    op.create_index(op.f('ix_space_embeddings_space'), 'space_embeddings', ['space'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_space_embeddings_space'), table_name='space_embeddings')
    op.drop_table('space_embeddings')
