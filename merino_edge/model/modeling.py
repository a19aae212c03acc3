"""The MeRino decoder in PyTorch, as a `transformers` causal LM.

Reads like nanoGPT (attention, MLP, layer, block, model) with the MeRino twists:

- a block holds ONE `MeRinoLayer` run `depth` times when weights are shared
  (so `model.safetensors` stores it once), or `depth` layers when not; every
  layer execution has its own KV-cache layer index, 0 .. sum(depths) - 1;
- linear projections (no bias) P->E_1, E_j->E_{j+1}, E_N->P where widths differ;
- token and learned position embeddings at P, LM head tied to the token embedding.

LayerNorm and softmax always run in float32 and the logits come out in float32,
so the same code is safe in fp16 (and the fp16 ONNX graph inherits the casts).
Attention is explicit matmuls so that `torch.utils.flop_counter` counts QK^T and
AV over the full S x S, exactly as `ArchSpec.flops` does.

The KV cache argument is `cache`, the name `generate()` passes from
transformers 5.24 on; `past_key_values`, the name before it, is taken too, so a
checkpoint works on every tested 5.x release.  Outputs carry the cache under the
installed version's field name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from merino_edge.arch import Block
from merino_edge.model.configuration import MeRinoConfig

# transformers 5.24 renamed the outputs' `past_key_values` field to `cache`.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class MeRinoLayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


class MeRinoAttention(nn.Module):
    """Multi-head causal self-attention, Q/K/V/O all E x E with biases, head dim 64."""

    def __init__(self, width: int, head_dim: int):
        super().__init__()
        self.num_heads = width // head_dim
        self.head_dim = head_dim
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.o_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor, cache=None, cache_index: int = 0) -> torch.Tensor:
        """`attn_bias` [b, 1, s, past+s] float32 (0 or very negative); `cache.update` appends this step's K/V."""
        b, s, e = x.shape

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)

        q = split_heads(self.q_proj(x)) * self.head_dim**-0.5
        k = split_heads(self.k_proj(x))
        v = split_heads(self.v_proj(x))
        if hasattr(cache, "attend"):  # a cache that reads its past where it lies (the CPU graphs', export/onnx.py)
            y = cache.attend(q, k, v, attn_bias, cache_index)
        else:
            if cache is not None:
                k, v = cache.update(k, v, cache_index)
            y = attend(q, k, v, attn_bias)
        return self.o_proj(y.transpose(1, 2).reshape(b, s, e))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T + bias) v over [b, heads, s, 64] queries and [b, heads, past+s, 64] keys and values."""
    return attention_probs(q @ k.transpose(-2, -1), attn_bias, v.dtype) @ v


def attention_probs(scores: torch.Tensor, attn_bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """softmax(scores + bias) in float32 (also in an fp16 graph), handed back in `dtype`."""
    return torch.softmax(scores.float() + attn_bias, dim=-1).to(dtype)


class MeRinoMLP(nn.Module):
    def __init__(self, width: int, ffn_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(width, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class MeRinoLayer(nn.Module):
    """Pre-LN transformer layer: x + MHA(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, width: int, ffn_dim: int, head_dim: int, eps: float):
        super().__init__()
        self.attn_norm = MeRinoLayerNorm(width, eps=eps)
        self.attn = MeRinoAttention(width, head_dim)
        self.mlp_norm = MeRinoLayerNorm(width, eps=eps)
        self.mlp = MeRinoMLP(width, ffn_dim)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor, cache=None, cache_index: int = 0) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), attn_bias, cache, cache_index)
        return x + self.mlp(self.mlp_norm(x))


class MeRinoBlock(nn.Module):
    """A projection from the previous width (if it differs), then `depth` layer executions."""

    def __init__(self, in_dim: int, block: Block, shared: bool, head_dim: int, eps: float):
        super().__init__()
        self.depth = block.depth
        self.proj_in = nn.Linear(in_dim, block.width, bias=False) if in_dim != block.width else nn.Identity()
        copies = 1 if shared else block.depth
        self.layers = nn.ModuleList(MeRinoLayer(block.width, block.ffn_dim, head_dim, eps) for _ in range(copies))

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor, cache=None, first_index: int = 0) -> torch.Tensor:
        x = self.proj_in(x)
        for i in range(self.depth):
            x = self.layers[i % len(self.layers)](x, attn_bias, cache, first_index + i)
        return x


def attention_bias(attention_mask: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Causal + padding mask as an additive float32 bias [b, 1, seq_len, past+seq_len].

    `attention_mask` [b, past+seq_len] is 1 for real tokens, 0 for padding; the
    queries are its last `seq_len` positions.
    """
    total = attention_mask.shape[1]
    key_pos = torch.arange(total, device=attention_mask.device)
    query_pos = key_pos[total - seq_len :]
    causal = key_pos[None, :] <= query_pos[:, None]
    allowed = causal[None, None] & attention_mask[:, None, None, :].bool()
    return torch.where(allowed, 0.0, torch.finfo(torch.float32).min)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of every token counting only real ones (padding gets 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class MeRinoPreTrainedModel(PreTrainedModel):
    config: MeRinoConfig
    config_class = MeRinoConfig
    base_model_prefix = "model"
    _no_split_modules = ["MeRinoLayer"]


class MeRinoModel(MeRinoPreTrainedModel):
    """Embeddings at P, the blocks, final LayerNorm at E_N and the projection back to P."""

    def __init__(self, config: MeRinoConfig):
        super().__init__(config)
        arch = config.to_arch()
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.proj_dim)
        self.embed_positions = nn.Embedding(arch.max_positions, arch.proj_dim)
        in_dims = [arch.proj_dim, *arch.widths[:-1]]
        self.blocks = nn.ModuleList(
            MeRinoBlock(d, b, arch.shared, arch.head_dim, config.layer_norm_eps) for d, b in zip(in_dims, arch.blocks, strict=True)
        )
        last = arch.widths[-1]
        self.norm = MeRinoLayerNorm(last, eps=config.layer_norm_eps)
        self.proj_out = nn.Linear(last, arch.proj_dim, bias=False) if last != arch.proj_dim else nn.Identity()
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        use_cache: bool | None = None,
        past_key_values=None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """`attention_mask` [b, past+s] covers the cached tokens too; `cache` is updated in place."""
        cache = past_key_values if cache is None else cache
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        b, s = input_ids.shape
        if attention_mask is None:
            past = cache.get_seq_length() if cache is not None else 0
            attention_mask = torch.ones(b, past + s, dtype=torch.long, device=input_ids.device)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask)[:, -s:]

        x = self.embed_tokens(input_ids) + self.embed_positions(position_ids)
        bias = attention_bias(attention_mask, s)
        cache = cache if use_cache else None
        first_index = 0
        for block in self.blocks:
            x = block(x, bias, cache, first_index)
            first_index += block.depth
        x = self.proj_out(self.norm(x))
        return BaseModelOutputWithPast(last_hidden_state=x, **{CACHE_FIELD: cache})


class MeRinoForCausalLM(MeRinoPreTrainedModel, GenerationMixin):
    """`MeRinoModel` plus the LM head tied to the token embedding; logits are float32."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MeRinoConfig):
        super().__init__(config)
        self.model = MeRinoModel(config)
        self.lm_head = nn.Linear(config.proj_dim, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        past_key_values=None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """`logits_to_keep` > 0 computes the logits of only the last that many positions."""
        out = self.model(input_ids, attention_mask, position_ids, cache, use_cache, past_key_values=past_key_values)
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden).float()
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: getattr(out, CACHE_FIELD)})
