"""The ``slotq`` command: run the engine once, manage the database, start the service processes.

Subcommands:
    generate    answer one prompt with SLOT, directly on the engine (no service needed)
    db upgrade  apply the database migrations
    api         serve the HTTP API under gunicorn
    worker      run a Celery worker that executes jobs
    serve       run the embedded single-machine stack (API and one worker)
    demo        submit real prompts to the embedded stack (or a running API) and print a table
    keys        create, list and revoke API keys
    purge       delete prompts, outputs and deltas of old jobs, keeping their metrics
    batch       submit a batch file, follow it and download its results
    eval        compare SLOT settings on a data set
    flower      run Flower, the Celery web monitor, with HTTP basic authentication
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from sqlalchemy.exc import DBAPIError

from slotq.logging import configure_logging
from slotq.settings import SettingsError, load_settings

logger = logging.getLogger(__name__)

#: Exit status for invalid arguments, invalid settings and requests the engine rejects.
EXIT_USAGE = 2
#: Exit status for failures that are not the caller's input.
EXIT_FAILURE = 1


class CliError(Exception):
    """An error that ends the command with a one-line message and no traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE):
        super().__init__(message)
        self.exit_code = exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``slotq`` command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    try:
        return args.handler(args) or 0
    except CliError as error:
        print(f"slotq {args.command}: {error}", file=sys.stderr)
        return error.exit_code
    except SettingsError as error:
        print(f"slotq {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except DBAPIError as error:
        # A missing table means the database was never migrated; any other database error is
        # reported in one line too, with the driver's own message.
        reason = str(error.orig).splitlines()[0] if error.orig is not None else type(error).__name__
        print(
            f"slotq {args.command}: database error: {reason}. Check SLOTQ_DATABASE_URL and that the "
            "database is migrated: run 'slotq db upgrade' (or start 'slotq serve' once) first",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"slotq {args.command}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="slotq",
        description="slot-queue: an asynchronous job service that runs SLOT on causal LMs.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    _add_generate(commands)
    _add_db(commands)
    _add_api(commands)
    _add_worker(commands)
    _add_sweeper(commands)
    _add_serve(commands)
    _add_demo(commands)
    _add_feature_commands(commands)
    return parser


def _add_feature_commands(commands) -> None:
    """Register the subcommands that live next to their features: keys, purge, batch, eval and flower."""
    from slotq.batch_client import add_batch_commands
    from slotq.evaluation.command import add_eval_command
    from slotq.flower import add_flower_command
    from slotq.keys import add_keys_command
    from slotq.purge import add_purge_command

    add_keys_command(commands)
    add_purge_command(commands)
    add_batch_commands(commands)
    add_eval_command(commands)
    add_flower_command(commands)


# --- generate -----------------------------------------------------------------------------------


def _add_generate(commands) -> None:
    parser = commands.add_parser(
        "generate",
        help="answer one prompt with SLOT on the engine directly",
        description="Answer one prompt with SLOT, directly on the engine. The prompt goes "
        "through the model's chat template as one user message unless --raw is given.",
    )
    parser.add_argument("prompt", metavar="PROMPT", help="prompt text; '-' reads it from standard input")
    parser.add_argument("--model", metavar="PATH", help="local Hugging Face model folder (default: SLOTQ_MODEL, else the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="device (default: SLOTQ_DEVICE, else auto: CUDA when present)")
    parser.add_argument("--steps", type=int, default=5, help="AdamW steps on delta; 0 is plain decoding (default: 5)")
    parser.add_argument("--lr", type=float, default=0.1, help="AdamW learning rate of delta (default: 0.1)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate at most (default: 64)")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 decodes greedily (default: 0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, in (0, 1] (default: 1)")
    parser.add_argument("--seed", type=int, help="sampler seed, for reproducible sampled output")
    parser.add_argument("--stop", action="append", default=None, metavar="TEXT", help="stop string; repeat for several")
    parser.add_argument("--raw", action="store_true", help="tokenize the prompt as it is, without the chat template")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the text and every measurement")
    parser.set_defaults(handler=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from slot_core import ModelLoadError, PromptTooLongError, SlotConfig, SlotConfigError, SlotError

    settings = load_settings()
    configure_logging("WARNING" if args.json else settings.log_level)
    prompt_text = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt_text.strip():
        raise CliError("PROMPT is empty: give a prompt with at least one non-whitespace character", EXIT_USAGE)
    if args.max_new_tokens < 1:
        raise CliError(f"invalid --max-new-tokens={args.max_new_tokens}: must be an integer >= 1", EXIT_USAGE)

    try:
        config = SlotConfig(steps=args.steps, lr=args.lr)
    except SlotConfigError as error:
        raise CliError(f"invalid --{error.field.replace('_', '-')}={error.value!r}: must be {error.allowed}", EXIT_USAGE) from error

    prompt = prompt_text if args.raw else [{"role": "user", "content": prompt_text}]
    try:
        result = _generate_once(args, settings, prompt, config)
    except (SlotConfigError, PromptTooLongError, ModelLoadError) as error:
        raise CliError(str(error), EXIT_USAGE) from error
    except SlotError as error:
        raise CliError(f"{type(error).__name__}: {error}") from error

    _print_generation(result, args.json)
    return 0


def _generate_once(args, settings, prompt, config):
    from slot_core import generate, load_model

    device = args.device or settings.device
    model_path = args.model or settings.model
    model, tokenizer = load_model(model_path, device=None if device == "auto" else device)
    results = generate(
        model,
        tokenizer,
        [prompt],
        config=config,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
    )
    return results[0]


def _print_generation(result, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return

    print(result.text)
    timings = result.timings_ms
    print(
        f"[{result.prompt_tokens} prompt tokens, {result.output_tokens} output tokens, "
        f"finish {result.finish_reason}, delta norm {result.delta_norm:.4g}, "
        f"prefill {timings['prefill']:.0f} ms, optimize {timings['optimize']:.0f} ms, "
        f"decode {timings['decode']:.0f} ms, total {timings['total']:.0f} ms]",
        file=sys.stderr,
    )


# --- db -----------------------------------------------------------------------------------------


def _add_db(commands) -> None:
    parser = commands.add_parser("db", help="manage the job database")
    actions = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    upgrade = actions.add_parser("upgrade", help="apply every pending migration to SLOTQ_DATABASE_URL")
    upgrade.set_defaults(handler=_run_db_upgrade)


def _run_db_upgrade(args: argparse.Namespace) -> int:
    from slotq.store.migrate import upgrade

    settings = load_settings()
    configure_logging(settings.log_level)
    logger.info("applying migrations to %s", _redact_url(settings.database_url))
    upgrade(settings.database_url)
    logger.info("database is at the latest migration")
    return 0


# --- api ----------------------------------------------------------------------------------------


def _add_api(commands) -> None:
    parser = commands.add_parser("api", help="serve the HTTP API under gunicorn")
    parser.add_argument("--host", help="address to bind (default: SLOTQ_API_HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port to bind (default: SLOTQ_API_PORT, else 8000)")
    parser.add_argument("--workers", type=int, help="gunicorn worker processes (default: SLOTQ_API_WORKERS, else 2)")
    parser.set_defaults(handler=_run_api)


def _run_api(args: argparse.Namespace) -> int:
    from gunicorn.app.base import BaseApplication

    from slotq.metrics import prepare_multiprocess_dir
    from worker.settings import load_process_settings

    settings = load_settings()
    process = load_process_settings()
    configure_logging(settings.log_level)

    host = args.host or settings.api_host
    port = settings.api_port if args.port is None else args.port
    workers = args.workers or process.api_workers
    if not 1 <= port <= 65535:
        raise CliError(f"invalid --port={port}: must be an integer between 1 and 65535", EXIT_USAGE)
    if not 1 <= workers <= 64:
        raise CliError(f"invalid --workers={workers}: must be an integer between 1 and 64", EXIT_USAGE)

    class ApiServer(BaseApplication):
        """gunicorn running ``api.app.create_app()``, configured here instead of a config file."""

        def load_config(self) -> None:
            options = {
                "bind": f"{host}:{port}",
                "workers": workers,
                "timeout": process.api_timeout_s,
                "graceful_timeout": 10,
                "accesslog": "-",
                "errorlog": "-",
                "loglevel": settings.log_level.lower(),
                "proc_name": "slotq-api",
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):
            from api.app import create_app

            return create_app()

    # Before gunicorn forks and any worker imports prometheus_client (see slotq.metrics).
    metrics_dir = prepare_multiprocess_dir("api")
    logger.info("starting API on http://%s:%d with %d gunicorn workers", host, port, workers)
    try:
        ApiServer().run()
    finally:
        metrics_dir.remove()
    return 0


# --- worker -------------------------------------------------------------------------------------


def _add_worker(commands) -> None:
    parser = commands.add_parser(
        "worker",
        help="run a Celery worker that executes jobs",
        description="Run a Celery worker. It loads the model (SLOTQ_MODEL, else the bundled one) "
        "once per pool process, on CUDA when present unless SLOTQ_DEVICE says otherwise.",
    )
    parser.add_argument("--concurrency", type=int, help="jobs run at once (default: SLOTQ_WORKER_CONCURRENCY, else 1)")
    parser.add_argument("--pool", choices=("prefork", "solo", "threads"), help="Celery execution pool (default: SLOTQ_WORKER_POOL, else prefork)")
    parser.add_argument("--hostname", help="Celery node name (default: slotq-<pid>@<host>)")
    parser.set_defaults(handler=_run_worker)


def _run_worker(args: argparse.Namespace) -> int:
    from worker.main import run_worker

    return run_worker(concurrency=args.concurrency, pool=args.pool, hostname=args.hostname)


# --- sweeper ------------------------------------------------------------------------------------


def _add_sweeper(commands) -> None:
    parser = commands.add_parser(
        "sweeper",
        help="queue again jobs whose worker died and send jobs whose message was never sent or was lost",
        description="Run the sweeper until SIGINT or SIGTERM: every SLOTQ_SWEEP_INTERVAL_S it queues "
        "again running jobs whose lease (SLOTQ_LEASE_S) passed, fails those past SLOTQ_MAX_ATTEMPTS, "
        "and sends queued jobs that have no message in the broker. Several sweepers may run at once.",
    )
    parser.set_defaults(handler=_run_sweeper)


def _run_sweeper(args: argparse.Namespace) -> int:
    from slotq.logging import configure_logging
    from slotq.settings import load_settings
    from slotq.sweeper import run_sweeper_process

    settings = load_settings()
    configure_logging(settings.log_level)
    return run_sweeper_process(settings)


# --- serve --------------------------------------------------------------------------------------


def _add_serve(commands) -> None:
    parser = commands.add_parser(
        "serve",
        help="run the API, one worker and the sweeper on this machine",
        description="Run the API, one worker and the sweeper on this machine. Without SLOTQ_DATABASE_URL and "
        "SLOTQ_BROKER_URL both use SQLite files in SLOTQ_DATA_DIR, so no server is needed. "
        "Stops everything on SIGINT or SIGTERM.",
    )
    parser.add_argument("--host", help="address to bind (default: SLOTQ_API_HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port to bind (default: SLOTQ_API_PORT, else 8000)")
    parser.add_argument("--data-dir", help="folder for the SQLite files (default: SLOTQ_DATA_DIR)")
    parser.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from slotq.embedded import serve

    return serve(host=args.host, port=args.port, data_dir=args.data_dir)


# --- demo ---------------------------------------------------------------------------------------


def _add_demo(commands) -> None:
    from slotq.demo import add_arguments

    parser = commands.add_parser(
        "demo",
        help="submit real prompts and print a table of results",
        description="Start the embedded stack on a free port (unless --url names a running API), "
        "submit two English prompts, one Japanese prompt and three IFEval prompts, poll them to "
        "completion, print a table and stop the stack. Defaults: --steps 5 --lr 0.01.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from slotq.demo import run_demo

    return run_demo(args)


def _redact_url(url: str) -> str:
    """Return ``url`` with its password hidden, for logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable url>"


if __name__ == "__main__":
    sys.exit(main())
