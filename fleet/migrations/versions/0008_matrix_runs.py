"""matrix runs, their verdicts and schedules; results: comparison key columns

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('matrix_runs',
    sa.Column('id', sa.String(), nullable=False),
    sa.Column('name', sa.String(), nullable=False),
    sa.Column('user', sa.String(), nullable=False),
    sa.Column('spec_json', sa.Text(), nullable=False),
    sa.Column('points_json', sa.Text(), nullable=False),
    sa.Column('trigger', sa.String(), nullable=False),
    sa.Column('state', sa.String(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('ended_at', sa.Float(), nullable=True),
    sa.Column('deadline', sa.Float(), nullable=True),
    sa.Column('report_json', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('matrix_schedules',
    sa.Column('user', sa.String(), nullable=False),
    sa.Column('name', sa.String(), nullable=False),
    sa.Column('cron', sa.String(), nullable=False),
    sa.Column('spec_json', sa.Text(), nullable=False),
    sa.Column('uploads_json', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('last_fired', sa.Float(), nullable=False),
    sa.Column('last_run', sa.String(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('user', 'name')
    )
    op.create_table('matrix_verdicts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run', sa.String(), nullable=False),
    sa.Column('user', sa.String(), nullable=False),
    sa.Column('name', sa.String(), nullable=False),
    sa.Column('point', sa.Integer(), nullable=False),
    sa.Column('series', sa.String(), nullable=False),
    sa.Column('metric', sa.String(), nullable=False),
    sa.Column('status', sa.String(), nullable=False),
    sa.Column('kind', sa.String(), nullable=True),
    sa.Column('first_run', sa.String(), nullable=True),
    sa.Column('change_pct', sa.Float(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('data_json', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('matrix_verdicts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_matrix_verdicts_run'), ['run'], unique=False)
        batch_op.create_index('ix_matrix_verdicts_series', ['user', 'name', 'series', 'metric', 'id'], unique=False)
        batch_op.create_index('ix_matrix_verdicts_user_status', ['user', 'status', 'id'], unique=False)

    with op.batch_alter_table('matrix_runs', schema=None) as batch_op:
        batch_op.create_index('ix_matrix_runs_name_id', ['name', 'id'], unique=False)
        batch_op.create_index('ix_matrix_runs_user_id', ['user', 'id'], unique=False)

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('matrix_run', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('matrix_point', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('matrix_repeat', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_matrix_run'), ['matrix_run'], unique=False)

    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.add_column(sa.Column('status', sa.String(), server_default='ok', nullable=False))
        batch_op.add_column(sa.Column('matrix_run', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('comparison_key', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('model_sha256', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('accelerator', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('precision', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('shapes', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('batch', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('tool', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('tool_major', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('driver', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('jetpack', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('hailort', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('power_mode', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('clocks_locked', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('image_digest', sa.String(), nullable=True))
        batch_op.create_index('ix_results_key_id', ['comparison_key', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_results_matrix_run'), ['matrix_run'], unique=False)

    # Results stored before: status and key from their records. Their key was a hash of fewer
    # fields (full tool version, device name), so they form series of their own: a key change
    # starts a new series and is never compared across.
    results = sa.table('results', sa.column('id', sa.Integer), sa.column('record_json', sa.Text),
                       sa.column('status', sa.String), sa.column('comparison_key', sa.String))
    conn = op.get_bind()
    for rid, text in conn.execute(sa.select(results.c.id, results.c.record_json)).all():
        try:
            record = json.loads(text)
        except ValueError:
            continue
        conn.execute(results.update().where(results.c.id == rid).values(
            status=record.get('status') or 'ok', comparison_key=record.get('comparison_key')))


def downgrade() -> None:
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_results_matrix_run'))
        batch_op.drop_index('ix_results_key_id')
        batch_op.drop_column('image_digest')
        batch_op.drop_column('clocks_locked')
        batch_op.drop_column('power_mode')
        batch_op.drop_column('hailort')
        batch_op.drop_column('jetpack')
        batch_op.drop_column('driver')
        batch_op.drop_column('tool_major')
        batch_op.drop_column('tool')
        batch_op.drop_column('batch')
        batch_op.drop_column('shapes')
        batch_op.drop_column('precision')
        batch_op.drop_column('accelerator')
        batch_op.drop_column('model_sha256')
        batch_op.drop_column('comparison_key')
        batch_op.drop_column('matrix_run')
        batch_op.drop_column('status')

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_matrix_run'))
        batch_op.drop_column('matrix_repeat')
        batch_op.drop_column('matrix_point')
        batch_op.drop_column('matrix_run')

    with op.batch_alter_table('matrix_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_matrix_runs_user_id')
        batch_op.drop_index('ix_matrix_runs_name_id')

    op.drop_table('matrix_runs')
    with op.batch_alter_table('matrix_verdicts', schema=None) as batch_op:
        batch_op.drop_index('ix_matrix_verdicts_user_status')
        batch_op.drop_index('ix_matrix_verdicts_series')
        batch_op.drop_index(batch_op.f('ix_matrix_verdicts_run'))
    op.drop_table('matrix_verdicts')
    op.drop_table('matrix_schedules')
