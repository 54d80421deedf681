"""Measures of training runs and of sparse layer graphs (algorithms.md §3, §5, §8).

Training measures (:mod:`.training`): area across epochs (AAE), percentage change relative to
dense, active-neuron post-percolation rate (ANP), overlap rate, ITOP rate. Network measures
(:mod:`.network`) of a layer's bipartite graph: degrees and power-law exponent, square
clustering, characteristic path length, modularity, and :func:`layer_measures` bundling them.
"""

from .network import (
    bipartite_clustering,
    characteristic_path_length,
    degree_distribution,
    layer_measures,
    modularity,
    power_law_exponent,
    robins_alexander_clustering,
    square_clustering,
)
from .training import active_neuron_rate, area_across_epochs, itop_rate, overlap_rate, relative_to_dense

__all__ = [
    "area_across_epochs",
    "relative_to_dense",
    "active_neuron_rate",
    "overlap_rate",
    "itop_rate",
    "degree_distribution",
    "power_law_exponent",
    "square_clustering",
    "bipartite_clustering",
    "robins_alexander_clustering",
    "characteristic_path_length",
    "modularity",
    "layer_measures",
]
