"""Independent reference for `trainer eval`: a checkpoint's top-1/top-5 on
the val split, computed with PyTorch alone from the batches of the Python
loader (alexnet_pipeline, itself tested pixel by pixel against numpy).

    python ten_crop_eval.py CHECKPOINT_DIR SHARDS [--ten-crop] [--max-images N]

The checkpoint's weights go into the paper's net written in PyTorch
(paper_alexnet.py, as torch_alexnet.py loads them); the input is the
loader's float32 output ((pixel - mean) + light, light zero at eval) times
the checkpoint's per-channel input scale; with --ten-crop each image's ten
softmaxes are averaged; with --max-images only the split's first N images
(in stored order, which the loader keeps at eval) are scored. Prints
{"images", "top1", "top5", "loss"} as JSON (loss: the mean cross-entropy
of the averaged softmax, as `trainer eval`).
"""
import json
import os
import sys

import torch

import alexnet_pipeline as ap
from torch_alexnet import paper_alexnet_with, read_safetensors


def main():
    checkpoint, shards = sys.argv[1], sys.argv[2]
    ten = "--ten-crop" in sys.argv[3:]
    limit = None
    if "--max-images" in sys.argv[3:]:
        limit = int(sys.argv[sys.argv.index("--max-images") + 1])
    latest = open(os.path.join(checkpoint, "checkpoints", "LATEST")).read().strip()
    step = os.path.join(checkpoint, "checkpoints", latest)
    state = json.load(open(os.path.join(step, "state.json")))
    model, _ = paper_alexnet_with(read_safetensors(os.path.join(step, "model.safetensors")))
    model.eval()
    scale = torch.ones(3) if state["input_scale"] is None else torch.tensor(state["input_scale"])
    loader = ap.Loader(shards, split="val", batch_size=50, mode="tencrop" if ten else "center",
                       output="f32", threads=2, drop_last=False)
    images = hit1 = hit5 = 0
    loss = 0.0
    with torch.no_grad():
        for x, labels in loader:
            if limit is not None:
                if images >= limit:
                    break
                keep = min(len(labels), limit - images)
                x = x[: keep * (len(x) // len(labels))]
                labels = labels[:keep]
            probs = model(x * scale[None, :, None, None]).softmax(-1)
            probs = probs.view(len(labels), -1, probs.shape[-1]).mean(1)
            top = probs.topk(5, 1).indices
            hit1 += int((top[:, 0] == labels).sum())
            hit5 += int((top == labels[:, None]).any(1).sum())
            images += len(labels)
            loss -= float(probs.gather(1, labels[:, None]).clamp_min(1e-12).log().sum())
    print(json.dumps({"images": images, "top1": hit1 / images, "top5": hit5 / images,
                      "loss": loss / images}))


if __name__ == "__main__":
    main()
