"""EarlyBird inside Lightning's ``Trainer.fit``: a BN conv net on scikit-learn's 8x8 digits.

    python examples/lightning_digits.py [OUTPUT_DIR]     # default: the current directory

``SparseTicketCallback`` runs the method's hooks (L1 on the BN scales before every optimizer
step, the mask check at every epoch end), stops training at the epoch the ticket is drawn and
writes it to OUTPUT_DIR/lightning_digits.safetensors. Needs ``sparseticket[lightning]``.
"""

from __future__ import annotations

import sys

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sparseticket import EarlyBird
from sparseticket.integrations.lightning import SparseTicketCallback


def conv_bn(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()]


class DigitsNet(pl.LightningModule):
    """conv-BN-ReLU x3 (a max-pool after the second), mean-pool, linear: 10 digit classes."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(*conv_bn(1, 16), *conv_bn(16, 32), nn.MaxPool2d(2), *conv_bn(32, 32),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss = nn.functional.cross_entropy(self.net(images), labels)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


def main(output_dir: str = ".") -> None:
    torch.manual_seed(0)
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [1797, 1, 8, 8]
    labels = torch.tensor(digits.target, dtype=torch.int64)
    loader = DataLoader(TensorDataset(images, labels), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    model = DigitsNet()
    eb = EarlyBird(model.net, ratio=0.5, l1=1e-4, queue=5, eps=0.1)  # the bare network
    callback = SparseTicketCallback(eb, ticket_path="lightning_digits.safetensors")
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=40, default_root_dir=output_dir, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[callback])
    trainer.fit(model, loader)
    kept = sum(int(mask.sum()) for mask in eb.channel_mask().values())
    print(f"EarlyBird ticket found at epoch {eb.found_epoch} ({kept}/{eb.channels} channels kept), "
          f"trained {trainer.current_epoch} epochs; ticket saved to {callback.saved_path}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
