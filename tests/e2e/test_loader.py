"""`pipeline bench`: the loader end to end on the test tree (issue 4)."""
import json
import shutil

from conftest import run


def test_bench_reports_rate_ceiling_ratio_and_flat_memory(tmp_path, tree):
    d = tmp_path / "shards"
    shutil.copytree(tree["out"], d)
    run("stats", "--shards", d)
    images = tree["manifest"]["splits"]["train"]["images"]
    for output in ("u8", "f32"):
        p = run("bench", "--shards", d, "--threads", "2", "--batch-size", "8", "--epochs", "3",
                "--output", output, "--json")
        r = json.loads(p.stdout)
        assert r["images"] == 3 * images
        assert r["images_per_sec"] > 0 and r["ceiling_images_per_sec"] > 0
        assert abs(r["ratio"] - r["images_per_sec"] / r["ceiling_images_per_sec"]) < 1e-9
        read_total = r["threads"] * r["single_thread_read_and_zstd_images_per_sec"]
        assert abs(r["ratio_to_read_and_zstd"] - r["images_per_sec"] / read_total) < 1e-9
        peaks = r["peak_resident_mb_after_each_epoch"]
        assert len(peaks) == 3 and max(peaks) <= r["memory_bound_mb"], r


def test_bench_without_stats_says_what_to_run(tmp_path, tree):
    d = tmp_path / "shards"
    shutil.copytree(tree["out"], d)
    p = run("bench", "--shards", d, check=False)
    assert p.returncode != 0
    assert "run `pipeline stats` first" in p.stderr
