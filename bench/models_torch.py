#!/usr/bin/env python3
"""PyTorch peer of `cargo bench -p meal-models --bench models`: the same work with timm.

usage: models_torch.py infer|train|online|ce ARCH RES BATCH ITERS   (threads: $THREADS, default 2)
MEAL_DEVICE=cuda:0 runs on the GPU with channels_last; MEAL_DTYPE=bf16|f16 runs under
autocast in that dtype (infer and the train steps), as a tuned PyTorch user would.
train = the offline KD step: train-mode forward, soft CE to cached teacher probs +
discriminator BCE on [softmax(student); teacher], one backward, SGD momentum 0.9.
online = the same with the teachers (resnet152s + senet154, eval mode, mean softmax) run
on the batch every step. ce = the pure student step: hard-label CE, no discriminator.
"""
import sys
import time

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F


def main():
    mode, arch, res, batch, iters = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    torch.set_num_threads(int(__import__("os").environ.get("THREADS", "2")))
    import os
    dev = torch.device(os.environ.get("MEAL_DEVICE", "cpu"))
    amp = {"bf16": torch.bfloat16, "f16": torch.float16}.get(os.environ.get("MEAL_DTYPE", "f32"))
    fmt = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
    m = timm.create_model(arch, pretrained=False, num_classes=1000).to(dev, memory_format=fmt)
    disc = nn.Sequential(nn.Linear(1000, 125), nn.ReLU(), nn.Linear(125, 15), nn.ReLU(), nn.Linear(15, 2), nn.ReLU()).to(dev)
    x = torch.randn(batch, 3, res, res, device=dev).to(memory_format=fmt)
    teacher = torch.softmax(torch.randn(batch, 1000, device=dev), 1)
    targets = torch.cat([torch.tensor([[1.0, 0.0]]).expand(batch, 2), torch.tensor([[0.0, 1.0]]).expand(batch, 2)]).to(dev)
    opt = torch.optim.SGD(list(m.parameters()) + list(disc.parameters()), lr=0.01, momentum=0.9)
    teachers = []
    if mode == "online":
        teachers = [timm.create_model(a, pretrained=False, num_classes=1000).to(dev, memory_format=fmt).eval()
                    for a in ("resnet152s", "senet154")]
    hard = torch.randint(0, 1000, (batch,), device=dev)
    ctx = (lambda: torch.autocast(dev.type, dtype=amp)) if amp else __import__("contextlib").nullcontext

    def step():
        with ctx():
            inner()

    def inner():
        if mode == "infer":
            m.eval()
            with torch.no_grad():
                torch.softmax(m(x), 1).sum().item()
        elif mode == "ce":
            m.train()
            loss = F.cross_entropy(m(x), hard)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()  # one sync per step, as ours reads its loss
        else:
            t = teacher
            if teachers:
                with torch.no_grad():
                    t = torch.stack([torch.softmax(tm(x), 1) for tm in teachers]).mean(0)
            m.train()
            logits = m(x)
            kd = -(t * F.log_softmax(logits, 1)).sum(1).mean()
            d = disc(torch.cat([torch.softmax(logits, 1), t]))
            loss = kd + F.binary_cross_entropy_with_logits(d, targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()  # one sync per step, as ours reads its loss

    step()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    dt = (time.perf_counter() - t) / iters
    print(f"torch {mode} {arch} res {res} batch {batch}: {batch / dt:.2f} img/s ({dt:.3f} s/step, "
          f"{torch.get_num_threads()} threads, {dev} {os.environ.get('MEAL_DTYPE', 'f32')})")


if __name__ == "__main__":
    main()
