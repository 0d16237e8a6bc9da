"""EarlyBERT slimming (Chen et al. 2021): a learnable coefficient per attention head and FFN neuron.

The coefficients play BN gamma's role for EarlyBird; heads compete within their layer, FFN neurons
across all layers::

    attach_slimming(model)                      # coefficients init 1: outputs unchanged
    eb = EarlyBird(model, queue=3, eps=0.01)    # ranks and L1-regularises them like BN gamma
    ...
    small = prune_transformer(model, eb.channel_mask())

A transformer block is every ``nn.TransformerEncoderLayer``, every module whose ``self_attn`` is
a ``SelfAttention`` and that has ``nn.Linear`` ``linear1``/``linear2`` (its FFN), and every
Hugging Face BERT-style encoder layer (BERT, RoBERTa, ELECTRA, ...: recognised by structure, see
``hf_transformer``; its output projection is ``attention.output.dense``, its FFN
``intermediate.dense``/``output.dense``). A block's coefficients live on it as
``head_coefficients`` and ``ffn_coefficients`` (e.g. ``bert.encoder.layer.0.head_coefficients``
in a ``BertForSequenceClassification``); they scale the columns of the attention output
projection (head h's ``head_dim`` columns) and of the FFN's second linear through
``torch.nn.utils.parametrize``, which equals scaling each head's output / each neuron's activation.
Inside those layers' own forward the cheaper of the two is done: the input's features when the
input holds fewer values than the weight (fewer tokens than output features, as in short batches),
the weight's columns otherwise; both run the fused ``scale_columns`` op.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from sparseticket.methods.bn_channels import ChannelCoefficients
from sparseticket.methods.hf_transformer import (
    bert_ffn,
    bert_head_inputs,
    bert_heads,
    is_bert_layer,
    set_bert_ffn,
    set_bert_heads,
)
from sparseticket.ops import OutputSlot, scale_columns

HEADS = "head_coefficients"
FFN = "ffn_coefficients"
FFN_GROUP = "ffn"


class SelfAttention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections; head h owns inner features h*head_dim..(h+1)*head_dim.

    Called like ``nn.MultiheadAttention`` (returns ``(output, None)``), so it can be the
    ``self_attn`` of an ``nn.TransformerEncoderLayer``. The inner width is
    ``num_heads * head_dim``, independent of ``embed_dim``, so heads can be removed. A 3-D
    ``attn_mask`` needs one slice per current head.
    """

    # No packed in-projection: torch's fused encoder fast paths test these and are never taken.
    in_proj_weight = None
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int | None = None, *, bias: bool = True,
                 dropout: float = 0.0, batch_first: bool = True) -> None:
        super().__init__()
        if head_dim is None:
            if num_heads < 1 or embed_dim % num_heads:
                raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
            head_dim = embed_dim // num_heads
        if num_heads < 1 or head_dim < 1:
            raise ValueError(f"need num_heads >= 1 and head_dim >= 1, got {num_heads} and {head_dim}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.batch_first = batch_first
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.v_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    @classmethod
    def from_multihead(cls, attention: nn.MultiheadAttention) -> SelfAttention:
        """An exact copy of a self-attention ``nn.MultiheadAttention`` (un-parametrized weights)."""
        _check_multihead(attention)
        weights = attention.in_proj_weight.chunk(3)
        biases = (None,) * 3 if attention.in_proj_bias is None else attention.in_proj_bias.chunk(3)
        q, k, v = (_linear(weight, bias) for weight, bias in zip(weights, biases))
        out = _linear(_raw_weight(attention.out_proj), attention.out_proj.bias)
        return cls._assemble(q, k, v, out, attention.head_dim, attention.dropout, attention.batch_first)

    @classmethod
    def _assemble(cls, q: nn.Linear, k: nn.Linear, v: nn.Linear, out: nn.Linear, head_dim: int,
                  dropout: float, batch_first: bool) -> SelfAttention:
        """A SelfAttention around these projections (built on the meta device, then filled)."""
        with torch.device("meta"):
            attention = cls(out.out_features, q.out_features // head_dim, head_dim, bias=q.bias is not None,
                            dropout=dropout, batch_first=batch_first)
        attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj = q, k, v, out
        return attention

    def select_heads(self, heads: torch.Tensor) -> SelfAttention:
        """A copy with only the given heads (indices), weights copied exactly (un-parametrized)."""
        rows = _head_rows(heads, self.head_dim)
        q, k, v = (_linear(_raw_weight(p)[rows], None if p.bias is None else p.bias[rows])
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = _linear(_raw_weight(self.out_proj)[:, rows], self.out_proj.bias)
        return self._assemble(q, k, v, out, self.head_dim, self.dropout, self.batch_first)

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None, *,
                attn_mask: torch.Tensor | None = None, key_padding_mask: torch.Tensor | None = None,
                need_weights: bool = False, is_causal: bool = False) -> tuple[torch.Tensor, None]:
        """(output, None); masks as in nn.MultiheadAttention (bool True = not allowed, float = added)."""
        if need_weights:
            raise ValueError("SelfAttention does not return attention weights: call it with need_weights=False")
        key = query if key is None else key
        value = key if value is None else value
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        output = self._attend(query, key, value, attn_mask, key_padding_mask, is_causal)
        if unbatched:
            return output.squeeze(0), None
        return (output if self.batch_first else output.transpose(0, 1)), None

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None,
                key_padding_mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
        """Batch-first attention: (N, L, E) queries, (N, S, E) keys/values -> (N, L, E)."""
        batch, length = query.shape[:2]
        q, k, v = (self._split(proj(x)) for proj, x in
                   ((self.q_proj, query), (self.k_proj, key), (self.v_proj, value)))
        mask = self._additive_mask(attn_mask, key_padding_mask, batch, q.dtype)
        heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                               dropout_p=self.dropout if self.training else 0.0,
                                               is_causal=is_causal and mask is None)
        return self.out_proj(heads.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, heads*head_dim) -> (N, heads, L, head_dim)."""
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def _additive_mask(self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, batch: int,
                       dtype: torch.dtype) -> torch.Tensor | None:
        """Both masks as one float mask broadcastable to (N, heads, L, S), or None."""
        mask = None
        if attn_mask is not None:
            mask = _additive(attn_mask, dtype)
            if mask.dim() == 3:
                mask = mask.view(batch, self.num_heads, *mask.shape[1:])
        if key_padding_mask is not None:
            padding = _additive(key_padding_mask, dtype).view(batch, 1, 1, -1)
            mask = padding if mask is None else mask + padding
        return mask

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"batch_first={self.batch_first}")


class _ScaleColumns(nn.Module):
    """Parametrization: weight columns times coefficients, each repeated ``width`` times (a head's columns).

    Scaling a Linear's weight columns equals scaling its input's features, and the two cost
    differently: the weight route touches ``out_features x in_features`` values per forward and
    backward, the input route ``rows x in_features`` (rows = tokens in the batch). Inside the
    layer's own forward, ``_scale_input`` (a forward pre-hook) takes the cheaper one; when it scales
    the input it sets ``input_scaled`` and this parametrization returns the stored weight as it is.
    Everywhere else (``layer.weight`` read outside a forward, export, deploy) the weight is scaled.
    """

    def __init__(self, coefficients: ChannelCoefficients, width: int) -> None:
        super().__init__()
        # A tuple, so the coefficients are registered on their block only (named once in
        # named_modules and state_dict); deepcopy keeps the link.
        self._coefficients = (coefficients,)
        self.width = width
        self._slot = OutputSlot()  # memory the C++ path reuses for the scaled weight
        self.input_scaled = False  # True only inside the layer's forward, when its input is scaled instead

    @property
    def coefficients(self) -> torch.Tensor:
        return self._coefficients[0].weight

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.input_scaled:
            return weight
        return scale_columns(weight, self.coefficients, self.width, slot=self._slot)

    def scale_features(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` (..., in_features) with feature j times ``coefficients[j // width]``."""
        rows = features.reshape(-1, features.shape[-1])  # a (rows, in_features) matrix: the same fused op
        return scale_columns(rows, self.coefficients, self.width).view(features.shape)


def _column_scaling(linear: nn.Module) -> _ScaleColumns | None:
    """The slimming parametrization of ``linear.weight``, if it has one (none once folded by deploy)."""
    parametrizations = getattr(linear, "parametrizations", None)
    if parametrizations is None or "weight" not in parametrizations:
        return None
    first = parametrizations["weight"][0]
    return first if isinstance(first, _ScaleColumns) else None


def _scale_input(linear: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook: scale the input's features instead of the weight's columns when the input
    holds fewer values than the weight (and the layer is called with one tensor, as nn.Linear is)."""
    scaling = _column_scaling(linear)
    if scaling is None or len(args) != 1 or not isinstance(args[0], torch.Tensor) or parametrize._cache_enabled:
        return None
    features = args[0]
    weight = linear.parametrizations["weight"].original
    if features.numel() >= weight.numel() or features.shape[-1:] != weight.shape[1:]:
        return None
    scaling.input_scaled = True
    return (scaling.scale_features(features),)


def _end_input_scaling(linear: nn.Module, args: tuple, output: object) -> None:
    """Forward hook (also on error): the weight reads as scaled again outside the forward."""
    scaling = _column_scaling(linear)
    if scaling is not None:
        scaling.input_scaled = False


def _scale_columns_by(linear: nn.Linear, coefficients: ChannelCoefficients, width: int) -> None:
    """Scale ``linear``'s weight columns by ``coefficients`` (each repeated ``width`` times): the
    parametrization, and the hooks that move the scaling onto the input when that is cheaper."""
    parametrize.register_parametrization(linear, "weight", _ScaleColumns(coefficients, width))
    if _scale_input not in linear._forward_pre_hooks.values():
        linear.register_forward_pre_hook(_scale_input)
        linear.register_forward_hook(_end_input_scaling, always_call=True)


def attach_slimming(model: nn.Module) -> list[str]:
    """Attach coefficients (init 1) per attention layer (one per head) and per FFN (one per neuron); their names."""
    blocks = transformer_blocks(model)
    if not blocks:
        raise ValueError("model has no nn.TransformerEncoderLayer, no block with a SelfAttention `self_attn` "
                         "and nn.Linear `linear1`/`linear2` and no Hugging Face BERT-style layer "
                         "(attention.self.query/key/value, attention.output.dense, intermediate.dense, "
                         "output.dense): nothing to slim")
    for name, block in blocks:
        if _is_slimmed(block):
            raise ValueError(f"block {name or '<model>'!r} already has slimming coefficients")
        if isinstance(getattr(block, "self_attn", None), nn.MultiheadAttention):
            _check_multihead(block.self_attn, name)
    names = []
    for name, block in blocks:
        heads, _, _ = _head_layout(block)
        first, second = _ffn_linears(block)
        _attach(block, _coefficients(heads, f"heads:{name}", second.weight),
                _coefficients(first.out_features, FFN_GROUP, second.weight))
        names += [_join(name, HEADS), _join(name, FFN)]
    return names


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every transformer block in module order."""
    return [(name, module) for name, module in model.named_modules() if _is_block(module)]


def slimming_coefficients(model: nn.Module) -> dict[str, ChannelCoefficients]:
    """Every coefficient module attached by attach_slimming, by name."""
    return {_join(name, attr): getattr(block, attr) for name, block in transformer_blocks(model)
            if _is_slimmed(block) for attr in (HEADS, FFN)}


def prune_transformer(model: nn.Module, channel_masks: dict[str, torch.Tensor]) -> nn.Module:
    """A physically smaller deep copy: heads and FFN neurons whose mask bit is False removed, kept coefficients kept.

    ``channel_masks`` maps coefficient module names (``eb.channel_mask()``) to 1-D bool keep masks;
    a missing name keeps everything. A layer never loses all its heads or an FFN all its neurons:
    the one with the largest |coefficient| stays. Pruned ``nn.MultiheadAttention`` modules become
    ``SelfAttention``; a Hugging Face BERT-style layer keeps its modules with smaller linears and its
    ``attention.self.num_attention_heads``/``all_head_size`` updated (its shared config is not).
    """
    keep = _keep_indices(model, channel_masks)
    pruned = copy.deepcopy(model)
    for name, block in transformer_blocks(pruned):
        if _join(name, HEADS) in keep:
            _prune_heads(block, keep[_join(name, HEADS)])
        if _join(name, FFN) in keep:
            _prune_ffn(block, keep[_join(name, FFN)])
    for module in pruned.modules():
        if isinstance(module, nn.TransformerEncoder) and any(isinstance(layer.self_attn, SelfAttention)
                                                              for layer in module.layers):
            module.use_nested_tensor = False  # nested-tensor inputs need nn.MultiheadAttention in every layer
    return pruned


def _is_block(module: nn.Module) -> bool:
    if isinstance(module, nn.TransformerEncoderLayer):
        return True
    if (isinstance(getattr(module, "self_attn", None), SelfAttention)
            and isinstance(getattr(module, "linear1", None), nn.Linear)
            and isinstance(getattr(module, "linear2", None), nn.Linear)):
        return True
    return is_bert_layer(module)


def _head_layout(block: nn.Module) -> tuple[int, int, nn.Linear]:
    """(number of heads, features per head, the attention output projection) of a block."""
    if is_bert_layer(block):
        return bert_heads(block)
    return block.self_attn.num_heads, block.self_attn.head_dim, block.self_attn.out_proj


def _ffn_linears(block: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """The FFN's (first, second) linears of a block: one row / one column per neuron."""
    return bert_ffn(block) if is_bert_layer(block) else (block.linear1, block.linear2)


def _is_slimmed(block: nn.Module) -> bool:
    return isinstance(getattr(block, HEADS, None), ChannelCoefficients)


def _check_multihead(attention: nn.MultiheadAttention, name: str = "") -> None:
    """ValueError unless it is plain self-attention (packed in-projection, no bias_k/v, no zero attention)."""
    if not attention._qkv_same_embed_dim or attention.bias_k is not None or attention.add_zero_attn:
        raise ValueError(f"unsupported nn.MultiheadAttention {name!r}: kdim/vdim, add_bias_kv and add_zero_attn "
                         "are not supported")


def _coefficients(count: int, group: str, like: torch.Tensor) -> ChannelCoefficients:
    return ChannelCoefficients(count, group).to(device=like.device, dtype=like.dtype)


def _attach(block: nn.Module, heads: ChannelCoefficients, ffn: ChannelCoefficients) -> None:
    """Register the coefficients on the block and scale the out-projection and FFN output columns by them."""
    setattr(block, HEADS, heads)
    setattr(block, FFN, ffn)
    _, head_dim, out_projection = _head_layout(block)
    _scale_columns_by(out_projection, heads, head_dim)
    _scale_columns_by(_ffn_linears(block)[1], ffn, 1)


def _keep_indices(model: nn.Module, channel_masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Validated kept indices per coefficient name, only where something is removed."""
    coefficients = slimming_coefficients(model)
    if not coefficients:
        raise ValueError("model has no slimming coefficients: call attach_slimming(model) first")
    keep = {}
    for name, mask in channel_masks.items():
        if name not in coefficients:
            raise ValueError(f"unknown coefficient module {name!r}; known: {sorted(coefficients)}")
        weight = coefficients[name].weight
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != weight.shape:
            got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"mask for {name!r} must be a bool tensor of shape {tuple(weight.shape)}, got {got}")
        indices = mask.to(weight.device).nonzero().flatten()
        if indices.numel() == 0:
            indices = weight.detach().abs().argmax().view(1)
        if indices.numel() < weight.numel():
            keep[name] = indices
    return keep


def _prune_heads(block: nn.Module, heads: torch.Tensor) -> None:
    if is_bert_layer(block):
        _, head_dim, output = bert_heads(block)
        rows = _head_rows(heads, head_dim)
        query, key, value = (_rows(linear, rows).train(block.training) for linear in bert_head_inputs(block))
        set_bert_heads(block, query, key, value, _columns(output, rows).train(block.training))
    else:
        attention = block.self_attn
        if isinstance(attention, nn.MultiheadAttention):
            attention = SelfAttention.from_multihead(attention)
        block.self_attn = attention.select_heads(heads).train(block.training)
    setattr(block, HEADS, _select_coefficients(getattr(block, HEADS), heads))
    _, head_dim, output = _head_layout(block)
    _scale_columns_by(output, getattr(block, HEADS), head_dim)


def _prune_ffn(block: nn.Module, neurons: torch.Tensor) -> None:
    first, second = _ffn_linears(block)
    first, second = _rows(first, neurons).train(block.training), _columns(second, neurons).train(block.training)
    if is_bert_layer(block):
        set_bert_ffn(block, first, second)
    else:
        block.linear1, block.linear2 = first, second
    setattr(block, FFN, _select_coefficients(getattr(block, FFN), neurons))
    _scale_columns_by(second, getattr(block, FFN), 1)


def _head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The inner feature indices of the given heads (head h owns h*head_dim .. (h+1)*head_dim)."""
    return (heads.view(-1, 1) * head_dim + torch.arange(head_dim, device=heads.device)).flatten()


def _rows(linear: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    """A new nn.Linear with only these output rows (weight rows and bias entries)."""
    return _linear(linear.weight[rows], None if linear.bias is None else linear.bias[rows])


def _columns(linear: nn.Linear, columns: torch.Tensor) -> nn.Linear:
    """A new nn.Linear with only these input columns of the stored (un-scaled) weight; same bias."""
    return _linear(_raw_weight(linear)[:, columns], linear.bias)


def _select_coefficients(coefficients: ChannelCoefficients, index: torch.Tensor) -> ChannelCoefficients:
    selected = _coefficients(index.numel(), coefficients.group, coefficients.weight)
    with torch.no_grad():
        selected.weight.copy_(coefficients.weight[index])
    selected.weight.requires_grad_(coefficients.weight.requires_grad)
    return selected


def _raw_weight(linear: nn.Linear) -> torch.Tensor:
    """The stored weight: without the coefficient scaling of a parametrized projection."""
    return linear.parametrizations.weight.original if parametrize.is_parametrized(linear, "weight") else linear.weight


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A new nn.Linear holding copies of these tensors."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                       dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask (True = not allowed) as 0/-inf, a float mask as is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
