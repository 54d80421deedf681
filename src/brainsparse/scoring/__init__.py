"""Link scores: removal (magnitude, relative importance, MEST) and regrowth (random, gradient,
Cannistraci–Hebb on paths of length 3)."""

from .cannistraci_hebb import ch_l3, ch_l3_exact, ch_l3_matrix, l3_path_count
from .regrowth import gradient_magnitude, random_scores
from .removal import mest, relative_importance, removal_scores, weight_magnitude

__all__ = [
    "ch_l3",
    "ch_l3_exact",
    "ch_l3_matrix",
    "l3_path_count",
    "gradient_magnitude",
    "random_scores",
    "mest",
    "relative_importance",
    "removal_scores",
    "weight_magnitude",
]
