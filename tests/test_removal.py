import torch

from brainsparse.scoring.regrowth import gradient_magnitude, random_scores
from brainsparse.scoring.removal import mest, relative_importance, weight_magnitude


def test_weight_magnitude_zero_off_mask():
    w = torch.tensor([[-2.0, 1.0], [0.5, -0.25]])
    mask = torch.tensor([[True, False], [True, True]])
    assert weight_magnitude(w, mask).tolist() == [[2.0, 0.0], [0.5, 0.25]]


def test_relative_importance_hand_worked():
    # |W| on links: [[2, 0], [1, 1]]; column sums (input strength) [3, 1]; row sums [2, 2]
    w = torch.tensor([[2.0, 5.0], [-1.0, 1.0]])
    mask = torch.tensor([[True, False], [True, True]])
    ri = relative_importance(w, mask, eps=0.0)
    expected = torch.tensor([[2 / 3 + 2 / 2, 0.0], [1 / 3 + 1 / 2, 1 / 1 + 1 / 2]])
    assert torch.allclose(ri, expected)


def test_relative_importance_favours_low_degree_neurons():
    # the same weight on a neuron with one link scores higher than on a crowded neuron
    w = torch.ones(2, 4)
    mask = torch.tensor([[True, True, True, True], [True, False, False, False]])
    ri = relative_importance(w, mask)
    assert ri[1, 0] > ri[0, 1]


def test_mest_adds_gradient_term():
    w = torch.tensor([[1.0, -1.0]])
    g = torch.tensor([[10.0, -20.0]])
    mask = torch.tensor([[True, True]])
    assert torch.allclose(mest(w, g, mask, factor=0.01), torch.tensor([[1.1, 1.2]]))


def test_regrowth_scores_zero_on_links():
    mask = torch.tensor([[True, False], [False, True]])
    r = random_scores(mask, generator=torch.Generator().manual_seed(0))
    assert (r[mask] == 0).all() and (r[~mask] > 0).all()
    g = gradient_magnitude(torch.tensor([[1.0, -2.0], [3.0, 4.0]]), mask)
    assert g.tolist() == [[0.0, 2.0], [3.0, 0.0]]
