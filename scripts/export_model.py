"""Write a slim, ship-ready copy of a checkpoint (no optimizer or RNG state), e.g. the bundled model:

    python scripts/export_model.py runs/<run>/best captioner/pretrained/model.safetensors
"""
import argparse

from captioner.checkpoint import export_model


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("out", help="where to write the slim .safetensors file")
    return p


def main(args: argparse.Namespace) -> None:
    path = export_model(args.checkpoint, args.out)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
