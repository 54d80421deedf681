import lightning.pytorch as L
import torch
from torch import nn
from brainsparse.integrations.lightning import SparseTrainingCallback


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


x, y = torch.randn(64, 20), torch.randint(0, 4, (64,))
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def fit(folder, ckpt_path=None):
    # CHTs on the hidden layers (the head stays dense), one topology update every 2 optimizer steps
    sparse = SparseTrainingCallback(method="chts", density=0.1, update_every=2, seed=0)
    saver = L.callbacks.ModelCheckpoint(dirpath=folder, save_top_k=-1, every_n_epochs=1)
    trainer = L.Trainer(max_epochs=4, accumulate_grad_batches=2, callbacks=[sparse, saver], logger=False,
                        accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)
    module = Classifier()
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return sparse.engine


engine = fit("checkpoints")
print(f"straight: step {engine.step_count}, density {engine.report()['density']:.2f}, updates {len(engine.history)}")
# the engine's state rides in Lightning's checkpoint (callbacks section): resume from epoch 2
resumed = fit("checkpoints-resumed", "checkpoints/epoch=1-step=8.ckpt")
same = all(torch.equal(resumed.layers[n].mask, layer.mask) for n, layer in engine.layers.items())
print(f"resumed: step {resumed.step_count}, same masks as the straight run: {same}")
