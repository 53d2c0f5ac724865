"""Independent reference for trainer/src/model.rs: the paper's AlexNet written
in plain PyTorch modules (as ../shared/bench/torch_alexnet_ref.py writes it,
groups=2), fed the same weights and input, returning logits and gradients.

Two differences from that benchmark script, both to follow the paper:
LRN normalises each column's maps on their own (each GPU normalised its own
maps), and PyTorch's LocalResponseNorm divides alpha by n, so it gets
alpha = 1e-4 * 5 to mean the paper's 1e-4.

    python torch_alexnet.py IN.safetensors OUT.safetensors

IN holds the model's tensors (a.conv1.weight ...) plus `input` (N,3,S,S) and
`grad_weights` (N, classes); OUT gets `logits` and `grad.<name>` for every
parameter, for the loss sum(logits * grad_weights), dropout off.
"""
import json
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
DTYPES = {"F32": torch.float32}


def read_safetensors(path):
    """A minimal reader: 8-byte header size, JSON header, raw little-endian data."""
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        buf = bytearray(data[8 + n + a:8 + n + b])
        out[name] = torch.frombuffer(buf, dtype=DTYPES[info["dtype"]]).reshape(info["shape"]).clone()
    return out


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        raw = bytes(t.detach().to(torch.float32).contiguous().clone().untyped_storage())  # clone: own storage, exact size
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


class ColumnLRN(nn.Module):
    def __init__(self):
        super().__init__()
        self.lrn = nn.LocalResponseNorm(5, alpha=1e-4 * 5, beta=0.75, k=2.0)

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return torch.cat([self.lrn(a), self.lrn(b)], dim=1)


def paper_alexnet(w):
    c = [w[f"a.conv{i}.weight"].shape[0] * 2 for i in range(1, 6)]
    fc = w["a.fc6.weight"].shape[0] * 2
    flat = w["a.fc6.weight"].shape[1]
    classes = w["a.fc8.weight"].shape[0] + w["b.fc8.weight"].shape[0]
    features = nn.Sequential(
        nn.Conv2d(3, c[0], 11, 4, 2), nn.ReLU(), ColumnLRN(), nn.MaxPool2d(3, 2),
        nn.Conv2d(c[0], c[1], 5, 1, 2, groups=2), nn.ReLU(), ColumnLRN(), nn.MaxPool2d(3, 2),
        nn.Conv2d(c[1], c[2], 3, 1, 1), nn.ReLU(),
        nn.Conv2d(c[2], c[3], 3, 1, 1, groups=2), nn.ReLU(),
        nn.Conv2d(c[3], c[4], 3, 1, 1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Flatten())
    classifier = nn.Sequential(
        nn.Dropout(0.5), nn.Linear(flat, fc), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(fc, fc), nn.ReLU(), nn.Linear(fc, classes))
    model = nn.Sequential(features, classifier)
    convs = [m for m in features if isinstance(m, nn.Conv2d)]
    linears = [m for m in classifier if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for layer, m in zip(LAYERS, convs + linears):
            m.weight.copy_(torch.cat([w[f"a.{layer}.weight"], w[f"b.{layer}.weight"]]))
            m.bias.copy_(torch.cat([w[f"a.{layer}.bias"], w[f"b.{layer}.bias"]]))
    return model, dict(zip(LAYERS, convs + linears))


def main():
    src, dst = sys.argv[1], sys.argv[2]
    t = read_safetensors(src)
    model, modules = paper_alexnet(t)
    model.eval()  # dropout off
    logits = model(t["input"])
    (logits * t["grad_weights"]).sum().backward()
    out = {"logits": logits}
    for layer, m in modules.items():
        for kind in ("weight", "bias"):
            g = getattr(m, kind).grad
            half = t[f"a.{layer}.{kind}"].shape[0]
            out[f"grad.a.{layer}.{kind}"] = g[:half]
            out[f"grad.b.{layer}.{kind}"] = g[half:]
    write_safetensors(dst, out)


if __name__ == "__main__":
    main()
