import torch
import brainsparse as bs
from brainsparse.methods import MethodConfig

# A new method assembled from the built-in pieces: BRF start, soft removal by relative
# importance with a rising temperature, percolation, CH2-L3 regrowth in matrix form, cosine
# drop fraction that stops at 80 % of training, and a cubic density decay 30 % -> target.
mine = MethodConfig(
    name="my-cht", init="brf", init_params={"r": 0.5},
    removal="relative_importance", removal_rule="soft", removal_temperature=(1.0, 5.0),
    percolation=True,
    regrowth="ch2_l3", regrowth_exact=False, regrowth_rule="soft", regrowth_temperature=1.0,
    drop_fraction=0.2, drop_schedule="cosine", t_end_fraction=0.8,
    density_schedule="cubic", initial_density=0.3, prune_end_fraction=0.5,
)

model = bs.models.MLP([100, 64, 64, 10])
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
dst = bs.sparsify(model, opt, method=mine, density=0.1, update_every=4, total_steps=40, seed=0)
# a preset with a few fields changed works the same way (any MethodConfig field):
also = bs.resolve_method("chts", regrowth="ch2_l3", drop_fraction=0.2)

x, y = torch.randn(64, 100), torch.randint(0, 10, (64,))
for step in range(40):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    dst.step()

report = dst.report()
print(report["method"], report["updates"], f"density {report['density']:.3f}")
assert report["method"] == "my-cht" and abs(report["density"] - 0.1) < 0.01
assert also.removal_rule == "soft" and also.regrowth == "ch2_l3"
