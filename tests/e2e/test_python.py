"""The Python package (`alexnet_pipeline`) against an independent reference:
the images decoded by the Python shard reader (shardfmt), cropped, mirrored
and normalised with numpy."""
import os
import shutil

import numpy as np
import pytest

from conftest import run
from shardfmt import read_shard

ap = pytest.importorskip("alexnet_pipeline", reason="the wheel is built by `make python`")
CROP = 224


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tree):
    """A copy of the test tree's shards with stats (for f32 and lighting)."""
    d = tmp_path_factory.mktemp("py") / "shards"
    shutil.copytree(tree["out"], d)
    run("stats", "--shards", d)
    return d


def decoded(shards_dir):
    """Every train image by (shard number, index), decoded by shardfmt."""
    import json
    m = json.load(open(os.path.join(shards_dir, "manifest.json")))
    images = {}
    for n, info in enumerate(m["splits"]["train"]["shards"]):
        for i, img in enumerate(read_shard(os.path.join(shards_dir, info["file"]))["images"]):
            images[(n, i)] = img
    return images


def crop(img, view):
    x, y, flip, _ = view
    c = img[y:y + CROP, x:x + CROP]
    return c[:, ::-1] if flip else c


def test_u8_and_f32_batches_are_numpy_crops_of_the_stored_images(shards):
    images = decoded(shards)
    mean = np.load(os.path.join(shards, "mean.npy"))
    seen = 0
    for output in ("u8", "f32"):
        loader = ap.Loader(shards, batch_size=5, output=output, threads=2, seed=3, tensors=False)
        loader.set_epoch(1)
        for batch in loader:
            x, y = batch
            assert len(x) == len(y) == len(batch.records) == len(batch.views)
            for k, (record, view) in enumerate(zip(batch.records, batch.views)):
                want = crop(images[tuple(record)], view)
                if output == "u8":
                    assert x.shape[1:] == (CROP, CROP, 3) and x.dtype == np.uint8
                    np.testing.assert_array_equal(x[k], want)
                else:
                    light = np.asarray(view[3], np.float32)
                    ref = ((want.astype(np.float32) - crop(mean, view)) + light).transpose(2, 0, 1)
                    assert x.dtype == np.float32
                    np.testing.assert_array_equal(x[k], ref)
                seen += 1
    assert seen > 10


def test_a_kept_batch_holds_its_own_pixels_while_more_are_drawn(shards):
    loader = ap.Loader(shards, batch_size=2, threads=2, prefetch=2, tensors=False)
    it = iter(loader)
    kept = next(it)
    copy = kept[0].copy()
    for _ in range(10):
        next(it)
    np.testing.assert_array_equal(kept[0], copy)


def test_state_dict_continues_with_the_batches_of_an_uninterrupted_run(shards):
    def records(batches):
        return [list(map(tuple, b.records)) for b in batches]

    whole = ap.Loader(shards, batch_size=3, threads=2, tensors=False)
    whole.set_epoch(2)
    want = [(b.records, b[0].copy()) for b in whole]
    part = ap.Loader(shards, batch_size=3, threads=2, tensors=False)
    part.set_epoch(2)
    it = iter(part)
    for _ in range(3):
        next(it)
    state = part.state_dict()
    assert state == {"epoch": 2, "batch": 3}
    resumed = ap.Loader(shards, batch_size=3, threads=2, tensors=False)
    resumed.load_state_dict(state)
    got = [(b.records, b[0]) for b in resumed]
    assert len(got) == len(want) - 3 == len(resumed) - 3
    for (gr, gx), (wr, wx) in zip(got, want[3:]):
        assert gr == wr
        np.testing.assert_array_equal(gx, wx)


def test_ranks_together_are_the_one_process_epoch(shards):
    one = {tuple(r) for b in ap.Loader(shards, batch_size=4, threads=1, tensors=False)
           for r in b.records}
    ranks = [{tuple(r) for b in ap.Loader(shards, batch_size=2, threads=1, rank=k, world=2,
                                           tensors=False) for r in b.records} for k in range(2)]
    assert not ranks[0] & ranks[1]
    assert ranks[0] | ranks[1] == one


def test_errors_are_python_exceptions_naming_the_problem(tmp_path, shards):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        ap.Loader(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="mode"):
        ap.Loader(shards, mode="sideways")
    damaged = tmp_path / "damaged"
    shutil.copytree(shards, damaged)
    s = read_shard(damaged / "train-00000.shard")
    r = s["records"][0]
    data = bytearray((damaged / "train-00000.shard").read_bytes())
    data[r["offset"] + r["len"] // 2] ^= 0x20
    (damaged / "train-00000.shard").write_bytes(bytes(data))
    loader = ap.Loader(damaged, batch_size=4, threads=1, drop_last=False, tensors=False)
    with pytest.raises(ap.DamagedShardError, match=r"train-00000.shard: record 0"):
        for _ in loader:
            pass


def test_ctrl_c_while_iterating_raises_keyboard_interrupt_and_exits(shards):
    """SIGINT once the child says it is iterating (no sleeps to get lucky
    with): KeyboardInterrupt in the child, which then exits promptly (its
    workers stopped, nothing left hanging at interpreter exit)."""
    import signal
    import subprocess
    import sys
    code = (
        "import alexnet_pipeline as ap, sys\n"
        f"loader = ap.Loader({str(shards)!r}, batch_size=1, threads=1, prefetch=1, tensors=False)\n"
        "try:\n"
        "    while True:\n"
        "        for i, b in enumerate(loader):\n"
        "            if i == 0:\n"
        "                print('iterating', flush=True)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    sys.exit(3)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "iterating"
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 3 and "interrupted" in out, (p.returncode, out)


def test_the_pytorch_example_learns_on_fashion_mnist(fashion):
    """python/examples/pytorch_train.py (the loader's uint8 crops normalised
    by torch, the paper's net at 1/16 width, CPU): the loss falls within
    40 steps. Runs with the trainer's torch (TORCH_PY, set by make test)."""
    import subprocess
    torch_py = os.environ.get("TORCH_PY")
    if not torch_py:
        pytest.skip("TORCH_PY (a python with torch and alexnet_pipeline) is set by make test")
    example = os.path.join(os.path.dirname(__file__), "..", "..", "python", "examples",
                           "pytorch_train.py")
    p = subprocess.run([torch_py, example, "--shards", fashion / "shards", "--device", "cpu",
                        "--steps", "40", "--width", "0.0625", "--batch-size", "32",
                        "--threads", "2"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    losses = [float(line.split()[3]) for line in p.stdout.splitlines() if line.startswith("step ")]
    assert len(losses) == 40
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.03, (first, last)
