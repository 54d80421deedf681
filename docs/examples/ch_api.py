import torch
from brainsparse.scoring.cannistraci_hebb import ch_l3, ch_l3_exact, ch_l3_matrix

mask = torch.rand(200, 300, generator=torch.Generator().manual_seed(0)) < 0.05

scores = ch_l3(mask, variant="CH3", exact=True)   # float32 (out, in), 0 at existing links
scores = ch_l3_exact(mask, "CH2", chunk_size=1 << 24, method="auto")  # or compiled, sparse, enumerate
scores = ch_l3_matrix(mask, "CH2", use_sparse=None)  # None: the sparse route below 6 % density

same = ch_l3_exact(mask, "CH3", backend="torch")  # PyTorch only (default "auto": C++ when it builds)
assert torch.allclose(same, ch_l3(mask, "CH3"))
print(f"{int((scores > 0).sum())} candidates with a positive CH2 score")
