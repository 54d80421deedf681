import torch
from transformers import LlamaConfig, LlamaForCausalLM
from brainsparse.train.language_model import adamw, sparsify_llama

# a Hugging Face LLaMA built from a config (no download); q/k/v/o and gate/up/down become sparse
model = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=128, intermediate_size=384,
                                     num_hidden_layers=2, num_attention_heads=4))
opt = adamw(model, lr=3e-3, weight_decay=0.1)
dst = sparsify_llama(model, opt, method="chtss", density=0.3, update_every=2, total_steps=6, seed=0)

tokens = torch.randint(0, 1000, (2, 33))
for step in range(4):
    opt.zero_grad()
    out = model(input_ids=tokens[:, :-1], labels=tokens[:, :-1])
    out.loss.backward()
    opt.step()   # weights and Adam moments stay zero off the mask
    dst.step()
print(f"loss {out.loss.item():.2f}, density {dst.report()['density']:.3f}, updates {len(dst.history)}")
