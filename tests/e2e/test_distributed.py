"""Data-parallel training and evaluation on this CPU: ranks started by
`trainer launch` or by PyTorch's own torchrun meet through c10d's TCPStore
and reduce with ProcessGroupGloo. Each is checked against one process:
weights after a step with the global batch, eval counts, exact resume."""
import json
import os
import struct

import numpy as np
import pytest

from conftest import trainer

TORCHRUN = os.path.join(os.environ.get("TORCH_VENV", os.path.expanduser("~/.cache/alexnet-rs/torch")),
                        "bin", "torchrun")
# A tiny AlexNet on the CPU; one loader thread and one OpenMP thread per rank
# (torchrun's default), so that runs are comparable bit for bit.
SMALL = ["--width-mult", "0.0625", "--init", "kaiming", "--devices", "cpu", "--loader-threads", "1",
         "--quiet"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def safetensors(path):
    """name -> float32 array, read with the format's own layout (an 8-byte
    header length, a JSON header, then the raw tensors)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", (name, t["dtype"])
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + a:8 + n + b], dtype="<f4").reshape(t["shape"])
    return out


def weights(run, step):
    return safetensors(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors")


def losses(run):
    return [json.loads(l)["loss"] for l in open(run / "metrics.jsonl") if '"loss"' in l]


def launch(nproc, *args, check=True):
    return trainer("launch", "--nproc-per-node", nproc, "--", *args, check=check, env=ENV)


def test_ranks_step_as_one_process_with_the_global_batch(fashion, tmp_path):
    """Two ranks of batch 8 each, gradients averaged, make one process's
    steps at batch 16 (dropout off: the one draw that differs by rank).
    Only the order of float additions differs, so losses and weights agree
    to rounding; a rank that kept its own gradient, or a sum in place of
    the mean, would be off by orders of magnitude more."""
    shards = fashion / "shards"
    args = ["--shards", shards, *SMALL, "--batch-size", "16", "--dropout", "0", "--max-steps", "3"]
    trainer("run", "--out", tmp_path / "one", *args, env=ENV)
    p = launch(2, "run", "--out", tmp_path / "two", *args)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 3
    np.testing.assert_allclose(two, one, rtol=1e-5)
    w1, w2 = weights(tmp_path / "one", 3), weights(tmp_path / "two", 3)
    assert w1.keys() == w2.keys()
    for name in w1:
        scale = np.abs(w1[name]).max()
        assert np.abs(w1[name] - w2[name]).max() <= 1e-5 * scale + 1e-7, name
    # The same ranks under PyTorch's torchrun (its agent hosts the store):
    # the same bytes as under `trainer launch`.
    if not os.path.exists(TORCHRUN):
        pytest.fail(f"no torchrun at {TORCHRUN}: run `make setup-torch`")
    import subprocess
    trainer_bin = os.path.abspath(os.environ.get("TRAINER_BIN", "target/release/trainer"))
    subprocess.run([TORCHRUN, "--no-python", "--standalone", "--nproc-per-node", "2", trainer_bin,
                    "run", "--out", str(tmp_path / "torchrun"), *map(str, args)],
                   check=True, capture_output=True, env=ENV, timeout=600)
    two_bytes = (tmp_path / "two/checkpoints/step-00000003/model.safetensors").read_bytes()
    torchrun_bytes = (tmp_path / "torchrun/checkpoints/step-00000003/model.safetensors").read_bytes()
    assert two_bytes == torchrun_bytes
    # Only rank 0 writes the run folder; every rank's lines are prefixed.
    assert all(l.startswith("[rank ") for l in p.stdout.splitlines() if l), p.stdout
    assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["LATEST", "step-00000003"]


def test_eval_over_ranks_counts_what_one_process_counts(fashion, tmp_path):
    """Three ranks score 167, 167 and 166 of the 500 val images; the summed
    counts are the one process's exactly, ten-crop as centre crop."""
    shards = fashion / "shards"
    trainer("run", "--out", tmp_path / "run", "--shards", shards, *SMALL, "--batch-size", "16",
            "--max-steps", "5", env=ENV)
    for crops in ([], ["--ten-crop"]):
        args = ["eval", "--checkpoint", tmp_path / "run", "--shards", shards, "--devices", "cpu",
                "--batch-size", "50", "--json", *crops]
        one = json.loads(trainer(*args, env=ENV).stdout)
        out = launch(3, *args).stdout
        lines = [l for l in out.splitlines() if l.startswith("[rank 0] {")]
        assert len(lines) == 1, out
        three = json.loads(lines[0][len("[rank 0] "):])
        assert one["images"] == three["images"] == 500
        assert (three["top1"], three["top5"]) == (one["top1"], one["top5"]), (one, three)
        assert abs(three["loss"] - one["loss"]) < 1e-6 * abs(one["loss"])


def test_resumed_ranks_continue_exactly(fashion, tmp_path):
    """Stopped at step 4 and resumed to 8, two ranks (dropout on, drawn per
    rank and step) end with the bytes of two ranks that ran 8 straight."""
    args = ["--shards", fashion / "shards", *SMALL, "--batch-size", "16"]
    launch(2, "run", "--out", tmp_path / "a", *args, "--max-steps", "4")
    launch(2, "run", "--out", tmp_path / "a", *args, "--max-steps", "8", "--resume")
    launch(2, "run", "--out", tmp_path / "b", *args, "--max-steps", "8")
    a = (tmp_path / "a/checkpoints/step-00000008/model.safetensors").read_bytes()
    b = (tmp_path / "b/checkpoints/step-00000008/model.safetensors").read_bytes()
    assert a == b
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_launch_refuses_with_the_rank_and_the_reason(fashion, tmp_path):
    # The global batch must split evenly over the ranks.
    p = launch(2, "run", "--out", tmp_path / "r", "--shards", fashion / "shards", *SMALL,
               "--batch-size", "15", "--max-steps", "1", check=False)
    assert p.returncode != 0
    assert "--batch-size 15 is the global batch: it must split evenly over the 2 ranks" in p.stderr, p.stderr
    assert "error: rank " in p.stderr and "exited with status" in p.stderr, p.stderr
    # Nothing after `--`.
    p = trainer("launch", "--nproc-per-node", "2", check=False)
    assert p.returncode != 0 and "--" in p.stderr
    # A launcher variable that makes no sense names itself.
    env = dict(ENV, RANK="2", WORLD_SIZE="2")
    p = trainer("run", "--out", tmp_path / "r", "--shards", fashion / "shards", *SMALL, check=False,
                env=env)
    assert p.returncode != 0 and "RANK=2 is not below WORLD_SIZE=2" in p.stderr, p.stderr
