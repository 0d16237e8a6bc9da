"""WORM in your own DistributedDataParallel loop: the lines sparseticket adds are marked ``# +``.

    torchrun --nproc_per_node 2 examples/ddp_worm.py            # CPU (gloo) or one GPU per process (NCCL)
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from sparseticket.builtin.data import load_digits_split
from sparseticket.builtin.models import vgg_small
from sparseticket.methods import WORM
from sparseticket.methods.teardown import end_distributed

GLOBAL_BATCH = 64


def main() -> None:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    data = load_digits_split()
    torch.manual_seed(0)
    model = vgg_small(width=16).to(device)
    worm = WORM(model)  # +  (the bare model or the DDP wrapper: names are the bare model's)
    network = DistributedDataParallel(model, device_ids=[local_rank] if cuda else None)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    dataset = TensorDataset(data.train_images, data.train_labels)
    sampler = DistributedSampler(dataset, seed=0)  # every rank gets as many batches
    loader = DataLoader(dataset, batch_size=GLOBAL_BATCH // dist.get_world_size(), sampler=sampler)
    for epoch in range(40):
        sampler.set_epoch(epoch)
        network.train()
        for images, labels in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(network(images.to(device)), labels.to(device)).backward()
            worm.after_backward()  # +  acts on the all-reduced gradients
            optimizer.step()
        if worm.epoch_end():  # +  the same decision on every rank (masks are checksummed)
            break
    ticket = worm.ticket()
    if dist.get_rank() == 0:  # one writer
        ticket.save("ddp_worm.safetensors")
        kept = sum(int(mask.sum()) for mask in ticket.channel_masks.values())
        total = sum(mask.numel() for mask in ticket.channel_masks.values())
        print(f"ticket found at epoch {worm.found_epoch} on {dist.get_world_size()} processes: "
              f"{kept}/{total} channels kept, saved to ddp_worm.safetensors")


if __name__ == "__main__":
    main()
    end_distributed()  # outside main(), once the model is gone: barrier, destroy the group, join its threads
