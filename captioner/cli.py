"""The `captioner` command: one subcommand per job, each backed by a module's get_args_parser() + main(args)."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> (module that owns it, help). Only the chosen module is imported, so `captioner caption` does not
# pay for gradio and `captioner --help` is instant.
COMMANDS = {
    "train": ("captioner.train", "train a model (cross-entropy)"),
    "caption": ("captioner.inference", "caption images or folders"),
    "extract-features": ("captioner.extract", "build the feature cache for a config's splits"),
    "evaluate": ("captioner.evaluate", "caption a split and score it (BLEU, METEOR, ROUGE-L, CIDEr-D)"),
    "score": ("captioner.evaluate_score", "score a COCO results file against a COCO caption file"),
    "scst": ("captioner.scst", "self-critical fine-tuning on CIDEr-D"),
    "demo": ("captioner.demo", "serve the Gradio demo"),
}


def _load(name: str):
    """The command's module, or None where this build does not ship it."""
    module = COMMANDS[name][0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name == module:
            return None
        raise


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="captioner", description="Image captioning toolkit.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    mods = {}
    for name, (_, help_text) in COMMANDS.items():
        if name == chosen:
            mod = _load(name)
            if mod is None:
                continue
            mods[name] = mod
            sub.add_parser(name, parents=[mod.get_args_parser(add_help=False)], help=help_text, description=help_text)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if args.command not in mods:
        parser.error(f"command {args.command!r} is not available in this installation")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .errors import USER_ERRORS

    try:
        result = mods[args.command].main(args)
    except USER_ERRORS as err:
        print(f"captioner {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
