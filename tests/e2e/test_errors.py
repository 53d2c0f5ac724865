"""User mistakes: one clear line and a non-zero exit."""
import os
import subprocess

from conftest import run


def one_error_line(p):
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


def test_no_train_folder(tmp_path):
    line = one_error_line(run("shards", "--imagenet", tmp_path, "--out", tmp_path / "o", check=False))
    assert str(tmp_path) in line and "no train/" in line


def test_flat_val_without_labels(tmp_path):
    (tmp_path / "train" / "n01").mkdir(parents=True)
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"x")
    line = one_error_line(run("shards", "--imagenet", tmp_path, "--out", tmp_path / "o", check=False))
    assert "no labels" in line and "--val-labels" in line


def test_val_explicitly_asked_but_missing(tmp_path):
    (tmp_path / "train" / "n01").mkdir(parents=True)
    line = one_error_line(run("shards", "--imagenet", tmp_path, "--out", tmp_path / "o",
                              "--splits", "val", check=False))
    assert "no val/" in line


def test_output_not_writable(tmp_path):
    (tmp_path / "train" / "n01").mkdir(parents=True)
    # A file to store, so that the output folder is the only problem.
    (tmp_path / "train" / "n01" / "a.JPEG").write_bytes(b"x")
    (tmp_path / "blocker").write_text("a file where the output folder should go")
    line = one_error_line(run("shards", "--imagenet", tmp_path, "--out", tmp_path / "blocker", check=False))
    assert "blocker" in line and "not writable" in line


def test_make_shards_without_imagenet():
    p = subprocess.run(["make", "-s", "shards", "IMAGENET="], capture_output=True, text=True,
                       cwd=os.path.join(os.path.dirname(__file__), "..", ".."))
    assert p.returncode != 0
    assert "IMAGENET is not set" in p.stderr


def test_verify_on_a_folder_without_manifest(tmp_path):
    line = one_error_line(run("verify", "--shards", tmp_path, check=False))
    assert "no manifest.json" in line


def test_a_second_run_into_a_busy_folder_is_refused(tmp_path, tree):
    """Another `pipeline shards` holds the output folder (its flock, taken
    here as that run would): one line, and the folder's partial file stays."""
    import fcntl
    out = tmp_path / "o"
    out.mkdir()
    partial = out / ".train-00000.shard.partial"
    partial.write_bytes(b"another run's work")
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        line = one_error_line(run("shards", "--imagenet", tree["root"], "--out", out, check=False))
        assert f"{out}: another `pipeline shards` is writing into this folder" in line, line
        assert partial.exists()
    finally:
        os.close(fd)
    run("shards", "--imagenet", tree["root"], "--out", out)
    assert not partial.exists() and (out / "manifest.json").exists()
