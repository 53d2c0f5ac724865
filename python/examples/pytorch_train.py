#!/usr/bin/env python3
"""A plain PyTorch training loop fed by alexnet_pipeline.

The loader hands over uint8 crops (4x fewer bytes than floats) with each
view's parameters; the mean image (cropped and mirrored like the view) is
subtracted and the PCA lighting added on the device, as `trainer` does.
The network is the paper's AlexNet, written in PyTorch, with its widths
scaled by --width (1.0 is the paper's), one column (grouped convolutions
stand in for the two GPUs).

    python pytorch_train.py --shards shards --device cuda --epochs 90
    python pytorch_train.py --shards shards --device cpu --steps 40 --width 0.0625

Prints one line per step: `step N loss L`.
"""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

import alexnet_pipeline as ap


def alexnet(classes, width):
    """The paper's layers (section 3.5) at `width` times its channel counts."""
    c = [max(8, int(n * width)) for n in (96, 256, 384, 384, 256)]
    fc = max(16, int(4096 * width))
    return nn.Sequential(
        nn.Conv2d(3, c[0], 11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.LocalResponseNorm(5, alpha=1e-4 * 5, beta=0.75, k=2.0), nn.MaxPool2d(3, 2),
        nn.Conv2d(c[0], c[1], 5, padding=2, groups=2), nn.ReLU(inplace=True),
        nn.LocalResponseNorm(5, alpha=1e-4 * 5, beta=0.75, k=2.0), nn.MaxPool2d(3, 2),
        nn.Conv2d(c[1], c[2], 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c[2], c[3], 3, padding=1, groups=2), nn.ReLU(inplace=True),
        nn.Conv2d(c[3], c[4], 3, padding=1, groups=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2), nn.Flatten(),
        nn.Dropout(0.5), nn.Linear(c[4] * 6 * 6, fc), nn.ReLU(inplace=True),
        nn.Dropout(0.5), nn.Linear(fc, fc), nn.ReLU(inplace=True),
        nn.Linear(fc, classes),
    )


class DeviceNorm:
    """uint8 NHWC crops -> float32 NCHW with the mean image subtracted
    (each view's window of it, mirrored like the view) and the lighting
    added: `(pixel - mean) + light`, as the loader's float32 output."""

    def __init__(self, mean, device):
        self.mean = torch.from_numpy(mean).to(device)  # 256 x 256 x 3
        self.device = device

    def __call__(self, images, views):
        x = images.to(self.device, non_blocking=True).float()
        means = []
        for vx, vy, mirrored in zip(views["x"].tolist(), views["y"].tolist(),
                                    views["mirrored"].tolist()):
            m = self.mean[vy:vy + x.shape[1], vx:vx + x.shape[2]]
            means.append(m.flip(1) if mirrored else m)
        lights = torch.from_numpy(views["light"]).to(self.device)  # N x 3
        x = (x - torch.stack(means)) + lights[:, None, None, :]
        return x.permute(0, 3, 1, 2).contiguous()


def main():
    ap_ = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap_.add_argument("--shards", required=True)
    ap_.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap_.add_argument("--batch-size", type=int, default=128)
    ap_.add_argument("--width", type=float, default=1.0)
    ap_.add_argument("--epochs", type=int, default=90)
    ap_.add_argument("--steps", type=int, help="stop after this many steps")
    ap_.add_argument("--lr", type=float, default=0.01)
    ap_.add_argument("--threads", type=int)
    ap_.add_argument("--seed", type=int, default=0)
    args = ap_.parse_args()

    torch.manual_seed(args.seed)
    shards = ap.Shards(args.shards)
    if shards.mean is None:
        raise SystemExit(f"error: {args.shards}: no mean.npy (run `pipeline stats` first)")
    loader = ap.Loader(shards, batch_size=args.batch_size, output="u8", threads=args.threads,
                       seed=args.seed)
    net = alexnet(len(shards.classes), args.width).to(args.device)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    norm = DeviceNorm(shards.mean, args.device)
    step = 0
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            images, labels = batch
            x = norm(images, batch.views)
            loss = F.cross_entropy(net(x), labels.to(args.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            print(f"step {step} loss {loss.item():.4f}", flush=True)
            step += 1
            if args.steps and step >= args.steps:
                return


if __name__ == "__main__":
    main()
