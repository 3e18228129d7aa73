#!/usr/bin/env python3
"""Reads a pedconv run directory's TensorBoard event files with TensorBoard's own reader.

Usage: read_events.py RUN_DIR

Prints one JSON object: {"train": {tag: [[step, value], ...]}, "valid": {...}}, every scalar
event of `RUN_DIR/tensorboard/train` and `RUN_DIR/tensorboard/valid` in the order read, as
`tensorboard --logdir` loads them (EventAccumulator, keeping every event).
"""

import json
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(directory):
    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [[event.step, event.value] for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def main():
    run = Path(sys.argv[1])
    print(json.dumps({split: scalars(run / "tensorboard" / split) for split in ("train", "valid")}))


if __name__ == "__main__":
    main()
