#!/usr/bin/env python3
"""The PyTorch peer of `meal-data bench`: PIL decode + torchvision RandomResizedCrop +
RandomHorizontalFlip + ToTensor + Normalize, one thread, over the same files.

usage: pil_pipeline.py DIR [--res 224] [--passes 3]
Prints images/s of the best timed pass (the first pass warms the page cache).
"""
import argparse
import os
import sys
import time

import torch
import torchvision
import torchvision.transforms as T
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--passes", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    files = sorted(
        os.path.join(r, f) for r, _, fs in os.walk(a.data) for f in fs if f.lower().endswith((".jpg", ".jpeg"))
    )
    if not files:
        sys.exit(f"no JPEGs under {a.data}")
    tf = T.Compose([
        T.RandomResizedCrop(a.res),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    best = float("inf")
    for p in range(max(a.passes, 2)):
        t = time.perf_counter()
        for f in files:
            with open(f, "rb") as fh:
                x = tf(Image.open(fh).convert("RGB"))
        dt = time.perf_counter() - t
        if p > 0:
            best = min(best, dt)
    import PIL
    print(f"PIL {PIL.__version__} + torchvision {torchvision.__version__} bench: {len(files)} images, "
          f"res {a.res}, 1 thread: {len(files) / best:.1f} img/s")


if __name__ == "__main__":
    main()
