"""Hugging Face BERT-style encoder layers (BERT, RoBERTa, ELECTRA, ...), recognised by structure.

transformers is never imported. A module is a BERT-style layer when it has ``nn.Linear`` modules
at ``attention.self.query``/``key``/``value``, ``attention.output.dense``, ``intermediate.dense``
and ``output.dense``, its ``attention.self`` has int ``num_attention_heads`` and
``attention_head_size``, and query, key and value each produce ``num_attention_heads *
attention_head_size`` features (head h owns features ``h*size .. (h+1)*size``), which
``intermediate.dense`` / ``output.dense`` agree on the FFN width. Only self-attention heads are
slimmed (a decoder's ``crossattention`` is left alone).

After head pruning a layer's ``attention.self.num_attention_heads`` and ``all_head_size`` give
its own head count; the shared ``config`` still describes the unpruned model (its forward splits
heads by ``attention_head_size``, which pruning does not change).
"""

from __future__ import annotations

from torch import nn

__all__ = ["bert_ffn", "bert_head_inputs", "bert_heads", "is_bert_layer", "set_bert_ffn", "set_bert_heads"]


def is_bert_layer(module: nn.Module) -> bool:
    """Whether ``module`` has the BertLayer structure described in this module's docstring."""
    attention = _child(module, "attention", "self")
    output = _child(module, "attention", "output")
    intermediate, ffn_output = _child(module, "intermediate"), _child(module, "output")
    if attention is None or output is None or intermediate is None or ffn_output is None:
        return False
    linears = [getattr(attention, name, None) for name in ("query", "key", "value")]
    linears += [getattr(owner, "dense", None) for owner in (output, intermediate, ffn_output)]
    if not all(isinstance(linear, nn.Linear) for linear in linears):
        return False
    heads, size = getattr(attention, "num_attention_heads", None), getattr(attention, "attention_head_size", None)
    if not (isinstance(heads, int) and isinstance(size, int) and heads >= 1 and size >= 1):
        return False
    query, key, value, head_output, first, second = linears
    inner = heads * size
    return (query.out_features == key.out_features == value.out_features == head_output.in_features == inner
            and first.out_features == second.in_features)


def bert_heads(layer: nn.Module) -> tuple[int, int, nn.Linear]:
    """(number of heads, features per head, the attention output projection ``attention.output.dense``)."""
    attention = layer.attention.self
    return attention.num_attention_heads, attention.attention_head_size, layer.attention.output.dense


def bert_head_inputs(layer: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """The query, key and value projections (one block of rows per head)."""
    attention = layer.attention.self
    return attention.query, attention.key, attention.value


def set_bert_heads(layer: nn.Module, query: nn.Linear, key: nn.Linear, value: nn.Linear, output: nn.Linear) -> None:
    """Install projections for fewer heads and update the head-count attributes the forward uses."""
    attention = layer.attention.self
    heads = query.out_features // attention.attention_head_size
    attention.query, attention.key, attention.value = query, key, value
    layer.attention.output.dense = output
    attention.num_attention_heads = heads
    if hasattr(attention, "all_head_size"):
        attention.all_head_size = heads * attention.attention_head_size


def bert_ffn(layer: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """The FFN's (first, second) linears: ``intermediate.dense`` and ``output.dense``."""
    return layer.intermediate.dense, layer.output.dense


def set_bert_ffn(layer: nn.Module, first: nn.Linear, second: nn.Linear) -> None:
    """Install FFN linears of a new width."""
    layer.intermediate.dense, layer.output.dense = first, second


def _child(module: nn.Module, *path: str) -> nn.Module | None:
    """The submodule at ``path`` (attribute names), or None where one is missing or not a module."""
    for name in path:
        module = getattr(module, name, None)
        if not isinstance(module, nn.Module):
            return None
    return module
