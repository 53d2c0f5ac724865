"""The paper's AlexNet in plain PyTorch modules: the one definition that the
test reference (torch_alexnet.py) and the speed reference
(benches/torch_alexnet_ref.py) build.

    paper_alexnet(groups=2, lrn="torch")    # the speed reference, as PyTorch users write it
    paper_alexnet(widths, fc, classes, lrn="column")   # the paper's LRN, for the tests

`lrn="torch"` is nn.LocalResponseNorm over all maps with alpha = 1e-4, as
PyTorch users and ../shared/bench/torch_alexnet_ref.py write it (PyTorch
divides alpha by n, so that is the paper's 2e-5). `lrn="column"` follows the
paper: each column's maps normalised on their own (each GPU normalised its
own maps), alpha = 1e-4 * 5 so that PyTorch's division gives the paper's
1e-4.
"""
import torch
import torch.nn as nn

WIDTHS = (96, 256, 384, 384, 256)
LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]


class ColumnLRN(nn.Module):
    """The paper's LRN: within each of the two columns' maps."""

    def __init__(self):
        super().__init__()
        self.lrn = nn.LocalResponseNorm(5, alpha=1e-4 * 5, beta=0.75, k=2.0)

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return torch.cat([self.lrn(a), self.lrn(b)], dim=1)


def paper_alexnet(widths=WIDTHS, fc=4096, classes=1000, groups=2, lrn="torch", flat=None):
    """conv1-5 of `widths`, fc6-7 of `fc`, fc8 of `classes`; conv2, conv4 and
    conv5 in `groups`; `flat` inputs to fc6 (default: conv5's maps at 6x6)."""
    c = list(widths)
    flat = flat or c[4] * 6 * 6
    inplace = lrn == "torch"  # as the speed reference writes it
    norm = (lambda: nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)) if lrn == "torch" else ColumnLRN
    relu = lambda: nn.ReLU(inplace=inplace)
    features = nn.Sequential(
        nn.Conv2d(3, c[0], 11, 4, 2), relu(), norm(), nn.MaxPool2d(3, 2),
        nn.Conv2d(c[0], c[1], 5, 1, 2, groups=groups), relu(), norm(), nn.MaxPool2d(3, 2),
        nn.Conv2d(c[1], c[2], 3, 1, 1), relu(),
        nn.Conv2d(c[2], c[3], 3, 1, 1, groups=groups), relu(),
        nn.Conv2d(c[3], c[4], 3, 1, 1, groups=groups), relu(), nn.MaxPool2d(3, 2),
        nn.Flatten())
    classifier = nn.Sequential(
        nn.Dropout(0.5), nn.Linear(flat, fc), relu(),
        nn.Dropout(0.5), nn.Linear(fc, fc), relu(), nn.Linear(fc, classes))
    return nn.Sequential(features, classifier)


def layers_of(model):
    """The eight weighted layers by name (conv1 ... fc8)."""
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return dict(zip(LAYERS, weighted))
