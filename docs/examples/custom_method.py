import torch
import brainsparse as bs


@bs.register_removal_score("signed")
def signed(layer: bs.ScoreInput) -> torch.Tensor:
    return layer.weight.float() * layer.mask  # keep the most positive weights; only links are read


@bs.register_regrowth_score("l3_paths")
def l3_paths(layer: bs.ScoreInput) -> torch.Tensor:
    a = layer.mask.float()  # (out, in): absent link (i, j) scores by its paths of length 3, ties random
    noise = torch.rand(a.shape, generator=layer.generator, device=a.device)
    return (a @ a.T @ a + 1e-3 * noise) * ~layer.mask


@bs.register_density_schedule("halve")
class Halve(bs.DensitySchedule):  # twice the target density for the first half of the run
    def at(self, step: int) -> tuple[float | None, float]:
        d = min(1.0, 2 * self.target) if step < self.total_steps // 2 else self.target
        return d, d  # (prune to before an update, density after it)


bs.register_method("my-method", removal="signed", regrowth="l3_paths", density_schedule="halve", drop_fraction=0.2)

model = bs.models.MLP([100, 64, 64, 10])
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
dst = bs.sparsify(model, opt, method="my-method", density=0.1, update_every=4, total_steps=40, seed=0)
x, y = torch.randn(64, 100), torch.randint(0, 10, (64,))
for step in range(40):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    dst.step()

report = dst.report()
print(report["method"], report["updates"], f"density {report['density']:.3f}")
assert report["method"] == "my-method" and abs(report["density"] - 0.1) < 0.01
