"""Write the CRD YAML files: `python -m modelops.api.crdgen crds/`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from modelops.api.crds import KINDS, crd, file_name

HEADER = "# Generated from operator/modelops/api by `python -m modelops.api.crdgen crds/`. Do not edit.\n"


def render_all() -> dict[str, str]:
    """File name to YAML text, for every kind."""
    return {
        file_name(kind): HEADER + yaml.safe_dump(crd(kind), sort_keys=False, width=120, allow_unicode=True)
        for kind in KINDS
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path, help="folder to write the CRD files into")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in render_all().items():
        (args.out_dir / name).write_text(text, encoding="utf-8")
        print(args.out_dir / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
