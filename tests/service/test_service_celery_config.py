"""Celery app configuration, worker process settings and the `celery worker` arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from slotq.settings import Settings, SettingsError
from worker.celery_app import RUN_JOB_TASK, create_app
from worker.main import worker_argv
from worker.settings import ProcessSettings, load_process_settings


def redis_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:6379/9", queue="gpu-jobs")


def test_celery_accepts_json_only(tmp_path: Path) -> None:
    conf = create_app(redis_settings(tmp_path), ProcessSettings()).conf

    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"
    assert conf.event_serializer == "json"


def test_celery_delivery_settings(tmp_path: Path) -> None:
    process = ProcessSettings(task_soft_time_limit_s=100, task_time_limit_s=120, visibility_timeout_s=600)

    conf = create_app(redis_settings(tmp_path), process).conf

    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_ignore_result is True
    assert conf.result_backend is None
    assert conf.task_soft_time_limit == 100
    assert conf.task_time_limit == 120
    assert conf.broker_transport_options == {"visibility_timeout": 600}
    assert conf.task_default_queue == "gpu-jobs"
    assert conf.broker_url == "redis://127.0.0.1:6379/9"


def test_celery_sends_task_events(tmp_path: Path) -> None:
    conf = create_app(redis_settings(tmp_path), ProcessSettings()).conf

    assert conf.worker_send_task_events is True
    assert conf.task_send_sent_event is True


def test_sqlite_broker_gets_no_transport_options(tmp_path: Path) -> None:
    # kombu's SQLAlchemy transport passes every option to create_engine, which rejects unknown ones.
    conf = create_app(Settings(data_dir=tmp_path), ProcessSettings()).conf

    assert conf.broker_url.startswith("sqla+sqlite:///")
    assert conf.broker_transport_options == {}


def test_run_job_task_registered(tmp_path: Path) -> None:
    import worker.tasks  # noqa: F401  (registers the task on the module-level app)
    from worker.celery_app import app

    assert RUN_JOB_TASK == "slotq.run_job"
    assert RUN_JOB_TASK in app.tasks
    assert app.tasks[RUN_JOB_TASK].ignore_result is True


def test_worker_argv_embedded_broker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLOTQ_DATA_DIR", str(tmp_path))

    argv = worker_argv(pool="solo")

    assert argv[0] == "worker"
    assert "--pool=solo" in argv
    assert "--concurrency=1" in argv
    assert "--queues=slotq" in argv
    assert "--task-events" in argv
    assert {"--without-gossip", "--without-mingle", "--without-heartbeat"} <= set(argv)


def test_worker_argv_redis_broker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLOTQ_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SLOTQ_BROKER_URL", "redis://127.0.0.1:6379/4")
    monkeypatch.setenv("SLOTQ_QUEUE", "jobs-a")
    monkeypatch.setenv("SLOTQ_WORKER_CONCURRENCY", "3")

    argv = worker_argv()

    assert "--concurrency=3" in argv
    assert "--pool=prefork" in argv
    assert "--queues=jobs-a" in argv
    assert "--without-gossip" not in argv


def test_process_settings_defaults() -> None:
    settings = load_process_settings({})

    assert settings == ProcessSettings()
    assert settings.worker_concurrency == 1
    assert settings.task_soft_time_limit_s < settings.task_time_limit_s < settings.visibility_timeout_s


def test_process_settings_from_environment() -> None:
    settings = load_process_settings({
        "SLOTQ_WORKER_CONCURRENCY": "4",
        "SLOTQ_WORKER_POOL": "solo",
        "SLOTQ_TASK_SOFT_TIME_LIMIT_S": "50",
        "SLOTQ_TASK_TIME_LIMIT_S": "60",
        "SLOTQ_VISIBILITY_TIMEOUT_S": "120",
        "SLOTQ_API_WORKERS": "3",
        "SLOTQ_API_TIMEOUT_S": "90",
    })

    assert settings == ProcessSettings(
        worker_concurrency=4, worker_pool="solo", task_soft_time_limit_s=50, task_time_limit_s=60,
        visibility_timeout_s=120, api_workers=3, api_timeout_s=90,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SLOTQ_WORKER_CONCURRENCY": "0"}, "SLOTQ_WORKER_CONCURRENCY=0 is invalid: must be an integer between 1 and 64"),
        ({"SLOTQ_WORKER_CONCURRENCY": "many"}, "SLOTQ_WORKER_CONCURRENCY='many' is invalid"),
        ({"SLOTQ_WORKER_POOL": "gevent"}, "SLOTQ_WORKER_POOL='gevent' is invalid: must be one of prefork, solo, threads"),
        ({"SLOTQ_TASK_TIME_LIMIT_S": "1000"}, "SLOTQ_TASK_TIME_LIMIT_S=1000 is invalid: must be above SLOTQ_TASK_SOFT_TIME_LIMIT_S=1800"),
        ({"SLOTQ_VISIBILITY_TIMEOUT_S": "1860"}, "SLOTQ_VISIBILITY_TIMEOUT_S=1860 is invalid: must be above SLOTQ_TASK_TIME_LIMIT_S=1860"),
        ({"SLOTQ_API_WORKERS": "65"}, "SLOTQ_API_WORKERS=65 is invalid"),
    ],
)
def test_process_settings_errors_name_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_process_settings(env)

    assert message in str(raised.value)


def test_process_settings_list_every_error() -> None:
    with pytest.raises(SettingsError) as raised:
        load_process_settings({"SLOTQ_WORKER_CONCURRENCY": "x", "SLOTQ_API_WORKERS": "y"})

    assert "SLOTQ_WORKER_CONCURRENCY" in str(raised.value)
    assert "SLOTQ_API_WORKERS" in str(raised.value)
