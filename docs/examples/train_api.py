import tempfile
from pathlib import Path

import numpy as np
from brainsparse.data import write_idx
from brainsparse.train import TrainConfig, train_classifier

# a tiny stand-in for MNIST in the standard IDX layout (use data_dir=... with the real files)
data = Path(tempfile.mkdtemp()) / "mnist"
data.mkdir()
rng = np.random.default_rng(0)
for split, prefix, n in (("train", "train", 512), ("test", "t10k", 128)):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = (rng.random((n, 28, 28)) * 60 + labels[:, None, None] * 20).astype(np.uint8)
    write_idx(data / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(data / f"{prefix}-labels-idx1-ubyte.gz", labels)

config = TrainConfig(dataset="mnist", data_dir=str(data), method="chts", density=0.05,
                     hidden=[64, 64], epochs=2, seed=0)
summary = train_classifier(config, Path(data.parent, "run"), progress=False)
print(summary["final_test_accuracy"], sorted(p.name for p in Path(data.parent, "run").iterdir()))
