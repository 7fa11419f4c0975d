"""Run the captioner demo without the console script: ``python demo/app.py [--port P] [--checkpoint C]``.

The same app and flags as ``captioner demo`` (captioner/demo.py); errors print as one line, like the CLI.
"""
import sys

from captioner import cli

if __name__ == "__main__":
    sys.exit(cli.main(["demo", *sys.argv[1:]]))
