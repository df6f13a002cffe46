"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-21 05:04:03.720082
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('banks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('model_key', sa.String(length=64), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_banks')),
    sa.UniqueConstraint('name', name=op.f('uq_banks_name'))
    )
    op.create_table('cluster_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('algorithm', sa.String(length=32), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('stats', sa.JSON(), nullable=False),
    sa.Column('is_current', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cluster_runs')),
    sa.UniqueConstraint('name', name=op.f('uq_cluster_runs_name'))
    )
    op.create_table('meta',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_meta'))
    )
    op.create_table('runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs'))
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_runs_kind'), ['kind'], unique=False)

    op.create_table('bank_classes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('bank_id', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=200), nullable=False),
    sa.Column('n_instances', sa.Integer(), nullable=False),
    sa.Column('n_centroids', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['bank_id'], ['banks.id'], name=op.f('fk_bank_classes_bank_id_banks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bank_classes')),
    sa.UniqueConstraint('bank_id', 'label', name=op.f('uq_bank_classes_bank_id_label'))
    )
    op.create_table('bank_vectors',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('bank_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('label', sa.String(length=200), nullable=False),
    sa.Column('vector', sa.LargeBinary(), nullable=False),
    sa.Column('point_id', sa.String(length=36), nullable=True),
    sa.Column('source', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['bank_id'], ['banks.id'], name=op.f('fk_bank_vectors_bank_id_banks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bank_vectors'))
    )
    with op.batch_alter_table('bank_vectors', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bank_vectors_bank_id'), ['bank_id'], unique=False)

    op.create_table('cluster_names',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('cluster', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['cluster_runs.id'], name=op.f('fk_cluster_names_run_id_cluster_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'cluster', name=op.f('pk_cluster_names'))
    )
    op.create_table('images',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('file_size', sa.BigInteger(), nullable=True),
    sa.Column('width', sa.Integer(), nullable=True),
    sa.Column('height', sa.Integer(), nullable=True),
    sa.Column('dataset', sa.String(length=200), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('lease_owner', sa.String(length=200), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_images_run_id_runs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_images')),
    sa.UniqueConstraint('content_hash', name=op.f('uq_images_content_hash'))
    )
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_images_dataset'), ['dataset'], unique=False)
        batch_op.create_index(batch_op.f('ix_images_status'), ['status'], unique=False)

    op.create_table('ingestions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('settings_hash', sa.String(length=32), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('n_segments', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_ingestions_image_id_images'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_ingestions_run_id_runs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ingestions')),
    sa.UniqueConstraint('image_id', 'settings_hash', name=op.f('uq_ingestions_image_id_settings_hash'))
    )
    op.create_table('segments',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('settings_hash', sa.String(length=32), nullable=False),
    sa.Column('segment_index', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('model_key', sa.String(length=64), nullable=False),
    sa.Column('rle_counts', sa.Text(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('bbox_x', sa.Float(), nullable=False),
    sa.Column('bbox_y', sa.Float(), nullable=False),
    sa.Column('bbox_w', sa.Float(), nullable=False),
    sa.Column('bbox_h', sa.Float(), nullable=False),
    sa.Column('area', sa.Integer(), nullable=False),
    sa.Column('predicted_iou', sa.Float(), nullable=True),
    sa.Column('stability_score', sa.Float(), nullable=True),
    sa.Column('prompt', sa.JSON(), nullable=True),
    sa.Column('annotation_id', sa.BigInteger(), nullable=True),
    sa.Column('annotation_category', sa.String(length=200), nullable=True),
    sa.Column('label', sa.String(length=200), nullable=True),
    sa.Column('label_score', sa.Float(), nullable=True),
    sa.Column('label_source', sa.String(length=16), nullable=True),
    sa.Column('label_bank', sa.String(length=200), nullable=True),
    sa.Column('cluster', sa.Integer(), nullable=True),
    sa.Column('cluster_run', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_segments_image_id_images'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_segments')),
    sa.UniqueConstraint('image_id', 'settings_hash', 'segment_index', name=op.f('uq_segments_image_id_settings_hash_segment_index'))
    )
    with op.batch_alter_table('segments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_segments_image_id'), ['image_id'], unique=False)
        batch_op.create_index('ix_segments_label_label_source', ['label', 'label_source'], unique=False)
        batch_op.create_index(batch_op.f('ix_segments_settings_hash'), ['settings_hash'], unique=False)

    op.create_table('segment_clusters',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('segment_id', sa.String(length=36), nullable=False),
    sa.Column('cluster', sa.Integer(), nullable=False),
    sa.Column('distance', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['cluster_runs.id'], name=op.f('fk_segment_clusters_run_id_cluster_runs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['segment_id'], ['segments.id'], name=op.f('fk_segment_clusters_segment_id_segments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'segment_id', name=op.f('pk_segment_clusters'))
    )
    with op.batch_alter_table('segment_clusters', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_segment_clusters_cluster'), ['cluster'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('segment_clusters', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_segment_clusters_cluster'))

    op.drop_table('segment_clusters')
    with op.batch_alter_table('segments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_segments_settings_hash'))
        batch_op.drop_index('ix_segments_label_label_source')
        batch_op.drop_index(batch_op.f('ix_segments_image_id'))

    op.drop_table('segments')
    op.drop_table('ingestions')
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_images_status'))
        batch_op.drop_index(batch_op.f('ix_images_dataset'))

    op.drop_table('images')
    op.drop_table('cluster_names')
    with op.batch_alter_table('bank_vectors', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_bank_vectors_bank_id'))

    op.drop_table('bank_vectors')
    op.drop_table('bank_classes')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_runs_kind'))

    op.drop_table('runs')
    op.drop_table('meta')
    op.drop_table('cluster_runs')
    op.drop_table('banks')
