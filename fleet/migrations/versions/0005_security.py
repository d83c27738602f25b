"""security: token expiry, uploads, submit keys

Revision ID: 0005
Revises: 0004

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('submit_keys',
    sa.Column('user', sa.String(), nullable=False),
    sa.Column('key', sa.String(), nullable=False),
    sa.Column('job_ids', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('user', 'key')
    )
    with op.batch_alter_table('submit_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_submit_keys_created_at'), ['created_at'], unique=False)

    op.create_table('uploads',
    sa.Column('user', sa.String(), nullable=False),
    sa.Column('sha256', sa.String(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('user', 'sha256')
    )
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_uploads_sha256'), ['sha256'], unique=False)

    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('revoked_at', sa.Float(), nullable=True))




def downgrade() -> None:

    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.drop_column('revoked_at')
        batch_op.drop_column('expires_at')

    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_uploads_sha256'))

    op.drop_table('uploads')
    with op.batch_alter_table('submit_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_submit_keys_created_at'))

    op.drop_table('submit_keys')

