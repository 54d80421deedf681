import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
from brainsparse.integrations.hf import SparseTrainingCallback

# a tiny Hugging Face LLaMA built from a config (no download) and a fixed-order token data set
model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=1, num_attention_heads=2))
ids = torch.randint(0, 100, (16, 16))
data = [{"input_ids": row, "labels": row} for row in ids]

args = TrainingArguments(output_dir="hf-run", max_steps=8, per_device_train_batch_size=2,
                         gradient_accumulation_steps=2, learning_rate=3e-3, save_steps=4,
                         train_sampling_strategy="sequential", report_to=[], use_cpu=True,
                         logging_strategy="no", disable_tqdm=True)
# RigL on the q/k/v/o and gate/up/down projections: the topology evolves every 2 optimizer steps,
# scored by the dense gradient summed over both micro-batches of each step
sparse = SparseTrainingCallback(method="rigl", density=0.3, update_every=2, seed=0)
Trainer(model=model, args=args, train_dataset=data, callbacks=[sparse]).train()
print(f"straight: step {sparse.engine.step_count}, density {sparse.engine.report()['density']:.2f}, "
      f"updates {len(sparse.engine.history)}")

# hf-run/checkpoint-4/ holds brainsparse_engine.pt next to the Trainer's files: resuming from it
# restores the masks, the random generator and the counters, and ends where the straight run ended
fresh = LlamaForCausalLM(model.config)
again = SparseTrainingCallback(method="rigl", density=0.3, update_every=2, seed=0)
trainer = Trainer(model=fresh, args=args, train_dataset=data, callbacks=[again])
trainer.train(resume_from_checkpoint="hf-run/checkpoint-4")
same = all(torch.equal(again.engine.layers[n].mask, layer.mask) for n, layer in sparse.engine.layers.items())
print(f"resumed: step {again.engine.step_count}, same masks as the straight run: {same}")
