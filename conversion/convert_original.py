"""Command line: convert an original detectron2 Mask2Former checkpoint into an m2f_hf model folder.

Example:
    python conversion/convert_original.py --checkpoint model_final_f07440.pkl \
        --config configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \
        --output m2f-r50-coco-panoptic

Without --config the architecture is read from the tensor shapes and --dataset supplies the class
names and the zoo's test-time settings.
"""

from __future__ import annotations

import argparse
import sys

from m2f_hf.convert_original import TORCH_DTYPES, convert_checkpoint
from m2f_hf.label_sets import LABEL_SETS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="original .pkl, .pth or .safetensors file")
    parser.add_argument("--config", help="original yaml (its _BASE_ files are resolved next to it)")
    parser.add_argument(
        "--dataset",
        choices=sorted(LABEL_SETS),
        help="class names / thing classes; needed without --config, otherwise read from DATASETS.TRAIN",
    )
    parser.add_argument("--output", required=True, help="folder to write")
    parser.add_argument("--push-to-hub", metavar="REPO", help="also upload the folder to this Hub repository")
    parser.add_argument(
        "--dtype", choices=sorted(TORCH_DTYPES), default="float32", help="dtype of the saved weights"
    )
    parser.add_argument(
        "--no-strict", action="store_true", help="list unused/missing keys instead of failing on them"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = convert_checkpoint(
            args.checkpoint,
            args.output,
            config_path=args.config,
            dataset=args.dataset,
            dtype=args.dtype,
            push_to_hub=args.push_to_hub,
            strict=not args.no_strict,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
