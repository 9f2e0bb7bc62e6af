"""What the recipe benchmarks share: their command line's common start."""
from __future__ import annotations

import argparse
from pathlib import Path


def recipe_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by ``doc``'s first line, with ``--data`` (prepared shards) and ``--recipe``: the
    arguments every benchmark of one recipe on prepared LFW shards takes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--recipe", default="lfw_unet")
    return parser
