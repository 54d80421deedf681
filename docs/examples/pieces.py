import torch
from brainsparse import percolation, scoring, selection, topology

g = torch.Generator().manual_seed(0)
# a chain of two sparse layers: 32 inputs -> 64 hidden -> 16 outputs (masks are (out, in))
first = topology.bipartite_small_world(64, 32, 0.1, beta=0.25, generator=g)
second = topology.uniform(16, 64, 0.1, generator=g)
assert int(first.sum()) == round(0.1 * 64 * 32)  # exactly the requested number of links

# one topology update of the first layer, by hand
weight = torch.randn(64, 32) * first
n_drop = int(0.3 * first.sum())
keep = selection.select(scoring.weight_magnitude(weight, first), int(first.sum()) - n_drop, first,
                        rule="soft", temperature=1.0, generator=g)  # soft removal
first, second = percolation.percolate_chain([keep, second])       # drop dead-end hidden neurons
scores = scoring.ch_l3(first, variant="CH3", exact=True)         # CH3-L3 link prediction
grow = selection.select(scores, n_drop, ~first, rule="topk", generator=g)
first = first | grow

active = percolation.active_hidden_neurons([first, second])
print("links:", int(first.sum()), "active hidden neurons:", int(active[0].sum()), "of 64")
