"""``python -m slotq.evaluation ARGS``: the same as ``slotq eval ARGS``."""

import argparse
import sys

from slotq.evaluation.command import add_eval_command


def main(argv: list[str] | None = None) -> int:
    from slotq.cli import CliError

    parser = argparse.ArgumentParser(prog="python -m slotq.evaluation")
    commands = parser.add_subparsers(dest="command")
    add_eval_command(commands)
    args = parser.parse_args(["eval", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.handler(args)
    except CliError as error:
        print(f"slotq eval: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("slotq eval: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
