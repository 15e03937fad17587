"""Command line: convert an original detectron2 Mask2Former checkpoint into an m2f_hf model folder.

Example:
    python conversion/convert_original.py --checkpoint model_final_f07440.pkl \
        --config configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \
        --output m2f-r50-coco-panoptic

Without --config the architecture is read from the tensor shapes and --dataset supplies the class
names and the zoo's test-time settings. `m2f-hf convert original --help` lists the options.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from m2f_hf import ecosystem_cli as cli


def main(argv: Sequence[str] | None = None) -> int:
    """`m2f-hf convert original ARGS`: the same options, conversion and error handling as the CLI."""
    return cli.main(["convert", "original", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
