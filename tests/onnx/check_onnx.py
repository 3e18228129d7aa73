#!/usr/bin/env python3
"""Checks an ONNX file written by `pedconv export` in a real runtime.

    python3 tests/onnx/check_onnx.py MODEL.onnx INPUT.npy EXPECTED.npy [INPUT.npy EXPECTED.npy ...]

Runs onnx.checker.check_model (full check, with shape inference), then onnxruntime on the CPU
for each INPUT (float32 images [N, 3, H, W]) and compares the logits with EXPECTED (the
logits [N, classes] that burn computed for the same input): the largest absolute difference
must be at most `--tolerance` (default 1e-4) times the largest |expected logit|. Prints the
error of each pair. Exit code 0 when every pair matches, 1 on a mismatch, 2 on a usage error.
The Rust test `crates/pedconv-train/tests/export.rs` writes the files and runs this script.
"""

import argparse
import sys

import numpy as np
import onnx
import onnxruntime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="the .onnx file")
    parser.add_argument("pairs", nargs="+", help="INPUT.npy EXPECTED.npy, one or more pairs")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="allowed error relative to the largest |expected logit| (default 1e-4)",
    )
    args = parser.parse_args()
    if len(args.pairs) % 2:
        parser.error("inputs and expected logits come in pairs")

    onnx.checker.check_model(onnx.load(args.model), full_check=True)
    session = onnxruntime.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    ok = True
    for input_path, expected_path in zip(args.pairs[0::2], args.pairs[1::2]):
        images = np.load(input_path).astype(np.float32)
        expected = np.load(expected_path)
        (logits,) = session.run(None, {input_name: images})
        if logits.shape != expected.shape:
            print(f"{input_path}: logits of shape {logits.shape}, expected {expected.shape}")
            ok = False
            continue
        error = float(np.max(np.abs(logits - expected)))
        bound = args.tolerance * float(np.max(np.abs(expected)))
        matches = error <= bound
        ok &= matches
        print(
            f"{input_path} {list(images.shape)}: max |onnxruntime - burn| = {error:.3e} "
            f"(allowed {bound:.3e}) {'ok' if matches else 'MISMATCH'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
