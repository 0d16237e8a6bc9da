"""IMP on a model sharded with FSDP2 (``fully_shard``): no rank ever holds all the weights.

    torchrun --nproc_per_node 2 examples/fsdp_imp.py            # CPU (gloo) or one GPU per process (NCCL)

The global magnitude threshold of each round comes from ``sharded_kth_value`` (four all-reduced
256-bin digit histograms); each rank prunes its own shard; ``imp.ticket()`` gathers the full masks.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from sparseticket.builtin.data import load_digits_split
from sparseticket.methods import IMP
from sparseticket.methods.teardown import end_distributed

GLOBAL_BATCH = 64
ROUNDS = 3
EPOCHS_PER_ROUND = 2


def main() -> None:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    data = load_digits_split()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                          nn.Linear(128, 10)).to(device)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    imp = IMP(model, rate=0.5)  # after fully_shard: masks are sharded like the weights
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    imp.capture(optimizer)  # rewind point: initialization
    dataset = TensorDataset(data.train_images, data.train_labels)
    sampler = DistributedSampler(dataset, seed=0)
    loader = DataLoader(dataset, batch_size=GLOBAL_BATCH // dist.get_world_size(), sampler=sampler)
    for round_index in range(ROUNDS):
        for epoch in range(EPOCHS_PER_ROUND):
            sampler.set_epoch(epoch)  # every round sees the same order after the rewind
            for images, labels in loader:
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(images.to(device)), labels.to(device)).backward()
                imp.after_backward()
                optimizer.step()
                imp.after_step()
        imp.prune_round()  # collective: every rank calls it
        imp.rewind()
        if dist.get_rank() == 0:
            local = sum(mask.numel() for mask in imp.masks)
            print(f"round {round_index + 1}: density {imp.density:.4f} (rank 0 holds {local} of "
                  f"{sum(w.numel() for w in imp.weights)} mask entries)", flush=True)
    ticket = imp.ticket()  # collective: the full masks on every rank
    if dist.get_rank() == 0:
        ticket.save("fsdp_imp.safetensors")
        print(f"ticket at density {ticket.density():.4f} saved to fsdp_imp.safetensors")


if __name__ == "__main__":
    main()
    end_distributed()  # outside main(), once the model is gone: barrier, destroy the group, join its threads
