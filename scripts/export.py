#!/usr/bin/env python
"""Export a trained checkpoint to ONNX and check it with onnxruntime on the test split.

    python scripts/export.py outputs/train/runs/<date>_<time>             # its best checkpoint
    python scripts/export.py <run dir> --checkpoint last --out model.onnx
    python scripts/export.py path/to/some.ckpt --json report.json

The model and data are rebuilt from the checkpoint's saved config (as eval.py does). Every test batch
runs through PyTorch and onnxruntime; the script prints the largest difference (relative to
max(1, |value|)) and the test loss from each, and exits 1 when the difference exceeds --tolerance.
Each PeepholeLSTM layer becomes ONNX's LSTM operator where it can (docs/export.md). Needs the [export]
extra: pip install -e ".[export]".
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="a run directory made by train.py, or a .ckpt file")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="which checkpoint of a run directory (default: best, the lowest val/loss)")
    parser.add_argument("--out", default=None, help="the .onnx file to write (default: next to the checkpoint)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted difference (default 1e-4)")
    parser.add_argument("--json", default=None, help="also write the report as JSON to this path ('-' = stdout)")
    args = parser.parse_args(argv)
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        print(f"export.py: {e.name} is not installed; install the export extra: pip install -e \".[export]\"",
              file=sys.stderr)
        return 2
    from peephole_lstm.training.export_onnx import ExportCheckError, export_checkpoint
    from peephole_lstm.training.errors import ConfigError

    try:
        report = export_checkpoint(args.path, args.out, args.checkpoint, args.tolerance)
    except (ConfigError, ExportCheckError) as e:
        print(f"export.py: {e}", file=sys.stderr)
        return 1
    if args.json != "-":
        print(f"checkpoint      {report['checkpoint']}")
        print(f"ONNX model      {report['onnx']}  (recurrent nodes: {report['onnx_ops'] or 'none'})")
        print(f"test split      {report['test_samples']} samples in {report['test_batches']} batches")
        print(f"max difference  {report['max_rel_diff']:.3g}  (tolerance {report['tolerance']:g})")
        print(f"test loss       PyTorch {report['test_loss_torch']:.6g}, onnxruntime {report['test_loss_onnx']:.6g}")
    if args.json:
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
