#!/usr/bin/env python3
"""PyTorch peer of `meal-precompute run` on the demo: the same job, the usual Python way.

For every image of an ImageFolder: decode once with PIL, draw P RandomResizedCrop + flip
crops (torchvision), run each teacher (timm ResNets built with the demo presets'
configs, eval mode, loaded from our safetensors: same names) at SIZE px, average the
softmax over teachers, and write one Parquet file (pyarrow) with the crop geometry and
dense float16 probabilities. Images are batched IMAGES_PER_BATCH at a time.

usage: precompute_torch.py DATA_DIR OUT.parquet P SIZE ARCH=WEIGHTS [ARCH=WEIGHTS ...]
threads: $THREADS (default 2). Needs torch, torchvision, timm, safetensors, pyarrow.
"""
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import timm.models.resnet as R
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from safetensors.torch import load_file
from torchvision.datasets import ImageFolder

DEMO = {  # meal_models::resnet presets demo_*: deep stem of width 16
    "demo_resnet10": (R.BasicBlock, (1, 1, 1, 1), (16, 32, 64, 128)),
    "demo_resnet14": (R.Bottleneck, (1, 1, 1, 1), (16, 32, 64, 128)),
    "demo_tiny": (R.BasicBlock, (1, 1, 1, 1), (8, 8, 16, 16)),
}


def teacher(spec, classes):
    arch, path = spec.split("=", 1)
    block, layers, channels = DEMO[arch]
    m = R.ResNet(block=block, layers=layers, channels=channels, stem_width=16, stem_type="deep",
                 num_classes=classes)
    m.load_state_dict(load_file(path))
    return m.eval()


def main():
    data, out, p, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    ds = ImageFolder(data)
    teachers = [teacher(s, len(ds.classes)) for s in sys.argv[5:]]
    rrc = T.RandomResizedCrop(size, scale=(0.35, 1.0))
    norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    t0 = time.perf_counter()
    cols = {k: [] for k in ("sample_id", "crop_id", "top", "left", "height", "width", "flip")}
    probs = []
    per = max(1, 64 // p)
    for start in range(0, len(ds), per):
        xs = []
        for i in range(start, min(start + per, len(ds))):
            img = ds.loader(ds.samples[i][0])
            w, h = img.size
            for c in range(p):
                top, left, hh, ww = rrc.get_params(img, rrc.scale, rrc.ratio)
                flip = bool(torch.rand(1) < 0.5)
                x = TF.resized_crop(img, top, left, hh, ww, [size, size], T.InterpolationMode.BILINEAR)
                if flip:
                    x = TF.hflip(x)
                xs.append(norm(TF.to_tensor(x)))
                for k, v in zip(cols, (i, c, top / h, left / w, hh / h, ww / w, flip)):
                    cols[k].append(v)
        x = torch.stack(xs)
        with torch.no_grad():
            pr = torch.stack([torch.softmax(m(x), 1) for m in teachers]).mean(0)
        probs.append(pr.numpy().astype(np.float16))
    pr = np.concatenate(probs)
    table = pa.table({**{k: v for k, v in cols.items()},
                      "prob": pa.FixedSizeListArray.from_arrays(pa.array(pr.reshape(-1)), pr.shape[1])})
    pq.write_table(table, out)
    dt = time.perf_counter() - t0
    print(f"torch precompute: {len(ds)} images, {len(pr)} crops in {dt:.1f} s "
          f"({len(ds) / dt:.1f} img/s, {len(pr) / dt:.0f} crops/s, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
