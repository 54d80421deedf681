import torch
import brainsparse as bs
from brainsparse.metrics import layer_measures
from brainsparse.report.topology import plot_adjacency, plot_degree_distributions

model = bs.models.MLP([200, 100, 100, 10])
dst = bs.sparsify(model, None, method="chts", density=0.05, update_every=100, total_steps=1000, seed=0)
masks = {name: layer.mask for name, layer in dst.layers.items()}

measures = layer_measures(masks["layers.2"], seed=0)  # clustering, path length, modularity, power-law fit
print({k: v for k, v in measures.items() if not isinstance(v, (list, dict))})
plot_degree_distributions(masks, "degrees.png", title="CHTs start (BSW)")
plot_adjacency(masks["layers.0"], "adjacency_layers.0.png")
