"""Data-parallel training and evaluation on this CPU: ranks started by
`trainer launch` or by PyTorch's own torchrun meet through c10d's TCPStore
and reduce with ProcessGroupGloo. Each is checked against one process:
weights after a step with the global batch, eval counts, exact resume."""
import json
import os
import signal
import socket
import struct
import subprocess
import time

import numpy as np
import pytest

from conftest import TRAINER, trainer

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
    """Two ranks of batch 32 each, gradients averaged, make one process's
    steps at batch 64 (dropout off: the one draw that differs by rank), for
    10 steps. Only the order of float additions differs, so the bound is
    measured in the same test: the one process run again with 2 OpenMP
    threads instead of 1 differs from itself by the same kind of rounding,
    tiny for a few steps and then growing chaotically (~10x a step; on the
    2-core EPYC 3.7e-6 at step 5, 2.9e-3 at step 10, weights 5.7e-4; the
    two ranks: 3.7e-6, 2.9e-3, 5.5e-4). The two ranks may differ from the
    one process by at most 3x that, and by 1e-5 over the first 5 steps. A
    rank that kept its own gradient, or a sum in place of the mean, is off
    from the second step by orders of magnitude more."""
    shards = fashion / "shards"
    # --kernels on: the fused LRN's tensor form on the CPU, whose backward
    # hands over gradients in three segments (conv3-fc8 first), each
    # all-reduced as it comes; the other tests run libtorch's LRN, whose
    # gradients come all at once.
    args = ["--shards", shards, *SMALL, "--batch-size", "64", "--dropout", "0", "--max-steps", "10",
            "--kernels", "on"]
    trainer("run", "--out", tmp_path / "one", *args, env=ENV)
    trainer("run", "--out", tmp_path / "threads", *args, env=dict(ENV, OMP_NUM_THREADS="2"))
    p = launch(2, "run", "--out", tmp_path / "two", *args)
    one, threads, two = (np.array(losses(tmp_path / r)) for r in ("one", "threads", "two"))
    assert len(one) == len(threads) == len(two) == 10
    np.testing.assert_allclose(two[:5], one[:5], rtol=1e-5)
    rounding = float(np.max(np.abs(threads - one) / one))
    assert rounding < 1e-2, f"the rounding reference itself drifted {rounding:.1e}"
    np.testing.assert_allclose(two, one, rtol=3 * rounding + 1e-5)
    w1, wt, w2 = (weights(tmp_path / r, 10) for r in ("one", "threads", "two"))
    assert w1.keys() == w2.keys()

    def worst(w):
        return max(float(np.abs(w1[k] - w[k]).max()) for k in w1)

    assert worst(w2) <= 3 * worst(wt) + 1e-5, (worst(w2), worst(wt))
    # Only rank 0 writes the run folder; every rank's lines are prefixed.
    assert all(l.startswith("[rank ") for l in p.stdout.splitlines() if l), p.stdout
    assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["LATEST", "step-00000010"]
    # The same two ranks again, and under PyTorch's own torchrun (its agent
    # hosts the store): the same bytes.
    launch(2, "run", "--out", tmp_path / "again", *args)
    if not os.path.exists(TORCHRUN):
        pytest.fail(f"no torchrun at {TORCHRUN}: run `make setup-torch`")
    subprocess.run([TORCHRUN, "--no-python", "--standalone", "--nproc-per-node", "2",
                    os.path.abspath(TRAINER), "run", "--out", str(tmp_path / "torchrun"),
                    *map(str, args)], check=True, capture_output=True, env=ENV, timeout=600)
    model = "checkpoints/step-00000010/model.safetensors"
    two_bytes = (tmp_path / "two" / model).read_bytes()
    assert (tmp_path / "again" / model).read_bytes() == two_bytes
    assert (tmp_path / "torchrun" / model).read_bytes() == two_bytes


def test_bf16_gradients_are_the_f32_ones_rounded(fashion, tmp_path):
    """--grad-comm bf16: the first loss is the same (no update yet), the
    updates differ by bfloat16's rounding only: close, but not the same."""
    args = ["--shards", fashion / "shards", *SMALL, "--batch-size", "32", "--dropout", "0",
            "--max-steps", "3"]
    for comm in ("f32", "bf16"):
        launch(2, "run", "--out", tmp_path / comm, *args, "--grad-comm", comm)
    f32, bf16 = losses(tmp_path / "f32"), losses(tmp_path / "bf16")
    assert f32[0] == bf16[0]
    np.testing.assert_allclose(bf16, f32, rtol=1e-3)
    w32, w16 = weights(tmp_path / "f32", 3), weights(tmp_path / "bf16", 3)
    worst = max(float(np.abs(w32[k] - w16[k]).max()) for k in w32)
    assert 0 < worst < 1e-2, worst


def test_eval_over_ranks_counts_what_one_process_counts(fashion, tmp_path):
    """Three ranks score 167, 167 and 166 of the 500 val images (centre
    crop), or 67, 67 and 66 of the first 200 (ten-crop, --max-images); the
    summed counts are the one process's exactly."""
    shards = fashion / "shards"
    trainer("run", "--out", tmp_path / "run", "--shards", shards, *SMALL, "--batch-size", "16",
            "--max-steps", "5", env=ENV)
    for crops, images in (([], 500), (["--ten-crop", "--max-images", "200"], 200)):
        args = ["eval", "--checkpoint", tmp_path / "run", "--shards", shards, "--devices", "cpu",
                "--batch-size", "50", "--json", *crops]
        one = json.loads(trainer(*args, env=ENV).stdout)
        out = launch(3, *args).stdout
        lines = [l for l in out.splitlines() if l.startswith("[rank 0] {")]
        assert len(lines) == 1, out
        three = json.loads(lines[0][len("[rank 0] "):])
        assert one["images"] == three["images"] == images
        assert (three["top1"], three["top5"]) == (one["top1"], one["top5"]), (one, three)
        assert abs(three["loss"] - one["loss"]) < 1e-6 * abs(one["loss"])


def test_resumed_ranks_continue_exactly(fashion, tmp_path):
    """Stopped at step 4 and resumed to 8, two ranks (dropout on, drawn per
    rank and step; the lr warming up across the stop) end with the bytes of
    two ranks that ran 8 straight."""
    # 3,000 images / 16 = 187 steps an epoch: 0.05 epochs is 9 warm-up steps.
    args = ["--shards", fashion / "shards", *SMALL, "--batch-size", "16", "--warmup-epochs", "0.05"]
    launch(2, "run", "--out", tmp_path / "a", *args, "--max-steps", "4")
    launch(2, "run", "--out", tmp_path / "a", *args, "--max-steps", "8", "--resume")
    launch(2, "run", "--out", tmp_path / "b", *args, "--max-steps", "8")
    a = (tmp_path / "a/checkpoints/step-00000008/model.safetensors").read_bytes()
    b = (tmp_path / "b/checkpoints/step-00000008/model.safetensors").read_bytes()
    assert a == b
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    lrs = [json.loads(l)["lr"] for l in open(tmp_path / "a/metrics.jsonl") if '"loss"' in l]
    np.testing.assert_allclose(lrs, [0.01 * k / 9 for k in range(1, 9)], rtol=1e-12)


def test_a_killed_rank_ends_the_run_naming_it(fashion, tmp_path):
    """SIGKILL to rank 1 mid-run: `trainer launch` stops rank 0 and exits
    non-zero naming rank 1; run alone (as under another launcher), rank 0
    ends by itself with an error, well within --dist-timeout."""
    args = ["run", "--shards", fashion / "shards", *SMALL, "--batch-size", "16", "--epochs", "50"]
    proc = subprocess.Popen([TRAINER, "launch", "--nproc-per-node", "2", "--",
                             *map(str, args), "--out", str(tmp_path / "l")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    # Rank 1 is killed once both ranks have stepped (metrics.jsonl has a line).
    kill_rank_when_stepping(proc, tmp_path / "l", rank=1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "error: rank 1 was killed by signal 9; the other ranks were stopped" in err, err
    # Without a launcher: rank 0's own error, not a hang.
    port = free_port()
    env = lambda r: dict(ENV, RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                         MASTER_PORT=str(port), RUST_BACKTRACE="0")
    cmd = [TRAINER, *map(str, args), "--out", str(tmp_path / "m"), "--dist-timeout", "60"]
    ranks = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env(r)) for r in (0, 1)]
    kill_rank_when_stepping(ranks[1], tmp_path / "m", rank=None)
    started = time.monotonic()
    _, err = ranks[0].communicate(timeout=120)
    assert ranks[0].returncode != 0
    assert time.monotonic() - started < 60
    assert err.startswith("error: rank 0: averaging gradients"), err
    assert "(rank 1 stopped)" in err, err
    ranks[1].wait()


def kill_rank_when_stepping(proc, run, rank):
    """SIGKILL to `proc` itself (rank None) or to its child of that RANK, as
    soon as the run's metrics.jsonl holds a step line."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (run / "metrics.jsonl").exists() and '"loss"' in (run / "metrics.jsonl").read_text():
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    else:
        raise AssertionError("no step within 120 s")
    if rank is None:
        proc.kill()
        return
    for pid in children(proc.pid):
        environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            os.kill(pid, signal.SIGKILL)
            return
    raise AssertionError(f"no child with RANK={rank}")


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_set_ups_get_one_line_naming_the_problem(fashion, tmp_path):
    run = ["run", "--out", tmp_path / "r", "--shards", fashion / "shards", *SMALL, "--max-steps", "1"]
    # The global batch must split evenly over the ranks.
    p = launch(2, *run, "--batch-size", "15", check=False)
    assert p.returncode != 0
    assert "--batch-size 15 is the global batch: it must split evenly over the 2 ranks" in p.stderr, p.stderr
    assert "error: rank " in p.stderr and "exited with status" in p.stderr, p.stderr
    # Nothing after `--`.
    p = trainer("launch", "--nproc-per-node", "2", check=False)
    assert p.returncode != 0 and "--" in p.stderr
    bare = dict(ENV, RUST_BACKTRACE="0")
    # torchrun's variables that make no sense name themselves.
    for extra, want in [
        (dict(RANK="2", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1"), "RANK=2 is not below WORLD_SIZE=2"),
        (dict(RANK="0", WORLD_SIZE="2"), "WORLD_SIZE is set but MASTER_ADDR is not"),
    ]:
        p = trainer(*run, check=False, env=dict(bare, **extra))
        assert p.returncode != 0 and want in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    # The store's port taken by another program.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(bare, RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        p = trainer(*run, check=False, env=env)
    assert p.returncode != 0, p.stderr
    assert f"joining the group at 127.0.0.1:{port}" in p.stderr and "address already in use" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
