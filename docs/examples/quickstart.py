import torch
import brainsparse as bs

torch.manual_seed(0)
model = bs.models.MLP([784, 256, 256, 10])  # the paper's MLP is MLP([784, 1568, 1568, 1568, 10])
opt = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=5e-4)
steps = 20
dst = bs.sparsify(model, opt, method="chts", density=0.05, update_every=5, total_steps=steps, seed=0)

x, y = torch.randn(256, 784), torch.randint(0, 10, (256,))  # stand-in data
for step in range(steps):
    batch = slice(32 * (step % 8), 32 * (step % 8 + 1))
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
    loss.backward()
    opt.step()        # weights and optimizer state stay zero off the mask
    record = dst.step()  # a topology update every 5 steps: removal, percolation, regrowth
    if record is not None:
        print(f"step {step + 1}: loss {loss.item():.3f}, update {len(dst.history)}")

report = dst.report()
print(report["density"], report["active_neuron_rate"])
print(report["layers"]["layers.0"])  # links, target, density, active neurons, overlap, ITOP
assert report["layers"]["layers.0"]["links"] == report["layers"]["layers.0"]["target"]
