"""Convert a transformers-format Mask2Former checkpoint (`facebook/mask2former-*` and fine-tunes) to m2f_hf.

    python conversion/convert_transformers.py --model DIR_OR_HUB_ID --output OUT [--dataset coco_panoptic]
        [--dtype float32] [--push-to-hub USER/REPO]

The weights are renamed (same computation); the transformers image-processor settings are replaced by the
original test-time preprocessing of the checkpoint's dataset (from --dataset, the checkpoint's name, or its
label count and class names).
"""

from __future__ import annotations

import argparse
import sys

from m2f_hf.conversion_label_sets import LABEL_SETS
from m2f_hf.conversion_settings import TORCH_DTYPES
from m2f_hf.ecosystem_convert import convert_transformers_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", required=True, help="transformers Mask2Former folder (config.json + weights) or Hub id"
    )
    parser.add_argument("--output", required=True, help="folder to write the m2f_hf model to")
    parser.add_argument(
        "--dataset",
        default=None,
        help=f"dataset the checkpoint was trained on, one of {sorted(LABEL_SETS)} or a detectron2 "
        "dataset name (default: inferred)",
    )
    parser.add_argument("--dtype", default="float32", choices=sorted(TORCH_DTYPES))
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="also upload to this Hub repo")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        imported = convert_transformers_checkpoint(
            args.model, args.output, dataset=args.dataset, dtype=args.dtype, push_to_hub=args.push_to_hub
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    settings = imported.settings
    print(
        f"wrote {args.output} (dataset: {settings.dataset or 'unknown'}, "
        f"{settings.config.num_labels} classes)"
    )
    for note in settings.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
