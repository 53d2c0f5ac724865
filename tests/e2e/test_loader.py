"""`pipeline bench`: the loader end to end on the test tree."""
import json
import shutil

from conftest import run


def test_bench_reports_rate_ceiling_ratio_and_flat_memory(tmp_path, tree):
    d = tmp_path / "shards"
    shutil.copytree(tree["out"], d)
    run("stats", "--shards", d)
    images = tree["manifest"]["splits"]["train"]["images"]
    for output, read in (("u8", "auto"), ("f32", "auto"), ("u8", "pread")):
        p = run("bench", "--shards", d, "--threads", "2", "--batch-size", "8", "--epochs", "3",
                "--output", output, "--read", read, "--json")
        r = json.loads(p.stdout)
        # A few MB of shards fit in any machine's memory: auto maps them.
        assert r["read"] == ("map" if read == "auto" else "pread")
        assert r["images"] == 3 * images
        assert r["images_per_sec"] > 0 and r["ceiling_images_per_sec"] > 0
        assert abs(r["ratio"] - r["images_per_sec"] / r["ceiling_images_per_sec"]) < 1e-9
        each = r["images_per_sec_each_epoch"]
        # The whole run also counts the loader's start, so it is no faster
        # than its fastest epoch.
        assert len(each) == 3 and min(each) > 0 and r["images_per_sec"] <= max(each), r
        # Epochs 2 and 3 together: between their own rates.
        assert min(each[1:]) <= r["steady_images_per_sec"] <= max(each[1:]), r
        assert abs(r["steady_ratio"] - r["steady_images_per_sec"] / r["ceiling_images_per_sec"]) < 1e-9
        read_total = r["threads"] * r["single_thread_read_and_decode_images_per_sec"]
        assert abs(r["ratio_to_read_and_decode"] - r["images_per_sec"] / read_total) < 1e-9
        assert r["parallel_ceiling_images_per_sec"] > 0
        assert abs(r["ratio_to_parallel_ceiling"]
                   - r["images_per_sec"] / r["parallel_ceiling_images_per_sec"]) < 1e-9
        assert (r["codec"], r["decode"]) == ("zstd", "zstd")
        private = r["peak_private_mb_after_each_epoch"]
        assert len(private) == 3 and 0 < max(private) <= r["memory_bound_mb"], r
        peaks = r["peak_resident_mb_after_each_epoch"]
        assert all(total >= own for total, own in zip(peaks, private)), r
        if read == "pread":
            # Nothing mapped but this program: the whole resident set is bounded.
            assert max(peaks) <= r["memory_bound_mb"], r


def test_bench_without_stats_says_what_to_run(tmp_path, tree):
    d = tmp_path / "shards"
    shutil.copytree(tree["out"], d)
    p = run("bench", "--shards", d, check=False)
    assert p.returncode != 0
    assert "run `pipeline stats` first" in p.stderr
