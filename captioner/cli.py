"""The `captioner` command: one subcommand per job, each backed by a module's get_args_parser() + main(args)."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> module that owns it (imported lazily so `captioner --help` stays fast)
COMMANDS = {
    "train": ("captioner.train", "train a model (cross-entropy)"),
    "caption": ("captioner.inference", "caption images or folders"),
    "extract-features": ("captioner.extract", "build the feature cache for a config's splits"),
    "evaluate": ("captioner.evaluate", "caption a split and score it (BLEU, METEOR, ROUGE-L, CIDEr-D)"),
    "score": ("captioner.evaluate_score", "score a COCO results file against a COCO caption file"),
    "scst": ("captioner.scst", "self-critical fine-tuning on CIDEr-D"),
    "demo": ("captioner.demo", "serve the Gradio demo"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="captioner", description="Image captioning toolkit.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    available = {}
    for name, (module, help_text) in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name == module:  # command not shipped in this build
                continue
            raise
        sub.add_parser(name, parents=[mod.get_args_parser(add_help=False)], help=help_text, description=help_text)
        available[name] = mod
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .errors import USER_ERRORS

    try:
        result = available[args.command].main(args)
    except USER_ERRORS as err:
        print(f"captioner {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
