import torch
from brainsparse.scoring.cannistraci_hebb import ch_l3, ch_l3_exact, ch_l3_matrix

# the 4x3 layer of the worked example: rows are outputs o0-o3, columns inputs i0-i2
mask = torch.tensor([[1, 1, 0],
                     [1, 1, 1],
                     [0, 1, 1],
                     [0, 0, 1]], dtype=torch.bool)

ch3 = ch_l3(mask, variant="CH3", exact=True)  # path form, float32 (out, in), 0 at existing links
ch2 = ch_l3_exact(mask, "CH2")
matrix = ch_l3_matrix(mask, "CH3")  # node (matrix) form
print(ch3, ch2, matrix, sep="\n")

assert abs(ch3[3, 1] - (1 / 2**0.5 + 1)) < 1e-6          # candidate (o3, i1): 1.7071
assert abs(ch2[3, 1] - (3**0.5 + 6**0.5)) < 1e-5         # 4.1815
assert abs(ch3[3, 0] - 0.5) < 1e-6 and abs(ch2[3, 0] - 1.0) < 1e-6
assert torch.equal(matrix, torch.tensor([[0, 0, 4], [0, 0, 0], [3.5, 0, 0], [1, 2.5, 0]]))
