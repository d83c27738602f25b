"""events: the numbered event table behind GET /events

Revision ID: 0006
Revises: 0005

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'events',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.Column('type', sa.String(), nullable=False),
        sa.Column('user', sa.String(), nullable=True),
        sa.Column('job_id', sa.String(), nullable=True),
        sa.Column('attempt_id', sa.String(), nullable=True),
        sa.Column('host', sa.String(), nullable=True),
        sa.Column('state', sa.String(), nullable=True),
        sa.Column('reason', sa.String(), nullable=True),
        sa.Column('message', sa.Text(), nullable=True),
        sa.Column('data_json', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_events_at'), ['at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_events_at'))
    op.drop_table('events')
