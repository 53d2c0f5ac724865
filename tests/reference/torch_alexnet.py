"""Independent reference for trainer/src/model.rs: the paper's AlexNet in
plain PyTorch modules (paper_alexnet.py, groups=2, the paper's column LRN),
fed the same weights and input, returning logits and gradients.

    python torch_alexnet.py [--double] IN.safetensors OUT.safetensors

IN holds the model's tensors (a.conv1.weight ...) plus `input` (N,3,S,S) and
`grad_weights` (N, classes); OUT gets `logits` and `grad.<name>` for every
parameter, for the loss sum(logits * grad_weights), dropout off.
--double computes in float64 (the outputs are written as float32).
"""
import json
import struct
import sys

import torch

from paper_alexnet import layers_of, paper_alexnet

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


def paper_alexnet_with(w):
    """The reference net (the paper's column LRN) holding the weights `w`."""
    widths = [w[f"a.conv{i}.weight"].shape[0] * 2 for i in range(1, 6)]
    fc = w["a.fc6.weight"].shape[0] * 2
    classes = w["a.fc8.weight"].shape[0] + w["b.fc8.weight"].shape[0]
    model = paper_alexnet(widths, fc, classes, groups=2, lrn="column", flat=w["a.fc6.weight"].shape[1])
    modules = layers_of(model)
    with torch.no_grad():
        for layer, m in modules.items():
            m.weight.copy_(torch.cat([w[f"a.{layer}.weight"], w[f"b.{layer}.weight"]]))
            m.bias.copy_(torch.cat([w[f"a.{layer}.bias"], w[f"b.{layer}.bias"]]))
    return model, modules


def main():
    args = sys.argv[1:]
    double = "--double" in args
    src, dst = [a for a in args if a != "--double"]
    t = read_safetensors(src)
    model, modules = paper_alexnet_with(t)
    model.eval()  # dropout off
    if double:
        model.double()
        t = {name: v.double() for name, v in t.items()}
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
