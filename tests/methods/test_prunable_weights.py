"""Which weights the weight-mask methods prune: every Conv/Linear weight and the Q/K/V projections
of ``nn.MultiheadAttention`` (packed ``in_proj_weight`` or separate ``q/k/v_proj_weight``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseticket import IMP, GemMiner, random_ticket
from sparseticket.methods.weights import prunable_weights


def encoder(kdim: int | None = None) -> nn.Module:
    """Embedding-free transformer: a linear stem, one encoder layer, a classifier."""
    torch.manual_seed(0)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Linear(6, 16)
            self.layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
            self.cross = nn.MultiheadAttention(16, 4, kdim=kdim, vdim=kdim, batch_first=True) if kdim else None
            self.head = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden = self.layer(self.stem(x))
            if self.cross is not None:
                memory = torch.ones(x.shape[0], 2, kdim)
                hidden = hidden + self.cross(hidden, memory, memory, need_weights=False)[0]
            return self.head(hidden.mean(1))

    return Model()


def test_multihead_attention_projections_are_prunable_in_module_order():
    model = encoder(kdim=5)
    names = [weight.name for weight in prunable_weights(model)]
    assert names == ["stem.weight", "layer.self_attn.in_proj_weight", "layer.self_attn.out_proj.weight",
                     "layer.linear1.weight", "layer.linear2.weight", "cross.q_proj_weight", "cross.k_proj_weight",
                     "cross.v_proj_weight", "cross.out_proj.weight", "head.weight"]
    expected = {name for name, parameter in model.named_parameters() if parameter.dim() == 2}
    assert set(names) == expected  # every matrix of the model, nothing else


def test_exclude_takes_module_or_parameter_names():
    model = encoder()
    left = [w.name for w in prunable_weights(model, exclude=("layer.self_attn", "output"))]
    assert "layer.self_attn.in_proj_weight" not in left and "head.weight" not in left
    assert "layer.self_attn.out_proj.weight" in left  # a child module: excluded on its own name only
    left = [w.name for w in prunable_weights(model, exclude=("layer.self_attn.in_proj_weight",))]
    assert "layer.self_attn.in_proj_weight" not in left and "head.weight" in left
    with pytest.raises(ValueError, match="exclude: 'nope'"):
        prunable_weights(model, exclude=("nope",))


def test_imp_prunes_and_counts_the_packed_qkv_weight():
    model = encoder()
    imp = IMP(model, rate=0.5, exclude=())
    in_proj = model.layer.self_attn.in_proj_weight
    assert any(weight is in_proj for weight in imp.weights)
    total = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2)
    assert imp._total == total
    imp.prune_round()
    assert imp.survivors() == total - -(-total // 2)  # ceil(rate * survivors) pruned
    mask = imp.masks[imp.names.index("layer.self_attn.in_proj_weight")]
    assert 0 < int(mask.sum()) < mask.numel() and torch.all(in_proj[~mask] == 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(4, 5, 6)).sum().backward()
        imp.after_backward()
        assert torch.all(in_proj.grad[~mask] == 0)
        optimizer.step()
        imp.after_step()
    assert torch.all(in_proj[~mask] == 0)
    assert imp.ticket().masks["layer.self_attn.in_proj_weight"].shape == (48, 16)


def test_gemminer_masks_the_packed_and_separate_projections():
    model = encoder(kdim=5)
    miner = GemMiner(model, density=0.25, epochs=3, period=1, seed=0)
    x = torch.randn(4, 5, 6)
    for _ in range(3):
        model(x).square().mean().backward()
        miner.after_backward()
        miner.epoch_end()
    ticket = miner.finish()
    assert set(ticket.masks) == {w.name for w in prunable_weights(model)}
    total = sum(mask.numel() for mask in ticket.masks.values())
    assert sum(int(mask.sum()) for mask in ticket.masks.values()) == round(0.25 * total)
    in_proj = model.layer.self_attn.in_proj_weight
    assert torch.all(in_proj[~ticket.masks["layer.self_attn.in_proj_weight"]] == 0)
    model(x)  # plain parameters again: runs


def test_baselines_cover_the_attention_projections():
    model = encoder(kdim=5)
    ticket = random_ticket(model, 0.3, seed=0)
    assert {"layer.self_attn.in_proj_weight", "cross.k_proj_weight"} <= set(ticket.masks)
