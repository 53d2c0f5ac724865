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
    x, y, flip = int(view["x"]), int(view["y"]), bool(view["mirrored"])
    c = img[y:y + CROP, x:x + CROP]
    return c[:, ::-1] if flip else c


CORNERS = {(0, 0), (32, 0), (0, 32), (32, 32), (16, 16)}


def check_views(mode, views, per_image):
    """The windows each mode promises, from the views the loader reports."""
    places = [(int(v["x"]), int(v["y"]), bool(v["mirrored"])) for v in views]
    if mode == "center":
        assert places == [(16, 16, False)] * len(places)
    elif mode == "tencrop":
        for k in range(0, len(places), per_image):
            assert set(places[k:k + per_image]) == {(x, y, m) for x, y in CORNERS
                                                     for m in (False, True)}
    else:
        assert all(0 <= x <= 32 and 0 <= y <= 32 for x, y, _ in places)
    if mode != "train":
        assert not views["light"].any()


@pytest.mark.parametrize("mode", ["train", "center", "tencrop"])
@pytest.mark.parametrize("output", ["u8", "f32"])
def test_batches_are_numpy_crops_of_the_stored_images(shards, mode, output):
    """Every pixel of every batch of an epoch against numpy's crop, mirror,
    mean subtraction and lighting of the images the Python shard reader
    decodes: exact (the float32 arithmetic is (pixel - mean) + light in
    float32, the same operations in the same order)."""
    images = decoded(shards)
    mean = np.load(os.path.join(shards, "mean.npy"))
    per_image = 10 if mode == "tencrop" else 1
    loader = ap.Loader(shards, batch_size=5, mode=mode, output=output, threads=2, seed=3,
                       tensors=False)
    loader.set_epoch(1)
    seen = set()
    for batch in loader:
        x, y = batch
        assert len(x) == len(batch.views) == per_image * len(y) == per_image * len(batch.records)
        check_views(mode, batch.views, per_image)
        for k, view in enumerate(batch.views):
            record = tuple(batch.records[k // per_image])
            want = crop(images[record], view)
            if output == "u8":
                assert x.shape[1:] == (CROP, CROP, 3) and x.dtype == np.uint8
                np.testing.assert_array_equal(x[k], want)
            else:
                light = view["light"].astype(np.float32)
                ref = ((want.astype(np.float32) - crop(mean, view)) + light).transpose(2, 0, 1)
                assert x.shape[1:] == (3, CROP, CROP) and x.dtype == np.float32
                np.testing.assert_array_equal(x[k], ref)
            seen.add(record)
    assert len(seen) == len(images) // 5 * 5  # drop_last


def test_the_first_batch_is_the_command_lines(shards, tmp_path):
    """`pipeline sheet` prints the first training batch of (seed, epoch) as
    the command line's loader makes it: the package's batch has the same
    windows, mirrors, lighting and classes."""
    import re
    p = run("sheet", "--shards", shards, "--out", tmp_path / "s.png", "--batch-size", "6",
            "--seed", "5", "--epoch", "2")
    line = re.compile(r"^\s*\d+\s+(\d+)\s+(\d+)\s+(yes|no)\s+"
                      r"\(\s*([-+\d.]+),\s*([-+\d.]+),\s*([-+\d.]+)\)\s+(.+?)\s*$")
    want = [m.groups() for m in map(line.match, p.stdout.splitlines()) if m]
    assert len(want) == 6, p.stdout
    loader = ap.Loader(shards, batch_size=6, seed=5, threads=2, tensors=False)
    loader.set_epoch(2)
    batch = next(iter(loader))
    classes = ap.Shards(shards).classes
    got = [(str(v["x"]), str(v["y"]), "yes" if v["mirrored"] else "no",
            *(f"{c:+.2f}" for c in v["light"]), classes[label][2] or classes[label][1])
           for v, label in zip(batch.views, batch[1])]
    assert got == [tuple(w) for w in want]


def test_lighting_is_the_papers_pca_draw(shards):
    """Each view's light is sum_i alpha_i (lambda_i / 255) v_i, the paper's
    offset with stats.json's eigen pairs (v_i its rows; its covariance is
    in 0..255 units, hence the 1/255, see docs/design.md) and alpha_i drawn
    from N(0, 0.1): solved back, the alphas reproduce the light and have a
    standard deviation near 0.1 and a mean near 0."""
    s = ap.Shards(shards)
    scale = s.eigenvalues / 255
    alphas = []
    loader = ap.Loader(s, batch_size=4, threads=2, tensors=False)
    for epoch in range(8):
        loader.set_epoch(epoch)
        for batch in loader:
            light = batch.views["light"].astype(np.float64)
            alpha = (light @ s.eigenvectors.T) / scale
            np.testing.assert_allclose((alpha * scale) @ s.eigenvectors, light, atol=1e-4)
            alphas.append(alpha)
    alphas = np.concatenate(alphas)
    assert len(alphas) > 100
    std, mean = alphas.std(0), alphas.mean(0)
    assert ((0.08 < std) & (std < 0.12)).all() and (abs(mean) < 0.03).all(), (std, mean)


def test_epochs_back_to_back_are_each_epochs_own_batches(shards):
    """set_epoch(e + 1) right after epoch e takes over batches the workers
    made ahead: they must be epoch e + 1's, as a fresh loader makes them."""
    def epoch_of(loader, epoch):
        loader.set_epoch(epoch)
        return [(b.records.tolist(), b[0].copy()) for b in loader]

    running = ap.Loader(shards, batch_size=3, threads=2, tensors=False)
    got = [epoch_of(running, e) for e in range(3)]
    got.append([(b.records.tolist(), b[0].copy()) for b in running])  # epoch 2 again
    for e, batches in zip([0, 1, 2, 2], got):
        fresh = epoch_of(ap.Loader(shards, batch_size=3, threads=2, tensors=False), e)
        assert [r for r, _ in batches] == [r for r, _ in fresh]
        for (_, a), (_, b) in zip(batches, fresh):
            np.testing.assert_array_equal(a, b)
    assert got[0][0][0] != got[1][0][0]


def test_a_kept_batch_holds_its_own_pixels_while_more_are_drawn(shards):
    loader = ap.Loader(shards, batch_size=2, threads=2, prefetch=2, tensors=False)
    it = iter(loader)
    kept = next(it)
    copy = kept[0].copy()
    for _ in range(10):
        next(it)
    np.testing.assert_array_equal(kept[0], copy)


def test_state_dict_continues_with_the_batches_of_an_uninterrupted_run(shards):
    whole = ap.Loader(shards, batch_size=3, threads=2, tensors=False)
    whole.set_epoch(2)
    want = [(b.records.tolist(), b[0].copy()) for b in whole]
    part = ap.Loader(shards, batch_size=3, threads=2, tensors=False)
    part.set_epoch(2)
    it = iter(part)
    for _ in range(3):
        next(it)
    state = part.state_dict()
    assert state == {"epoch": 2, "batch": 3}
    resumed = ap.Loader(shards, batch_size=3, threads=2, tensors=False)
    resumed.load_state_dict(state)
    got = [(b.records.tolist(), b[0]) for b in resumed]
    assert len(got) == len(want) - 3 == len(resumed) - 3
    for (gr, gx), (wr, wx) in zip(got, want[3:]):
        assert gr == wr
        np.testing.assert_array_equal(gx, wx)


def test_ranks_together_are_the_one_process_epoch(shards):
    one = {tuple(r) for b in ap.Loader(shards, batch_size=4, threads=1, tensors=False)
           for r in b.records.tolist()}
    ranks = [{tuple(r) for b in ap.Loader(shards, batch_size=2, threads=1, rank=k, world=2,
                                           tensors=False) for r in b.records.tolist()}
             for k in range(2)]
    assert not ranks[0] & ranks[1]
    assert ranks[0] | ranks[1] == one


def test_rank_and_world_default_to_torch_distributed(shards):
    """Two processes in a torch.distributed gloo group (env:// rendezvous,
    as torchrun sets it up), each with a Loader given no rank or world:
    each takes its own part, and the parts make the one-process epoch."""
    import json
    import socket
    import subprocess
    torch_py = os.environ.get("TORCH_PY")
    if not torch_py:
        pytest.skip("TORCH_PY (a python with torch and alexnet_pipeline) is set by make test")
    code = (
        "import json, sys, torch.distributed as dist, alexnet_pipeline as ap\n"
        "dist.init_process_group('gloo')\n"
        "loader = ap.Loader(sys.argv[1], batch_size=2, threads=1, tensors=False)\n"
        "print(json.dumps([dist.get_rank(), len(loader),\n"
        "                  [r for b in loader for r in b.records.tolist()]]))\n"
        "dist.barrier()\n"
        "dist.destroy_process_group()\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([torch_py, "-c", code, shards], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "RANK": str(k), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
             for k in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    parts = sorted(json.loads(o.strip().splitlines()[-1]) for o in outs)
    assert [rank for rank, _, _ in parts] == [0, 1]
    got = [{tuple(r) for r in records} for _, _, records in parts]
    for _, batches, records in parts:
        assert batches == len(records) // 2 and records
    one = {tuple(r) for b in ap.Loader(shards, batch_size=4, threads=1, tensors=False)
           for r in b.records.tolist()}
    assert not got[0] & got[1]
    assert got[0] | got[1] == one


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
    # SIGINT as a terminal leaves it: a shell that starts CI in the
    # background hands its children SIGINT ignored, and Python then never
    # installs the handler that raises KeyboardInterrupt.
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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


def test_the_wheel_installs_and_loads_in_a_fresh_venv_without_rust(tmp_path, shards):
    """The wheel `make python` builds (WHEELS: it and numpy's), installed
    offline into a new virtualenv whose PATH has no cargo or rustc, imports
    and loads a batch: installing it needs no Rust."""
    import subprocess
    import sys
    wheels = os.environ.get("WHEELS")
    if not wheels:
        pytest.skip("WHEELS (the folder `make python` builds the wheel into) is set by make test")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    path = f"{venv}/bin:/usr/bin:/bin"
    assert shutil.which("cargo", path=path) is None and shutil.which("rustc", path=path) is None
    env = {"PATH": path, "HOME": str(tmp_path), "PIP_NO_INDEX": "1"}
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--find-links", wheels,
                    "alexnet-pipeline"], check=True, env=env)
    code = ("import sys, alexnet_pipeline as ap\n"
            "loader = ap.Loader(sys.argv[1], batch_size=4, threads=1)\n"
            "x, y = next(iter(loader))\n"
            "print(type(x).__module__, x.shape, x.dtype, len(y))\n")
    out = subprocess.run([venv / "bin" / "python", "-c", code, shards], check=True, env=env,
                         capture_output=True, text=True, cwd=tmp_path).stdout
    assert out.split() == ["numpy", "(4,", "224,", "224,", "3)", "uint8", "4"]
