"""`pipeline stats` against an independent numpy float64 computation on the
same decoded pixels."""
import json
import shutil

import numpy as np

from conftest import load_manifest, run
from shardfmt import read_split


def copy_shards(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_stats_match_numpy_and_any_thread_count_or_read_mode(tmp_path, tree):
    outs = []
    for jobs, read in ((1, "pread"), (2, "map")):
        d = copy_shards(tree["out"], tmp_path / f"j{jobs}")
        p = run("stats", "--shards", d, "--jobs", jobs, "--read", read)
        assert "eigenvalue" in p.stdout
        outs.append(d)
    for name in ("mean.npy", "stats.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name

    m = load_manifest(outs[0])
    images = np.stack([img for _, _, img in read_split(outs[0], m, "train")]).astype(np.float64)
    stats = json.loads((outs[0] / "stats.json").read_text())
    mean = np.load(outs[0] / "mean.npy")
    assert mean.dtype == np.float32 and mean.shape == (256, 256, 3)
    assert np.abs(mean - images.mean(axis=0)).max() <= 1e-4

    pixels = images.reshape(-1, 3)
    assert stats["images"] == len(images) and stats["pixels"] == len(pixels)
    assert stats["manifest_id"] == m["id"]
    np.testing.assert_allclose(stats["channel_mean"], pixels.mean(axis=0), rtol=1e-12)
    cov = np.cov(pixels.T, bias=True)  # population covariance, as documented
    np.testing.assert_allclose(stats["covariance"], cov, rtol=1e-9)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    np.testing.assert_allclose(stats["eigenvalues"], values[order], rtol=1e-9)
    for got, want in zip(np.array(stats["eigenvectors"]), vectors[:, order].T):
        assert abs(np.linalg.norm(got) - 1) < 1e-12
        sign = np.sign(np.dot(got, want))
        np.testing.assert_allclose(got, sign * want, atol=1e-9)


def error_line(p):
    assert p.returncode != 0
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


def test_stats_errors_are_one_line(tmp_path, tree):
    d = copy_shards(tree["out"], tmp_path / "geom")
    m = load_manifest(d)
    m["geometry"]["height"] = 128
    (d / "manifest.json").write_text(json.dumps(m))
    assert "the manifest says 128x256x3" in error_line(run("stats", "--shards", d, check=False))

    d = copy_shards(tree["out"], tmp_path / "notrain")
    m = load_manifest(d)
    del m["splits"]["train"]
    (d / "manifest.json").write_text(json.dumps(m))
    assert "no train split" in error_line(run("stats", "--shards", d, check=False))

    m["splits"]["train"] = {"images": 0, "shards": [], "skipped": []}
    (d / "manifest.json").write_text(json.dumps(m))
    assert "train split is empty" in error_line(run("stats", "--shards", d, check=False))
