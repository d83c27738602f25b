"""jobs: (user, state, id) and (pool, state, id) indexes for listings filtered twice

Revision ID: 0009
Revises: 0008

"""

from __future__ import annotations

from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_user_state_id', ['user', 'state', 'id'], unique=False)
        batch_op.create_index('ix_jobs_pool_state_id', ['pool', 'state', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_pool_state_id')
        batch_op.drop_index('ix_jobs_user_state_id')
