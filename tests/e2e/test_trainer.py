"""`trainer` end to end on a real labelled set: Fashion-MNIST (Debian's
dataset-fashion-mnist) written as an ILSVRC-style tree, through `pipeline
shards` and `pipeline stats`, trained on this CPU, evaluated with ten crops;
and the trainer's user errors."""
import json
import os
import shutil
import struct
import subprocess
import zlib

import pytest

from conftest import TRAINER, run as pipeline, trainer

@pytest.fixture(scope="module")
def kaiming_run(fashion):
    """The `make learn-fashion` recipe: width 0.25, batch 64, 240 steps."""
    out = fashion / "run"
    p = trainer("run", "--shards", fashion / "shards", "--out", out, "--devices", "cpu",
                "--width-mult", "0.25", "--batch-size", "64", "--max-steps", "240",
                "--init", "kaiming", "--quiet")
    lines = [json.loads(l) for l in open(out / "metrics.jsonl")]
    return dict(out=out, stdout=p.stdout, lines=lines)


def test_fashion_mnist_is_learned_on_cpu(kaiming_run):
    steps = [l for l in kaiming_run["lines"] if "loss" in l]
    epochs = [l for l in kaiming_run["lines"] if "val_top1" in l]
    assert [s["step"] for s in steps] == list(range(1, 241))
    for s in steps:
        assert s["img_per_sec"] > 0 and s["loader_wait"] >= 0 and s["lr"] in (0.01, 0.001)
    first = sum(s["loss"] for s in steps[:20]) / 20
    last = sum(s["loss"] for s in steps[-20:]) / 20
    assert last < 0.6 * first, (first, last)
    # 3000 images / 64 = 46 steps an epoch: five full epochs and the stop.
    assert [e["step"] for e in epochs] == [46, 92, 138, 184, 230, 240]
    assert epochs[-1]["partial"] is True
    # Ten balanced classes: chance is 10% top-1, 50% top-5.
    assert epochs[-1]["val_top1"] > 0.5, epochs[-1]
    assert epochs[-1]["val_top5"] > 0.9, epochs[-1]
    assert "top-1" in kaiming_run["stdout"]


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(33)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert zlib.crc32(head[12:29]) == struct.unpack(">I", head[29:33])[0]
    return struct.unpack(">II", head[16:24])


def test_run_folder_holds_curves_and_a_checkpoint(kaiming_run):
    out = kaiming_run["out"]
    assert png_size(out / "curves.png") == (1200, 480)
    latest = (out / "checkpoints" / "LATEST").read_text().strip()
    assert latest == "step-00000240"
    state = json.load(open(out / "checkpoints" / latest / "state.json"))
    assert state["step"] == 240 and state["epoch"] == 5 and state["batch"] == 10
    assert state["init"] == "kaiming" and state["input_scale"] is not None


def test_ten_crop_eval_of_the_checkpoint(fashion, kaiming_run):
    centre = json.loads(trainer("eval", "--checkpoint", kaiming_run["out"], "--shards",
                                fashion / "shards", "--json").stdout)
    last = [l for l in kaiming_run["lines"] if "val_top1" in l][-1]
    # The same weights and crops as the run's own final evaluation.
    assert centre["images"] == 500
    assert centre["top1"] == pytest.approx(last["val_top1"], abs=1e-9)
    assert centre["top5"] == pytest.approx(last["val_top5"], abs=1e-9)
    # Ten crops of the split's first 200 images (2,000 views).
    first = ["--max-images", "200"]
    ten = json.loads(trainer("eval", "--checkpoint", kaiming_run["out"], "--shards",
                             fashion / "shards", "--ten-crop", *first, "--json").stdout)
    assert ten["crops"] == "ten-crop" and ten["images"] == 200
    assert ten["top1"] > 0.5
    # Against PyTorch alone (tests/reference/ten_crop_eval.py: the paper's
    # net in PyTorch with the checkpoint's weights, the Python loader's
    # batches cut after the same first images, softmaxes averaged in
    # PyTorch): the same predictions up to float rounding, at most 2 images
    # either way, and the same loss to 1e-4 (one view instead of ten, or
    # other images, move it by ~2%).
    torch_py = os.environ.get("TORCH_PY")
    if not torch_py:
        pytest.skip("TORCH_PY (a python with torch and alexnet_pipeline) is set by make test")
    reference = os.path.join(os.path.dirname(__file__), "..", "reference", "ten_crop_eval.py")
    for ours, flags, images in ((centre, [], 500), (ten, ["--ten-crop", *first], 200)):
        p = subprocess.run([torch_py, reference, kaiming_run["out"], fashion / "shards", *flags],
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr
        want = json.loads(p.stdout)
        assert want["images"] == ours["images"] == images
        for k in ("top1", "top5"):
            assert abs(ours[k] - want[k]) <= 2 / images, (flags, ours, want)
        assert ours["loss"] == pytest.approx(want["loss"], rel=1e-4), (flags, ours, want)


def test_resume_refuses_to_overwrite_and_continues(fashion, tmp_path):
    out = tmp_path / "r"
    args = ["run", "--shards", fashion / "shards", "--out", out, "--width-mult", "0.0625",
            "--batch-size", "16", "--quiet", "--init", "kaiming"]
    p = trainer(*args, "--max-steps", "0", check=False)
    assert p.returncode != 0 and "--max-steps must be at least 1" in p.stderr, p.stderr
    assert not (out / "checkpoints").exists()
    trainer(*args, "--max-steps", "2")
    # Resumed at its --max-steps already: no further step, the same checkpoint.
    p = trainer(*args, "--max-steps", "2", "--resume")
    assert "nothing to train" in p.stderr, p.stderr
    steps = [json.loads(l)["step"] for l in open(out / "metrics.jsonl") if '"loss"' in l]
    assert steps == [1, 2]
    assert (out / "checkpoints" / "LATEST").read_text().strip() == "step-00000002"
    p = trainer(*args, "--max-steps", "3", check=False)
    assert p.returncode != 0 and "--resume" in p.stderr
    trainer(*args, "--max-steps", "3", "--resume")
    steps = [json.loads(l)["step"] for l in open(out / "metrics.jsonl") if '"loss"' in l]
    assert steps == [1, 2, 3]
    # The checkpoint keeps the run's shards, epochs and SGD constants, so a
    # bare `--resume --out` (what Ctrl-C tells the user) continues it; here
    # ./shards is not a shard folder, so the default would fail.
    state = json.load(open(out / "checkpoints" / (out / "checkpoints" / "LATEST").read_text().strip()
                           / "state.json"))
    assert state["settings"] == {"shards": str((fashion / "shards").resolve()), "epochs": 90,
                                 "momentum": 0.9, "weight_decay": 0.0005}
    trainer("run", "--out", out, "--width-mult", "0.0625", "--batch-size", "16", "--quiet",
            "--max-steps", "4", "--resume")
    steps = [json.loads(l)["step"] for l in open(out / "metrics.jsonl") if '"loss"' in l]
    assert steps == [1, 2, 3, 4]
    # A setting given again on resume becomes the run's own for later resumes.
    trainer("run", "--out", out, "--width-mult", "0.0625", "--batch-size", "16", "--quiet",
            "--max-steps", "5", "--epochs", "7", "--resume")
    state = json.load(open(out / "checkpoints" / (out / "checkpoints" / "LATEST").read_text().strip()
                           / "state.json"))
    assert state["settings"]["epochs"] == 7
    assert state["settings"]["shards"] == str((fashion / "shards").resolve())
    # Resumed on another shard set (a subset of the same photos, so another
    # manifest id): refused, naming the checkpoint, both sets and why.
    other = tmp_path / "other"
    pipeline("shards", "--imagenet", fashion / "tree", "--out", other, "--per-class", "20")
    pipeline("stats", "--shards", other)
    p = trainer("run", "--shards", other, "--out", out, "--width-mult", "0.0625",
                "--batch-size", "16", "--quiet", "--max-steps", "6", "--resume", check=False)
    assert p.returncode != 0 and "trained on shard set" in p.stderr and str(other) in p.stderr, \
        p.stderr
    steps = [json.loads(l)["step"] for l in open(out / "metrics.jsonl") if '"loss"' in l]
    assert steps == [1, 2, 3, 4, 5]


def test_errors_are_one_clear_line(fashion, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(fashion / "shards", bare)
    os.remove(bare / "stats.json")
    p = trainer("run", "--shards", bare, "--out", tmp_path / "x", check=False)
    assert p.returncode != 0 and "pipeline stats" in p.stderr, p.stderr
    p = trainer("run", "--shards", tmp_path / "nowhere", "--out", tmp_path / "x", check=False)
    assert p.returncode != 0 and "nowhere" in p.stderr, p.stderr
    p = trainer("bench", "--devices", "cpu,cpu,cpu", check=False)
    assert p.returncode != 0 and "one device or two" in p.stderr
    p = trainer("bench", "--devices", "tpu", check=False)
    assert p.returncode != 0 and "`tpu`" in p.stderr
    p = trainer("bench", "--devices", "cpu", "--cuda-graph", check=False)
    assert p.returncode != 0 and "one CUDA device" in p.stderr, p.stderr
    p = trainer("eval", "--checkpoint", tmp_path, "--shards", fashion / "shards", check=False)
    assert p.returncode != 0 and "not a checkpoint" in p.stderr
    p = trainer("eval", "--checkpoint", tmp_path, "--max-images", "0", check=False)
    assert p.returncode != 0 and "invalid value '0' for '--max-images <N>'" in p.stderr, p.stderr
    if shutil.which("nvidia-smi") is None:
        p = trainer("bench", "--devices", "cuda:0", check=False)
        assert p.returncode != 0 and "no CUDA device" in p.stderr
    # The OS's reason once, on one line (it was printed again as a cause).
    p = trainer("plot", "--run", tmp_path / "nowhere", check=False, env=dict(os.environ, RUST_BACKTRACE="0"))
    assert p.returncode != 0, p.stderr
    assert p.stderr.strip() == f"error: {tmp_path / 'nowhere' / 'metrics.jsonl'}: {os.strerror(2)} (os error 2)", p.stderr


def test_fused_lrn_step_matches_the_band_lrn_step():
    """`--check-lrn`: one training step with the fused LRN (on the CPU, its
    formulas as tensor operations, the backward spliced in by hand) and one
    with autograd through the band LRN, from the same weights and batch,
    each against the band step in float64."""
    p = trainer("bench", "--devices", "cpu", "--width-mult", "0.125", "--batch-size", "4",
                "--steps", "1", "--warmup", "0", "--kernels", "on", "--check-lrn")
    line = next(l for l in p.stdout.splitlines() if l.startswith("LRN CHECK"))
    loss = dict(part.split("=") for part in line.split(";")[0].split()[4:])
    band, fused, exact = float(loss["band"]), float(loss["fused"]), float(loss["f64-band"])
    assert abs(band - fused) <= 1e-5 * band and abs(fused - exact) <= 1e-5 * exact, line
    # "... band 9.78e-7 (b.conv2.bias), fused 9.23e-7 (b.conv1.weight)": on the
    # CPU both steps are float32 arithmetic, so both are float32 rounding away
    # from float64 (a GPU's TF32 convolutions are not).
    distances = [float(line.rsplit(f"{step} ", 1)[1].split()[0]) for step in ("band", "fused")]
    assert all(0 < d < 1e-4 for d in distances), line
    # Where it cannot run, a clear error rather than a silent fallback.
    p = trainer("bench", "--devices", "cpu,cpu", "--kernels", "on", check=False)
    assert p.returncode != 0 and "two devices" in p.stderr, p.stderr
    p = trainer("bench", "--devices", "cpu", "--kernels", "off", "--check-lrn", check=False)
    assert p.returncode != 0 and "--check-lrn" in p.stderr, p.stderr


def logged_steps(metrics):
    """Steps metrics.jsonl holds so far (a line each, written as it ends)."""
    if not metrics.exists():
        return 0
    return sum('"loss"' in line for line in open(metrics))


def test_ctrl_c_checkpoints_and_resume_continues(fashion, tmp_path):
    """Ctrl-C once two steps are logged (waiting for that, not for a time):
    the run checkpoints where it stopped and says how to resume; resumed,
    it goes on from the next step."""
    import signal
    import time
    out = tmp_path / "c"
    args = [TRAINER, "run", "--shards", fashion / "shards", "--out", out, "--width-mult", "0.0625",
            "--batch-size", "16", "--quiet", "--init", "kaiming", "--max-steps", "100000"]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while logged_steps(out / "metrics.jsonl") < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no step logged in 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "--resume" in stdout and "Ctrl-C" in stderr
    state = json.load(open(out / "checkpoints" / (out / "checkpoints" / "LATEST").read_text().strip()
                           / "state.json"))
    stopped = state["step"]
    assert stopped >= 2
    trainer("run", *map(str, args[2:-2]), "--max-steps", stopped + 2, "--resume")
    steps = [json.loads(l)["step"] for l in open(out / "metrics.jsonl") if '"loss"' in l]
    assert steps == list(range(1, stopped + 3))


def spoiled_copy(fashion, tmp_path, name):
    """A copy of the Fashion-MNIST shard folder to damage."""
    bad = tmp_path / name
    shutil.copytree(fashion / "shards", bad)
    return bad


def test_damaged_statistics_are_refused_naming_the_file(fashion, tmp_path):
    """stats.json and mean.npy are checked when the shards are opened: a
    negative eigenvalue, statistics of another shard set, a mean image full
    of NaN each stop the run with the file and the problem, before a step."""
    args = ["--width-mult", "0.0625", "--batch-size", "16", "--quiet", "--max-steps", "1"]
    cases = [
        ("negative", lambda s: s["eigenvalues"].__setitem__(0, -5.0), "eigenvalue -5 is negative"),
        ("other-set", lambda s: s.__setitem__("manifest_id", "0" * 16), "computed from shard set"),
    ]
    for name, spoil, message in cases:
        bad = spoiled_copy(fashion, tmp_path, name)
        stats = json.load(open(bad / "stats.json"))
        spoil(stats)
        json.dump(stats, open(bad / "stats.json", "w"))
        p = trainer("run", "--shards", bad, "--out", tmp_path / f"run-{name}", *args, check=False)
        assert p.returncode == 1, p.stderr
        assert "stats.json" in p.stderr and message in p.stderr, p.stderr
        assert "pipeline stats" in p.stderr, p.stderr
    bad = spoiled_copy(fashion, tmp_path, "nan-mean")
    raw = bytearray(open(bad / "mean.npy", "rb").read())
    header = raw.index(b"\n") + 1  # .npy: magic, header, then little-endian float32 data
    raw[header:header + 16] = struct.pack("<4f", *[float("nan")] * 4)
    open(bad / "mean.npy", "wb").write(bytes(raw))
    p = trainer("run", "--shards", bad, "--out", tmp_path / "run-nan", *args, check=False)
    assert p.returncode == 1 and "mean.npy" in p.stderr and "not finite" in p.stderr, p.stderr


def test_labels_past_the_class_list_are_refused_naming_the_shard(fashion, tmp_path):
    """A manifest whose class list is shorter than the labels in its shards
    is refused when the data is opened, naming the shard and the record (it
    used to panic inside libtorch's loss, exit 101)."""
    bad = spoiled_copy(fashion, tmp_path, "few-classes")
    manifest = json.load(open(bad / "manifest.json"))
    manifest["classes"] = manifest["classes"][:3]
    json.dump(manifest, open(bad / "manifest.json", "w"))
    p = trainer("run", "--shards", bad, "--out", tmp_path / "run", "--width-mult", "0.0625",
                "--batch-size", "16", "--quiet", "--max-steps", "1", check=False)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert ".shard: record" in p.stderr and "manifest.json lists 3 classes" in p.stderr, p.stderr


def test_damaged_checkpoints_are_named_and_resume_falls_back(fashion, tmp_path):
    """A flipped byte in the newest checkpoint's weights: eval refuses it
    naming the file; --resume warns and continues from the newest intact
    checkpoint (kept by --keep-checkpoints), and ends where a run resumed
    from that checkpoint undamaged ends."""
    out = tmp_path / "r"
    args = ["run", "--shards", fashion / "shards", "--out", out, "--width-mult", "0.0625",
            "--batch-size", "16", "--quiet", "--init", "kaiming", "--devices", "cpu"]
    trainer(*args, "--max-steps", "2")
    trainer(*args, "--max-steps", "4", "--resume")
    shutil.copytree(out, tmp_path / "clean")
    model = out / "checkpoints/step-00000004/model.safetensors"
    data = bytearray(model.read_bytes())
    data[-100] ^= 1
    model.write_bytes(bytes(data))
    p = trainer("eval", "--checkpoint", out, "--shards", fashion / "shards", "--devices", "cpu",
                check=False)
    assert p.returncode != 0 and f"{model}: damaged: its xxh3-64 is" in p.stderr, p.stderr
    p = trainer(*args, "--max-steps", "6", "--resume")
    assert f"warning: {model}: damaged" in p.stderr and "resuming from an earlier checkpoint" in p.stderr, p.stderr
    # The same as resuming from step 2 of an undamaged copy.
    clean = tmp_path / "clean"
    shutil.rmtree(clean / "checkpoints/step-00000004")
    (clean / "checkpoints/LATEST").write_text("step-00000002\n")
    trainer(*[a if a != out else clean for a in args], "--max-steps", "6", "--resume")
    assert ((out / "checkpoints/step-00000006/model.safetensors").read_bytes()
            == (clean / "checkpoints/step-00000006/model.safetensors").read_bytes())
