"""WORM on a Hugging Face ResNet: draw an early-bird channel ticket, then cut the channels out.

    python examples/hf_resnet_worm.py [OUTPUT_DIR]    # writes OUTPUT_DIR/hf_resnet_worm.safetensors (default: .)

A tiny ``ResNetForImageClassification`` from a config (no download) trains on scikit-learn's 8x8 digits
upsampled to 32x32 (WORM's three calls: ``# +``). Once the BN channel mask stops moving (or after
MAX_EPOCHS), ``worm.prune`` cuts the pruned channels out of the HF model as it is (no adapter for its
ModelOutput); it prints the PruneReport (params, MACs, latency before/after), fine-tunes, saves the ticket.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import ResNetConfig, ResNetForImageClassification

from sparseticket import WORM
from sparseticket.builtin.data import Split, load_digits_split

MAX_EPOCHS, FINE_TUNE_EPOCHS, BATCH = 12, 2, 64
CONFIG = ResNetConfig(num_channels=1, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                      layer_type="basic", num_labels=10)


def upsample(images: torch.Tensor) -> torch.Tensor:
    """8x8 digits to 32x32 (the ResNet stem downsamples by 4)."""
    return F.interpolate(images, size=32, mode="bilinear", align_corners=False)


def accuracy(model: torch.nn.Module, data: Split) -> float:
    """Eval-mode top-1 accuracy on the test digits."""
    model.eval()
    with torch.no_grad():
        return (model(upsample(data.test_images)).logits.argmax(1) == data.test_labels).float().mean().item()


def train_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: Split,
                worm: WORM | None = None) -> None:
    """One epoch of SGD over the training digits in a random order."""
    model.train()
    for batch in torch.randperm(len(data.train_labels)).split(BATCH):
        optimizer.zero_grad()
        F.cross_entropy(model(upsample(data.train_images[batch])).logits, data.train_labels[batch]).backward()
        if worm is not None:
            worm.after_backward()  # +  L1 on gamma; once triggered, scales static channels' gradients
        optimizer.step()


def main(output_dir: Path) -> None:
    torch.manual_seed(0)
    data = load_digits_split()
    model = ResNetForImageClassification(CONFIG)
    worm = WORM(model)  # +  tracks every BatchNorm's gamma
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for epoch in range(1, MAX_EPOCHS + 1):
        train_epoch(model, optimizer, data, worm)
        found = worm.epoch_end()  # +  True once the ticket is drawn
        print(f"epoch {epoch}: accuracy {accuracy(model, data):.3f}, mask distances "
              f"{' '.join(f'{d:.3f}' for d in worm.distances)}, truncating {worm.truncating}")
        if found:
            break
    small = worm.prune(example_inputs=upsample(data.test_images[:1]))  # a smaller HF ResNet
    print(worm.prune_report.summary())
    before, after = accuracy(model, data), accuracy(small, data)
    optimizer = torch.optim.SGD(small.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    for _ in range(FINE_TUNE_EPOCHS):
        train_epoch(small, optimizer, data)
    print(f"accuracy {before:.3f} before pruning, {after:.3f} after, {accuracy(small, data):.3f} fine-tuned")
    ticket = worm.ticket()  # channel masks, settings, found epoch
    output_dir.mkdir(parents=True, exist_ok=True)
    ticket.save(path := output_dir / "hf_resnet_worm.safetensors")
    print(f"ticket (found at epoch {worm.found_epoch}; None: newest mask after {epoch} epochs) saved to {path}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))
