"""Celery side of slot-queue: the Celery app, the job task and the per-process model runtime."""
