#!/usr/bin/env python3
"""The training input pipeline of torchvision + Pillow, beside `pedconv bench --input`.

Two commands:

  make-folder   writes an ImageNet-style folder (train/<class>/*.jpg, val/<class>/*.jpg) of
                ImageNet-sized JPEGs: 500×375 or 375×500 (ImageNet's most common sizes), a
                smooth random background with shapes and fine texture, quality drawn in 85–95.
                A class is a shape (ellipse or rectangle) and a hue band of its shapes, so a
                small network can learn it. Deterministic in --seed.
  bench         times torchvision's training transform on one core, as a PyTorch user's
                `DataLoader(num_workers=0)` runs it: RandomResizedCrop(224), RandomHorizontalFlip,
                [AutoAugment(IMAGENET)], ToTensor, Normalize, batches of 64 collated; with
                --pedconv (repeatable, for several builds), runs `pedconv bench --input` on the same
                folder in the same sitting and writes them side by side with the ratios.

The baseline is what PyTorch users run: it needs torch, torchvision and Pillow.
"""

import argparse
import colorsys
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def make_folder(args):
    rng = random.Random(args.seed)
    np_rng = np.random.default_rng(args.seed)
    root = Path(args.output)
    for split, per_class in (("train", args.train_per_class), ("val", args.val_per_class)):
        for c in range(args.classes):
            folder = root / split / f"class{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                width, height = (500, 375) if rng.random() < 0.75 else (375, 500)
                # A smooth background: low-resolution colour noise, upsampled bicubically.
                low = np_rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
                image = Image.fromarray(low).resize((width, height), Image.BICUBIC)
                draw = ImageDraw.Draw(image)
                shape = draw.ellipse if c % 2 == 0 else draw.rectangle
                hue = (c // 2) / ((args.classes + 1) // 2)
                for _ in range(rng.randint(4, 12)):
                    x0, y0 = rng.randrange(width), rng.randrange(height)
                    x1, y1 = x0 + rng.randrange(40, 240), y0 + rng.randrange(40, 240)
                    h = (hue + rng.uniform(0, 0.08)) % 1.0
                    colour = tuple(int(255 * v) for v in colorsys.hsv_to_rgb(h, 0.9, rng.uniform(0.6, 1.0)))
                    shape((x0, y0, x1, y1), fill=colour)
                image = image.filter(ImageFilter.GaussianBlur(1.0))
                # Fine texture, as photographs have (it is what makes JPEGs large).
                noise = np_rng.normal(0.0, 12.0, (height, width, 3))
                pixels = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(
                    folder / f"{i:05d}.jpg", quality=rng.randint(85, 95)
                )
    print(f"wrote {root}")


def pillow_rates(args):
    """torchvision + Pillow's images per second on one thread, without and with AutoAugment."""
    import torch
    import torchvision
    from torchvision import datasets, transforms

    torch.set_num_threads(1)
    rows = []
    for auto_augment in (False, True):
        steps = [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip()]
        if auto_augment:
            steps.append(transforms.AutoAugment(transforms.AutoAugmentPolicy.IMAGENET))
        steps += [
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
        dataset = datasets.ImageFolder(os.path.join(args.data, "train"), transforms.Compose(steps))
        loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True, num_workers=0)
        seconds = []
        for _ in range(args.reps):
            start, images = time.perf_counter(), 0
            for batch, _ in loader:
                images += batch.shape[0]
            seconds.append(time.perf_counter() - start)
        rate = images / sorted(seconds)[len(seconds) // 2]
        rows.append({"auto_augment": auto_augment, "images_per_second": rate})
        print(f"torchvision {torchvision.__version__}, auto_augment {auto_augment}: {rate:.0f} img/s")
    return rows


def bench(args):
    rows = pillow_rates(args)
    result = {"baseline": rows}
    if args.pedconv:
        output = Path(args.output)
        ours = []
        for k, binary in enumerate(args.pedconv):
            run = output / f"pedconv-{k}"
            command = [binary, "bench", "--input", args.data, "--output", str(run)]
            command += args.pedconv_args
            subprocess.run(command, check=True)
            ours += json.loads((run / "bench.json").read_text())["input"]
        # The baseline again after pedconv's runs: the ratios are against the mean of the two.
        after = pillow_rates(args)
        for row, again in zip(rows, after):
            row["images_per_second_after"] = again["images_per_second"]
            row["images_per_second_mean"] = (row["images_per_second"] + again["images_per_second"]) / 2
        lines = ["| source | JPEG decoder | threads | AutoAugment | pedconv img/s | torchvision + Pillow (1 thread) img/s, before / after | × mean |",
                 "| --- | --- | ---: | --- | ---: | ---: | ---: |"]
        for row in ours:
            base = next(b for b in rows if b["auto_augment"] == row["auto_augment"])
            lines.append(
                f"| {row['source']} {Path(row['path']).name} | {row['jpeg_decoder']} | {row['threads']} | "
                f"{row['auto_augment']} | {row['images_per_second']:.0f} | "
                f"{base['images_per_second']:.0f} / {base['images_per_second_after']:.0f} | "
                f"{row['images_per_second'] / base['images_per_second_mean']:.2f} |"
            )
        table = "\n".join(lines)
        (output / "input-vs-pillow.md").write_text(table + "\n")
        print(table)
        result["pedconv"] = ours
    if args.output:
        Path(args.output).mkdir(parents=True, exist_ok=True)
        (Path(args.output) / "pillow.json").write_text(json.dumps(result, indent=2))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make-folder")
    make.add_argument("--output", required=True)
    make.add_argument("--classes", type=int, default=10)
    make.add_argument("--train-per-class", type=int, default=100)
    make.add_argument("--val-per-class", type=int, default=10)
    make.add_argument("--seed", type=int, default=0)
    timing = commands.add_parser("bench")
    timing.add_argument("--data", required=True)
    timing.add_argument("--reps", type=int, default=3)
    timing.add_argument("--output", help="folder for pillow.json (and pedconv's report)")
    timing.add_argument("--pedconv", action="append",
                        help="a pedconv binary, run on the same folder after (repeatable: builds side by side)")
    timing.add_argument("pedconv_args", nargs="*", help="more arguments of `pedconv bench` (after --)")
    args = parser.parse_args()
    {"make-folder": make_folder, "bench": bench}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
