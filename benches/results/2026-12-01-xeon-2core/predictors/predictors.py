"""Would another pixel predictor make zstd shards decode faster? 400 sample
photos resized (shorter side 256, bilinear) and centre-cropped to 256x256,
each filtered three ways (left: the shards delta filter; up; gradient:
left then up, i.e. x - left - up + upleft), compressed with zstd level 1
(python-zstandard 0.25), then decompressed single-threaded 7 times.

  python predictors.py SAMPLE_DIR   (numpy, Pillow, zstandard)
"""
import glob, sys, time, statistics, numpy as np, zstandard
from PIL import Image
files = sorted(glob.glob(sys.argv[1] + '/*.JPEG'))[:400]
imgs = []
for f in files:
    im = Image.open(f).convert('RGB')
    w, h = im.size; s = 256 / min(w, h)
    im = im.resize((max(256, round(w * s)), max(256, round(h * s))), Image.BILINEAR)
    w, h = im.size; l, t = (w - 256) // 2, (h - 256) // 2
    imgs.append(np.asarray(im.crop((l, t, l + 256, t + 256)), dtype=np.uint8))
def left(x):
    r = x.astype(np.int16).reshape(256, 768)
    d = r.copy(); d[:, 3:] = r[:, 3:] - r[:, :-3]
    return (d & 255).astype(np.uint8)
def grad(x):
    d = left(x).astype(np.int16)
    g = d.copy(); g[1:] = d[1:] - d[:-1]
    return (g & 255).astype(np.uint8)
def up(x):
    r = x.astype(np.int16).reshape(256, 768)
    d = r.copy(); d[1:] = r[1:] - r[:-1]
    return (d & 255).astype(np.uint8)
cctx = zstandard.ZstdCompressor(level=1)
dctx = zstandard.ZstdDecompressor()
for name, f in (('left', left), ('up', up), ('gradient', grad)):
    frames = [cctx.compress(f(x).tobytes()) for x in imgs]
    size = sum(map(len, frames)) / len(frames)
    rates = []
    for _ in range(7):
        t = time.perf_counter()
        for fr in frames: dctx.decompress(fr)
        rates.append(len(frames) / (time.perf_counter() - t))
    print(f"{name:9s} {size/1024:7.1f} KiB/image  decompress {statistics.median(rates):7.0f} img/s (1 thread, median of 7)")
