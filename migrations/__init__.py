"""Alembic migrations of the job store; `slotq.store.migrate` runs them."""
