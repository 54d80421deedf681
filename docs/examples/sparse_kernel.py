import torch
import brainsparse as bs

model = bs.models.MLP([784, 512, 512, 10])
opt = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9)
# kernel="sparse": the sparse layers become SparseLinear modules whose weights and optimizer
# state exist only at the links (CSR kernels); "auto" picks per layer by density
dst = bs.sparsify(model, opt, method="set", density=0.01, update_every=2, total_steps=6, kernel="sparse", seed=0)
print(type(model.layers[0]).__name__, model.layers[0].values.shape)  # SparseLinear: one value per link

x, y = torch.randn(32, 784), torch.randint(0, 10, (32,))
for _ in range(6):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    dst.step()
print(dst.report()["layers"]["layers.0"]["links"], "links")
