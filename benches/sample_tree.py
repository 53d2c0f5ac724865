"""The shared ImageNet sample (`<wnid>_<name>.JPEG`, one photo per class)
as an ILSVRC-style tree for the benchmarks: links, no copies."""
import os


def link_tree(sample, root, copies=1):
    """root/train/<wnid>/ gets a link to each sample photo, `copies` times
    (named `<k>_<file>` when more than one). Returns the sample's photos."""
    files = [os.path.abspath(os.path.join(sample, f)) for f in sorted(os.listdir(sample))
             if f.endswith(".JPEG")]
    for path in files:
        name = os.path.basename(path)
        folder = os.path.join(root, "train", name.split("_")[0])
        os.makedirs(folder, exist_ok=True)
        for k in range(copies):
            os.symlink(path, os.path.join(folder, name if copies == 1 else f"{k}_{name}"))
    return files
