"""Where the trainer's GPU time goes, kernel by kernel.

`trainer bench` gives one number per configuration. This script runs the
same sequence of ATen operations as trainer/src/model.rs and optim/sgd.rs (the
grouped two-column net, LRN as a banded 1x1 convolution, FC halves joined by
cat, explicit bf16 casts, the paper's SGD rule per parameter), so the CUDA
kernels it launches are the trainer's, and PyTorch's profiler can name them.
(That is why it does not build tests/reference/paper_alexnet.py, the nn.Module
net the tests and the eager reference share: it replays the trainer's
operations, not PyTorch's modules.)
It also times variants of single pieces, to decide what to change in Rust
before changing it:

  --lrn band|manual|script|compile|pool|torch|none
                            our banded-GEMM LRN; the same with a hand-written
                            backward (fewer passes), through TorchScript's
                            fuser, or through torch.compile (the fused bound);
                            a 1-D pool over channels; PyTorch's avg_pool3d
                            one; none
  --check-lrn               compare every LRN variant's output and input
                            gradient with the band LRN's, then exit
  --conv grouped|split      conv2/4/5 as groups=2, or two convs and a cat
  --sgd ours|accum|foreach|none
                            gradients from autograd.grad then per-parameter
                            kernels (as sgd.rs), the same from .grad (backward()
                            accumulates, the update zeroes), torch._foreach_*
                            (one launch per op for all parameters), or no update
  --layout nhwc|nchw        the input's memory format (the loader hands NHWC)
  --pad8                    conv1's input and kernels padded to 8 channels, so
                            cuDNN needs no padding kernel of its own (NHWC)
  --graph                   the whole step (forward, autograd.grad, update)
                            captured once in a CUDA graph and replayed, the
                            batch copied into the graph's input first: what
                            removing the host's launch overhead could give

    python3 alexnet_ops_profile.py --batch 128 --prec f32 --profile
    python3 alexnet_ops_profile.py --sweep       # one line per variant

Lines look like `OPS bs=128 f32 lrn=band conv=grouped sgd=ours img/s=... fwd_ms=...`.
"""
import argparse
import itertools
import time

import torch
import torch.nn.functional as F

WIDTHS = [96, 256, 384, 384, 256]
FC = 4096


def make_params(device, classes=1000, width=1.0):
    c = [int(round(w * width / 2)) * 2 for w in WIDTHS]
    fc = int(round(FC * width / 2)) * 2
    shapes = [(c[0], 3, 11, 11), (c[1], c[0] // 2, 5, 5), (c[2], c[1], 3, 3),
              (c[3], c[2] // 2, 3, 3), (c[4], c[3] // 2, 3, 3),
              (fc, c[4] * 36), (fc, fc), (classes, fc)]
    params = []
    for col in range(2):
        layers = []
        for s in shapes:
            rows = s[0] - s[0] // 2 if col == 0 else s[0] // 2
            w = (torch.randn((rows,) + s[1:], device=device) * 0.01).requires_grad_()
            b = torch.zeros(rows, device=device).requires_grad_()
            layers.append((w, b))
        params.append(layers)
    bands = [lrn_band(c[0], device), lrn_band(c[1], device)]
    return params, bands


def lrn_band(channels, device, size=5, alpha=1e-4):
    per = channels // 2
    i = torch.arange(channels)
    same_col = (i[:, None] // per) == (i[None, :] // per)
    near = (i[:, None] - i[None, :]).abs() <= size // 2
    # float64, so that the float64 check sees alpha exactly; callers cast.
    return (alpha * (same_col & near).double()).view(channels, channels, 1, 1).to(device)


def lrn(x, band, mode):
    if mode == "none":
        return x
    if mode == "torch":
        a, b = x.chunk(2, dim=1)
        n = lambda t: F.local_response_norm(t, 5, alpha=5e-4, beta=0.75, k=2.0)
        return torch.cat([n(a), n(b)], dim=1)
    if mode == "pool":
        # Sum over 5 neighbouring channels of each column as a 1-D average
        # pool along the channel axis of the channels-last layout.
        n, c, h, w = x.shape
        sq = x.square().permute(0, 2, 3, 1).reshape(n * h * w * 2, 1, c // 2)
        s = F.avg_pool1d(sq, 5, 1, 2, count_include_pad=True)
        s = s.reshape(n, h, w, c).permute(0, 3, 1, 2)
        return x * (s * (5 * 1e-4) + 2.0).pow(-0.75)
    # The band LRN, as it is or through the tool each variant tries.
    band_lrn = {"band": lrn_band_ops, "manual": BandLrn.apply, "script": lrn_scripted,
                "compile": lrn_compiled}[mode]
    return band_lrn(x, band.to(x.dtype))


def lrn_band_ops(x, band):
    """The trainer's LRN: k + alpha * (sum of 5 squares) as one 1x1 conv."""
    k = torch.full((band.shape[0],), 2.0, dtype=x.dtype, device=x.device)
    denom = F.conv2d(x.square(), band, k)
    return x * denom.pow(-0.75)


# The same through TorchScript, whose fuser may merge the pointwise kernels
# (forward and backward) around the band conv on CUDA.
lrn_scripted = torch.jit.script(lrn_band_ops)
# The same through torch.compile (Triton): how much fusing the pointwise
# work could give at best, before writing a kernel by hand.
lrn_compiled = torch.compile(lrn_band_ops, dynamic=False)


class BandLrn(torch.autograd.Function):
    """The band LRN with its backward written out, fewer passes than
    autograd's: with D = (k + S)^-beta, S = band * a^2 and b = a * D,
    dL/da = g * D - 2 beta * a * band(g * b / (k + S)) (band is symmetric).
    What the trainer could do with run_backward segments."""

    @staticmethod
    def forward(ctx, x, band):
        k = torch.full((band.shape[0],), 2.0, dtype=x.dtype, device=x.device)
        ks = F.conv2d(x.square(), band, k)
        d = ks.pow(-0.75)
        b = x * d
        ctx.save_for_backward(x, band, ks, d, b)
        return b

    @staticmethod
    def backward(ctx, g):
        x, band, ks, d, b = ctx.saved_tensors
        v = F.conv2d((g * b).div_(ks), band)
        return torch.addcmul(g * d, x, v, value=-1.5), None


def forward(params, bands, x, dt, args, train=True):
    x = x.to(dt)
    p = lambda c, l: (params[c][l][0].to(dt), params[c][l][1].to(dt))

    def conv(h, l, pad, stride, groups):
        if groups == 2 and args.conv == "split":
            halves = h.chunk(2, dim=1)
            outs = [F.conv2d(halves[c], *p(c, l), stride, pad) for c in range(2)]
            return torch.cat(outs, 1).relu()
        (wa, ba), (wb, bb) = p(0, l), p(1, l)
        return F.conv2d(h, torch.cat([wa, wb]), torch.cat([ba, bb]), stride, pad, 1, groups).relu()

    pool = lambda h: F.max_pool2d(h, 3, 2)
    if args.pad8:
        (wa, ba), (wb, bb) = p(0, 0), p(1, 0)
        w = torch.cat([wa, wb])
        w = torch.cat([w, w.new_zeros(w.shape[0], 5, 11, 11)], 1)
        h0 = F.conv2d(x, w, torch.cat([ba, bb]), 4, 2).relu()
    else:
        h0 = conv(x, 0, 2, 4, 1)
    h = pool(lrn(h0, bands[0], args.lrn))
    h = pool(lrn(conv(h, 1, 2, 1, 2), bands[1], args.lrn))
    h = conv(h, 2, 1, 1, 1)
    h = conv(h, 3, 1, 1, 2)
    f = pool(conv(h, 4, 1, 1, 2)).flatten(1)
    for l in (5, 6, 7):
        if l < 7:
            f = F.dropout(f, 0.5, train)
        f = torch.cat([F.linear(f, *p(c, l)) for c in range(2)], 1)
        if l < 7:
            f = f.relu()
    return f.float()


class PaperSgd:
    """sgd.rs, op for op (or the same arithmetic through torch._foreach_*)."""

    def __init__(self, params, mode, lr=0.01, momentum=0.9, decay=5e-4):
        self.flat = [t for col in params for layer in col for t in layer]
        self.is_weight = [i % 2 == 0 for i in range(len(self.flat))]
        self.v = [torch.zeros_like(t) for t in self.flat]
        self.mode, self.lr, self.m, self.decay = mode, lr, momentum, decay
        dev = self.flat[0].device
        self.neg_lr = torch.full((), -lr, device=dev)
        self.neg_decay = torch.full((), -lr * decay, device=dev)

    @torch.no_grad()
    def step(self, loss):
        if self.mode == "none":
            loss.backward()
            for p in self.flat:
                p.grad = None
            return
        if self.mode == "ours":
            with torch.enable_grad():
                grads = torch.autograd.grad(loss, self.flat)
        else:
            loss.backward()
            grads = [p.grad for p in self.flat]
        if self.mode == "foreach":
            torch._foreach_mul_(self.v, self.m)
            torch._foreach_add_(self.v, grads, alpha=-self.lr)
            ws = [i for i, w in enumerate(self.is_weight) if w]
            torch._foreach_add_([self.v[i] for i in ws], [self.flat[i] for i in ws],
                                alpha=-self.lr * self.decay)
            torch._foreach_add_(self.flat, self.v)
            torch._foreach_zero_(grads)
            return
        for p, v, g, w in zip(self.flat, self.v, grads, self.is_weight):
            v.mul_(self.m)
            v.addcmul_(g, self.neg_lr)
            if w:
                v.addcmul_(p, self.neg_decay)
            p.add_(v)
            if self.mode == "accum":
                g.zero_()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(args, batch, prec, device, steps, warmup):
    torch.manual_seed(0)
    dt = torch.bfloat16 if prec == "bf16" else torch.float32
    params, bands = make_params(device, width=args.width)
    opt = PaperSgd(params, args.sgd)
    side = args.side
    chans = 8 if args.pad8 else 3
    xs = [(torch.randn(batch, side, side, chans, device=device) * 50).permute(0, 3, 1, 2) for _ in range(2)]
    if args.pad8:
        for x in xs:
            x[:, 3:] = 0
    if args.layout == "nchw":
        xs = [x.contiguous() for x in xs]
    ys = torch.randint(0, 1000, (batch,), device=device)
    t_fwd = t_opt = 0.0

    def step(i, timed):
        nonlocal t_fwd, t_opt
        t0 = time.perf_counter()
        loss = F.cross_entropy(forward(params, bands, xs[i % 2], dt, args), ys)
        if timed:
            sync(device)
        t1 = time.perf_counter()
        opt.step(loss)  # backward and update
        if timed:
            sync(device)
            t_fwd, t_opt = t_fwd + t1 - t0, t_opt + time.perf_counter() - t1

    if args.graph:
        step = graphed_step(params, bands, xs, ys, dt, args, opt, device)

    for i in range(warmup):
        step(i, False)
    sync(device)
    t = time.perf_counter()
    for i in range(steps):
        step(i, False)
    sync(device)
    secs = time.perf_counter() - t
    # A second, synchronised pass for the per-phase split (slower in sum).
    for i in range(steps // 2):
        step(i, True)
    n = max(steps // 2, 1)
    print(f"OPS bs={batch} {prec} lrn={args.lrn} conv={args.conv} sgd={args.sgd} layout={args.layout} "
          f"pad8={int(args.pad8)} graph={int(args.graph)} img/s={batch * steps / secs:.0f} step_ms={1e3 * secs / steps:.2f} "
          f"fwd_ms={1e3 * t_fwd / n:.2f} bwd_and_update_ms={1e3 * t_opt / n:.2f}", flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for i in range(5):
                step(i, False)
            sync(device)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60),
              flush=True)


def graphed_step(params, bands, xs, ys, dt, args, opt, device):
    """The step captured in a CUDA graph (torch.cuda.graphs' whole-network
    recipe: warm up on a side stream, capture, replay). Dropout draws stay
    random across replays (graph-safe Philox offsets)."""
    if device.type != "cuda":
        raise RuntimeError("--graph needs a CUDA device")
    if opt.mode not in ("ours", "none"):
        raise RuntimeError("--graph with --sgd ours or none (the others touch .grad)")
    static_x = xs[0].clone()

    def body():
        opt.step(F.cross_entropy(forward(params, bands, static_x, dt, args), ys))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()

    def step(i, timed):
        static_x.copy_(xs[i % 2])
        graph.replay()
        if timed:
            sync(device)

    return step


LRN_MODES = ["band", "manual", "script", "compile", "pool", "torch", "none"]


def check_lrn(device):
    """Each LRN variant's output and input gradient against the band LRN's,
    float64 on the CPU (exact arithmetic up to rounding) and the working
    precisions on `device`."""
    torch.manual_seed(0)
    cases = [(torch.device("cpu"), torch.float64)] + [(device, dt) for dt in (torch.float32, torch.bfloat16)]
    worst = 0.0
    for dev, dt in cases:
        band = lrn_band(16, dev).to(dt)
        x = (torch.randn(2, 16, 7, 7, device=dev, dtype=torch.float64) * 30).to(dt).requires_grad_()
        g = torch.randn(2, 16, 7, 7, device=dev, dtype=dt)
        ref_out = lrn_band_ops(x, band)
        (ref_grad,) = torch.autograd.grad(ref_out, x, g)
        tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 3e-2}[dt]
        for mode in ("manual", "script", "compile", "pool", "torch"):
            if mode == "torch" and dev.type == "cpu" and dt == torch.bfloat16:
                continue  # avg_pool3d has no bfloat16 CPU kernel
            try:
                out = lrn(x, lrn_band(16, dev), mode)
                (grad,) = torch.autograd.grad(out, x, g)
            except Exception as e:  # e.g. torch.compile without a working Triton
                print(f"LRN {mode:8} {dev.type} {str(dt)[6:]:9} failed: {str(e).splitlines()[0]}", flush=True)
                worst = float("inf")
                continue
            err = max(((out - ref_out).abs().max() / ref_out.abs().max()).item(),
                      ((grad - ref_grad).abs().max() / ref_grad.abs().max()).item())
            ok = err <= tol
            worst = max(worst, err / tol)
            print(f"LRN {mode:8} {dev.type} {str(dt)[6:]:9} rel err {err:.2e} (tolerance {tol:.0e}) "
                  f"{'ok' if ok else 'DIFFERS'}", flush=True)
    if worst > 1:
        raise SystemExit("an LRN variant differs from the band LRN")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[128])
    ap.add_argument("--prec", nargs="+", default=["f32"], choices=["f32", "bf16"])
    ap.add_argument("--lrn", default="band", choices=LRN_MODES)
    ap.add_argument("--conv", default="grouped", choices=["grouped", "split"])
    ap.add_argument("--sgd", default="ours", choices=["ours", "accum", "foreach", "none"])
    ap.add_argument("--layout", default="nhwc", choices=["nhwc", "nchw"])
    ap.add_argument("--pad8", action="store_true")
    ap.add_argument("--graph", action="store_true", help="capture the whole step in a CUDA graph")
    ap.add_argument("--sweep", action="store_true", help="each variant of one piece at a time")
    ap.add_argument("--check-lrn", action="store_true", help="LRN variants against the band LRN")
    ap.add_argument("--profile", action="store_true", help="print the profiler's kernel table")
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--width", type=float, default=1.0, help="width multiplier (CPU smoke runs)")
    ap.add_argument("--side", type=int, default=224)
    ap.add_argument("--cpu", action="store_true")
    args = ap.parse_args()
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    if args.check_lrn:
        return check_lrn(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    base = dict(lrn=args.lrn, conv=args.conv, sgd=args.sgd, layout=args.layout, pad8=args.pad8,
                graph=args.graph)
    variants = [base]
    if args.sweep:
        variants += [dict(base, lrn=x) for x in ("band", "manual", "script", "compile", "pool", "none")
                     if x != args.lrn]
        variants += [dict(base, conv="split" if args.conv == "grouped" else "grouped")]
        variants += [dict(base, sgd=x) for x in ("ours", "accum", "none") if x != args.sgd]
        variants += [dict(base, layout="nchw" if args.layout == "nhwc" else "nhwc")]
        variants += [dict(base, pad8=not args.pad8)]
        # The graph's ceiling, with the band LRN and with the LRN's passes
        # cut to the hand-written backward's.
        variants += [dict(base, graph=not args.graph), dict(base, graph=not args.graph, lrn="manual")]
    for batch, prec in itertools.product(args.batch, args.prec):
        for v in variants:
            a = argparse.Namespace(**{**vars(args), **v})
            a.profile = args.profile and v is base
            try:
                run(a, batch, prec, device, args.steps, args.warmup)
            except Exception as e:  # one variant failing must not end the sweep
                print(f"OPS bs={batch} {prec} {v} failed: {str(e).splitlines()[0]}", flush=True)


if __name__ == "__main__":
    main()
