import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from brainsparse.percolation import active_hidden_neurons, percolate, percolate_chain


def m(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_hand_worked_chain():
    # layer 0: 3 inputs -> 2 hidden; layer 1: 2 hidden -> 2 outputs
    a = m([[1, 1, 0], [0, 0, 1]])
    b = m([[1, 0], [1, 0]])  # hidden neuron 1 has no outgoing link
    pa, pb = percolate_chain([a, b])
    assert pa.tolist() == [[True, True, False], [False, False, False]]
    assert torch.equal(pb, b)


def test_forward_sweep_removes_outgoing_of_neuron_without_inputs():
    a = m([[1, 0], [0, 0]])  # hidden 1 has no incoming link
    b = m([[1, 1], [0, 1]])
    pa, pb = percolate_chain([a, b])
    assert torch.equal(pa, a)
    assert pb.tolist() == [[True, False], [False, False]]


def test_cascade_through_three_layers():
    a = m([[1], [1]])
    b = m([[1, 0], [0, 1]])
    c = m([[1, 0]])  # only hidden-2 neuron 0 feeds out -> hidden-2 neuron 1 dies -> hidden-1 neuron 1 dies
    pa, pb, pc = percolate_chain([a, b, c])
    assert pa.tolist() == [[True], [False]]
    assert pb.tolist() == [[True, False], [False, False]]
    assert torch.equal(pc, c)


def test_pairs_couple_outputs():
    q = m([[1, 0], [0, 1], [1, 1]])
    k = m([[1, 1], [0, 0], [0, 1]])
    out = percolate({"q": q, "k": k}, pairs=[("q", "k")])
    assert out["q"].tolist() == [[True, False], [False, False], [True, True]]
    assert out["k"].tolist() == [[True, True], [False, False], [False, True]]


def _is_fixed_point(masks):
    for left, right in zip(masks[:-1], masks[1:]):
        has_in = left.any(dim=1)
        has_out = right.any(dim=0)
        if (has_in ^ has_out).any():
            return False
    return True


@settings(max_examples=80, deadline=None)
@given(
    widths=st.lists(st.integers(1, 8), min_size=2, max_size=5),
    density=st.floats(0.05, 0.9),
    seed=st.integers(0, 10_000),
)
def test_fixed_point_and_only_removes(widths, density, seed):
    g = torch.Generator().manual_seed(seed)
    masks = [torch.rand(o, i, generator=g) < density for i, o in zip(widths[:-1], widths[1:])]
    out = percolate_chain(masks)
    assert _is_fixed_point(out)
    for before, after in zip(masks, out):
        assert not (after & ~before).any()
    assert [torch.equal(x, y) for x, y in zip(percolate_chain(out), out)] == [True] * len(out)
    active = active_hidden_neurons(out)
    for layer, alive in enumerate(active[:-1]):
        assert torch.equal(alive, out[layer].any(dim=1))
