import tempfile
from pathlib import Path

import torch
import brainsparse as bs

torch.manual_seed(0)
model = bs.models.MLP([784, 1568, 1568, 10])
opt = torch.optim.SGD(model.parameters(), lr=0.05)
dst = bs.sparsify(model, opt, method="set", density=0.01, steps_per_epoch=100, epochs=1, kernel="sparse")
x = torch.randn(4, 784)

folder = Path(tempfile.mkdtemp())
bs.save_sparse(model, folder / "model.safetensors")  # CSR links: ~2 % of a dense save at 1 %
plain = bs.models.MLP([784, 1568, 1568, 10])  # no brainsparse needed to use it
bs.load_sparse(plain, folder / "model.safetensors")

with torch.no_grad():
    expected = model(x)
    bs.finalize(model)  # plain nn.Linear layers, engine hooks removed
    assert all(type(m) is torch.nn.Linear for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert torch.allclose(model(x), expected, atol=1e-5) and torch.allclose(plain(x), expected, atol=1e-5)
print((folder / "model.safetensors").stat().st_size, "bytes")
