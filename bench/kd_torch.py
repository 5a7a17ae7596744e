#!/usr/bin/env python3
"""The demo's headline pair in PyTorch + timm, independently of our code: the same data
(demo/data, made by `meal-data synth --train-per-class 40`), the same shipped teachers
(assets/demo-teachers, timm names), the same student (timm ResNet with the demo_resnet10
config) and recipe: 10 epochs of hard-label pre-training from random init, then from that
init 20 epochs of hard labels vs 20 epochs of MEAL V2 KD (soft cross-entropy to the
teachers' mean softmax on the same crop, plus the discriminator C->125->15->2 with
BCE-with-logits, one SGD step over both). SGD momentum 0.9, lr 0.02 with a per-epoch
cosine, weight decay 5e-4 off BatchNorm and biases, batch 32 = 8 images x 4 crops,
RandomResizedCrop(64, scale=(0.08, 1)) + flip, eval Resize(73) + CenterCrop(64).

One difference from `make train`, by design: the teachers run online on fresh crops
(torchvision's transforms), where ours replay a stored pool of 80 crops per image; our
`kd_online` row in docs/REPLICATION.md is the like-for-like comparison.

usage: python3 bench/kd_torch.py [--data demo/data] [--seeds 1 2 3] [--threads 1]
prints one JSON line per seed and a summary; needs torch, torchvision, timm, safetensors.
"""
import argparse
import json
import math
import time

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision import datasets, transforms

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def demo_resnet(block, classes=10):
    # models/src/resnet.rs presets(): demo_* = [1,1,1,1], channels 16..128, deep stem 16.
    # Our builder initialises every BatchNorm weight to 1 (no zero_init_last), so the
    # student starts from the same kind of init here.
    return ResNet(block=block, layers=(1, 1, 1, 1), channels=(16, 32, 64, 128),
                  stem_width=16, stem_type="deep", num_classes=classes, zero_init_last=False)


class Crops:
    """C independent RandomResizedCrop + flip views of one image."""

    def __init__(self, c, scale):
        self.c = c
        self.t = transforms.Compose([
            transforms.RandomResizedCrop(64, scale=scale),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ])

    def __call__(self, img):
        return torch.stack([self.t(img) for _ in range(self.c)])


def param_groups(model, lr, wd):
    decay, no = [], []
    for n, p in model.named_parameters():
        (no if p.ndim <= 1 else decay).append(p)
    return [dict(params=decay, lr=lr, weight_decay=wd), dict(params=no, lr=lr, weight_decay=0.0)]


def evaluate(model, loader):
    model.eval()
    right = n = 0
    with torch.no_grad():
        for x, y in loader:
            right += (model(x).argmax(1) == y).sum().item()
            n += len(y)
    return right / n


def train(model, loader, val, epochs, lr, wd, teachers=None, seed=0):
    torch.manual_seed(seed)
    disc = None
    params = param_groups(model, lr, wd)
    if teachers is not None:
        disc = nn.Sequential(nn.Linear(10, 125), nn.ReLU(), nn.Linear(125, 15), nn.ReLU(),
                             nn.Linear(15, 2), nn.ReLU())
        params += param_groups(disc, lr, wd)
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    for e in range(epochs):
        f = 0.5 * (1 + math.cos(math.pi * e / epochs))
        for g in opt.param_groups:
            g["lr"] = lr * f
        model.train()
        for x, y in loader:
            b, c = x.shape[:2]
            x = x.flatten(0, 1)
            y = y.repeat_interleave(c)
            logits = model(x)
            if teachers is None:
                loss = F.cross_entropy(logits, y)
            else:
                with torch.no_grad():
                    p = torch.stack([F.softmax(t(x), 1) for t in teachers]).mean(0)
                loss = -(p * F.log_softmax(logits, 1)).sum(1).mean()
                out = disc(torch.cat([F.softmax(logits, 1), p]))
                tgt = torch.cat([torch.tensor([[1.0, 0.0]]).expand(len(x), 2),
                                 torch.tensor([[0.0, 1.0]]).expand(len(x), 2)])
                loss = loss + F.binary_cross_entropy_with_logits(out, tgt)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return evaluate(model, val)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="demo/data")
    ap.add_argument("--teachers", default="assets/demo-teachers")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pre", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    teachers = []
    for f, block in [("teacher_a", Bottleneck), ("teacher_b", BasicBlock)]:
        t = demo_resnet(block)
        t.load_state_dict(load_file(f"{a.teachers}/{f}.safetensors"))
        teachers.append(t.eval())
    ev = transforms.Compose([transforms.Resize(int(64 / 0.875)), transforms.CenterCrop(64),
                             transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    val = torch.utils.data.DataLoader(datasets.ImageFolder(f"{a.data}/val", ev), batch_size=100)
    tr = datasets.ImageFolder(f"{a.data}/train", Crops(4, (0.08, 1.0)))
    print(json.dumps({"teacher_a": evaluate(teachers[0], val), "teacher_b": evaluate(teachers[1], val)}))
    rows = []
    for s in a.seeds:
        t0 = time.time()
        g = torch.Generator().manual_seed(s)
        loader = torch.utils.data.DataLoader(tr, batch_size=8, shuffle=True, generator=g, drop_last=True)
        torch.manual_seed(s * 10)
        student = demo_resnet(BasicBlock)
        pre = train(student, loader, val, a.pre, 0.02, 5e-4, seed=s * 10)
        init = {k: v.clone() for k, v in student.state_dict().items()}
        hard_m = demo_resnet(BasicBlock)
        hard_m.load_state_dict(init)
        hard = train(hard_m, loader, val, a.epochs, 0.02, 5e-4, seed=s * 10 + 1)
        kd_m = demo_resnet(BasicBlock)
        kd_m.load_state_dict(init)
        kd = train(kd_m, loader, val, a.epochs, 0.02, 5e-4, teachers=teachers, seed=s * 10 + 1)
        r = dict(seed=s, pretrain=pre, hard=hard, kd=kd, gain=kd - hard, seconds=time.time() - t0)
        rows.append(r)
        print(json.dumps(r), flush=True)
    g = [r["gain"] * 100 for r in rows]
    m = sum(g) / len(g)
    sd = (sum((x - m) ** 2 for x in g) / (len(g) - 1)) ** 0.5 if len(g) > 1 else 0.0
    print(json.dumps(dict(
        torch=torch.__version__, timm=timm.__version__,
        hard=[round(100 * r["hard"], 1) for r in rows], kd=[round(100 * r["kd"], 1) for r in rows],
        gain_mean=round(m, 1), gain_std=round(sd, 1))))


if __name__ == "__main__":
    main()
