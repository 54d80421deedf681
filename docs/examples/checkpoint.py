import io

import torch
import brainsparse as bs


def make(seed=0):
    torch.manual_seed(seed)
    model = bs.models.MLP([50, 40, 40, 5])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    dst = bs.sparsify(model, opt, method="set", density=0.2, update_every=3, total_steps=12, seed=seed)
    return model, opt, dst


def train(model, opt, dst, steps):
    x, y = torch.randn(16, 50, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 5
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        dst.step()


model, opt, dst = make()
train(model, opt, dst, 6)
file = io.BytesIO()  # or a path: torch.save(..., "checkpoint.pt")
torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "dst": dst.state_dict()}, file)
file.seek(0)
saved = torch.load(file)

model2, opt2, dst2 = make()           # a new process would rebuild the same objects ...
model2.load_state_dict(saved["model"])  # ... the model holds the masks (weight_mask buffers)
dst2.load_state_dict(saved["dst"])      # the engine: counters, generator, schedule (any order)
opt2.load_state_dict(saved["opt"])

train(model, opt, dst, 6)
train(model2, opt2, dst2, 6)
assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
print("resumed run identical after", dst2.step_count, "steps and", len(dst2.history), "updates")
