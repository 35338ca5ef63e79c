"""Entry point of the `rissole` command."""

from __future__ import annotations

import argparse
import importlib
import sys

from rissole_runtime.errors import run_command

# Each module defines register(subparsers) and sets `func` on the parsers it adds.
COMMAND_MODULES = (
    "rissole.cli.vqgan_cmd",
    "rissole.cli.encode_cmd",
    "rissole.cli.eval_cmd",
    "rissole.cli.db_cmd",
    "rissole.cli.embed_cmd",
    "rissole.cli.rissole_cmd",
    "rissole.cli.edit_cmd",
    "rissole.cli.checkpoint_cmd",
    "rissole.cli.demo_cmd",
    "rissole.cli.fit_cmd",
    "rissole.cli.data_cmd",
    "rissole.cli.joint_cmd",
    "rissole.cli.budget_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rissole",
        description="Compact retrieval-guided image generation: first stage, retrieval database, generators, evaluation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> int | None:
        ok = False
        try:
            result = args.func(args)
            ok = True
            return result
        finally:
            if "torch.distributed" in sys.modules:  # a command that never imported torch joined no group
                from rissole.distributed import finish

                finish(ok)

    return run_command("rissole", body, "files already on disk are complete (written atomically).")


if __name__ == "__main__":
    sys.exit(main())
