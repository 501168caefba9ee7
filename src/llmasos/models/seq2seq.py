"""Encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017), read top to bottom.

Shapes: B batch, S source length, T target length, D d_model, H heads, Dh = D / H, V target vocabulary.

Conventions:
- `src_ids` [B, S] and target tensors [B, T] are right-padded with `pad_id`;
- a key padding mask is True where the key is padding (the `torch.nn.MultiheadAttention` convention);
- the targets given to `loss` end with `eos_id` and carry no `bos_id`: the decoder reads them shifted right
  behind `bos_id` (`shift_right`) and predicts them unshifted (teacher forcing);
- `generate` returns the new tokens only, no BOS, up to and including EOS, `pad_id` after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Seq2SeqConfig:
    src_vocab_size: int
    tgt_vocab_size: int | None = None  # None: source and target share one vocabulary
    d_model: int = 512
    num_heads: int = 8
    d_ff: int = 2048
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dropout: float = 0.1  # on embeddings and on each sub-layer output, as in the paper
    attn_dropout: float = 0.0  # on attention weights; the paper has none, tensor2tensor does
    max_len: int = 512  # longest source, and longest decoder input, the position table covers
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    norm_first: bool = False  # False: the paper's post-LN, LayerNorm(x + sublayer(x)); True: pre-LN
    share_embeddings: bool = False  # one table for source and target tokens; needs a shared vocabulary
    tie_output_embeddings: bool = True  # the pre-softmax projection is the target embedding, as in the paper
    label_smoothing: float = 0.0  # the paper trains with 0.1
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.tgt_vocab_size is None:
            self.tgt_vocab_size = self.src_vocab_size
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "num_heads", "d_ff", "max_len",
                     "num_encoder_layers", "num_decoder_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads}) "
                "so that every head gets d_model // num_heads dimensions"
            )
        for name in ("dropout", "attn_dropout", "label_smoothing"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps must be positive, got {self.norm_eps!r}")
        # Padding occurs on both sides; BOS and EOS are only ever target tokens.
        if not 0 <= self.pad_id < min(self.src_vocab_size, self.tgt_vocab_size):
            raise ValueError(
                f"pad_id ({self.pad_id}) must be a valid id in both vocabularies "
                f"(src {self.src_vocab_size}, tgt {self.tgt_vocab_size})"
            )
        for name in ("bos_id", "eos_id"):
            value = getattr(self, name)
            if not 0 <= value < self.tgt_vocab_size:
                raise ValueError(f"{name} ({value}) must be in [0, tgt_vocab_size={self.tgt_vocab_size})")
        # The loss ignores pad_id, so a pad that doubled as EOS would never be learned as a stop signal,
        # and a pad that doubled as BOS would be masked out of the decoder's only context at step one.
        if self.pad_id in (self.bos_id, self.eos_id):
            raise ValueError(
                f"pad_id ({self.pad_id}) must differ from bos_id ({self.bos_id}) and eos_id ({self.eos_id})"
            )
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                f"share_embeddings needs one vocabulary, got src_vocab_size={self.src_vocab_size} "
                f"and tgt_vocab_size={self.tgt_vocab_size}"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


def sinusoidal_positions(max_len: int, d_model: int) -> torch.Tensor:
    """The paper's fixed table [max_len, d_model].

    PE[p, 2i] = sin(p / 10000^(2i / d_model)) and PE[p, 2i + 1] = cos(p / 10000^(2i / d_model)).
    """
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    inv_freq = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    angles = pos * inv_freq  # float64: at large positions float32 angles lose the low-order digits
    pe = torch.zeros(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = angles.sin()
    pe[:, 1::2] = angles.cos()[:, : d_model // 2]  # an odd d_model has one sine column more than cosines
    return pe.float()


class KVCache:
    """One attention layer's keys and values, [B, H, capacity, Dh], valid up to `length`.

    Self-attention appends each step's K/V into room allocated once, instead of concatenating per token.
    Cross-attention K/V depend only on the encoder output, so they are projected once and marked `static`.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, length: int, static: bool = False) -> None:
        self.k, self.v, self.length, self.static = k, v, length, static

    @classmethod
    def empty(cls, batch: int, heads: int, capacity: int, head_dim: int, like: torch.Tensor) -> KVCache:
        shape = (batch, heads, capacity, head_dim)
        return cls(like.new_zeros(shape), like.new_zeros(shape), 0)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[2]} positions, {end} requested")
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reorder(self, index: torch.Tensor) -> None:
        self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


@dataclass
class DecoderCache:
    self_attn: list[KVCache]
    cross_attn: list[KVCache]

    @property
    def length(self) -> int:
        return self.self_attn[0].length

    def reorder(self, index: torch.Tensor) -> None:
        # Beam search only permutes beams of the same source, whose cross-attention K/V are identical,
        # so only the self-attention caches need to move.
        for c in self.self_attn:
            c.reorder(index)


class MultiHeadAttention(nn.Module):
    """softmax(Q K^T / sqrt(d_k)) V in H heads of Dh dimensions each, then an output projection."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.num_heads, self.head_dim, self.dropout = num_heads, d_model // num_heads, dropout
        # Separate projections rather than one fused QKV: in cross-attention Q and K/V read different inputs.
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, H, L, Dh]
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._split_heads(self.k_proj(x)), self._split_heads(self.v_proj(x))

    def forward(
        self,
        x: torch.Tensor,  # [B, T, D] queries
        memory: torch.Tensor | None = None,  # [B, S, D] keys/values for cross-attention; None: self-attention
        key_padding_mask: torch.Tensor | None = None,  # [B, S] bool, True = ignore this key
        causal: bool = False,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        q = self._split_heads(self.q_proj(x))
        if cache is not None and cache.static:
            k, v = cache.k, cache.v
        else:
            k, v = self.project_kv(x if memory is None else memory)
            if cache is not None:
                k, v = cache.append(k, v)
        q_len, k_len = q.shape[2], k.shape[2]

        mask = None  # bool, True = may attend
        if key_padding_mask is not None:
            keep = ~key_padding_mask
            # A row whose keys are all padding (an empty source) leaves softmax nothing to normalise, and not
            # every SDPA backend returns a finite result then; attending to the padding is as meaningless but
            # finite.
            keep = keep | ~keep.any(-1, keepdim=True)
            mask = keep[:, None, None, :]
        is_causal = False
        if causal and q_len > 1:  # a single new query may see the whole cache, which holds only the past
            if mask is None and q_len == k_len:
                is_causal = True  # lets SDPA pick a fused causal kernel
            else:
                # The cache holds k_len - q_len earlier positions, so query i sits at k_len - q_len + i.
                future = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril(k_len - q_len)
                mask = future if mask is None else mask & future
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal
        )
        return self.out_proj(o.transpose(1, 2).flatten(-2))


class FeedForward(nn.Module):
    """Position-wise FFN(x) = max(0, x W1 + b1) W2 + b2."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def _residual(
    x: torch.Tensor,
    norm: nn.Module,
    sublayer: Callable[[torch.Tensor], torch.Tensor],
    dropout: nn.Dropout,
    norm_first: bool,
) -> torch.Tensor:
    # Post-LN is the paper's LayerNorm(x + Dropout(Sublayer(x))); pre-LN keeps an unnormalised residual
    # path, x + Dropout(Sublayer(LayerNorm(x))), which trains without warmup at depth.
    if norm_first:
        return x + dropout(sublayer(norm(x)))
    return norm(x + dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.norm_first = cfg.norm_first
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.attn_dropout)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff)
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, src_pad_mask: torch.Tensor | None) -> torch.Tensor:
        x = _residual(x, self.norm1, lambda h: self.self_attn(h, key_padding_mask=src_pad_mask), self.dropout,
                      self.norm_first)
        return _residual(x, self.norm2, self.ff, self.dropout, self.norm_first)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.norm_first = cfg.norm_first
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.attn_dropout)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.attn_dropout)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff)
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.norm3 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_pad_mask: torch.Tensor | None,
        cache: tuple[KVCache, KVCache] | None = None,
    ) -> torch.Tensor:
        self_cache, cross_cache = (None, None) if cache is None else cache
        # No target padding mask: targets are right-padded, so the causal mask already hides the padding
        # from every real position, and what padded positions compute is ignored by the loss.
        x = _residual(x, self.norm1, lambda h: self.self_attn(h, causal=True, cache=self_cache), self.dropout,
                      self.norm_first)
        x = _residual(
            x, self.norm2,
            lambda h: self.cross_attn(h, memory, key_padding_mask=memory_pad_mask, cache=cross_cache),
            self.dropout, self.norm_first,
        )
        return _residual(x, self.norm3, self.ff, self.dropout, self.norm_first)


def _embed(embed: nn.Embedding, positions: torch.Tensor, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
    end = start + ids.shape[1]
    if end > positions.shape[0]:
        raise ValueError(f"sequence reaches position {end}, beyond max_len={positions.shape[0]}")
    # The paper scales embeddings by sqrt(d_model); with weights ~ N(0, 1/d_model) that gives unit-scale
    # token vectors, comparable to the [-1, 1] positional signal they are added to.
    return embed(ids) * math.sqrt(embed.embedding_dim) + positions[start:end]


class Encoder(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.src_vocab_size, cfg.d_model)
        self.register_buffer("positions", sinusoidal_positions(cfg.max_len, cfg.d_model), persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_encoder_layers))
        # Pre-LN leaves the residual stream unnormalised, so it needs a final LayerNorm; post-LN does not.
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps) if cfg.norm_first else nn.Identity()

    def forward(self, src_ids: torch.Tensor, src_pad_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.dropout(_embed(self.embed, self.positions, src_ids))
        for layer in self.layers:
            x = layer(x, src_pad_mask)
        return self.norm(x)


class Decoder(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.tgt_vocab_size, cfg.d_model)
        self.register_buffer("positions", sinusoidal_positions(cfg.max_len, cfg.d_model), persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_decoder_layers))
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps) if cfg.norm_first else nn.Identity()

    def make_cache(self, memory: torch.Tensor, capacity: int) -> DecoderCache:
        """Room for `capacity` decoder positions, and every layer's cross-attention K/V over `memory`."""
        self_attn, cross_attn = [], []
        for layer in self.layers:
            attn = layer.self_attn
            self_attn.append(KVCache.empty(memory.shape[0], attn.num_heads, capacity, attn.head_dim, memory))
            k, v = layer.cross_attn.project_kv(memory)
            cross_attn.append(KVCache(k, v, k.shape[2], static=True))
        return DecoderCache(self_attn, cross_attn)

    def forward(
        self,
        tgt_ids: torch.Tensor,
        memory: torch.Tensor,
        memory_pad_mask: torch.Tensor | None,
        cache: DecoderCache | None = None,
    ) -> torch.Tensor:
        # With a cache, tgt_ids continue the tokens already in it, so positions resume where it left off.
        start = 0 if cache is None else cache.length
        x = self.dropout(_embed(self.embed, self.positions, tgt_ids, start))
        for i, layer in enumerate(self.layers):
            layer_cache = None if cache is None else (cache.self_attn[i], cache.cross_attn[i])
            x = layer(x, memory, memory_pad_mask, layer_cache)
        return self.norm(x)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    # Softmax statistics in half precision are too coarse; float64 (used by exact tests) is kept as is.
    return x.to(torch.promote_types(x.dtype, torch.float32))


class Seq2SeqTransformer(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)
        self.apply(self._init_weights)
        # Tie after init so that shared matrices keep the embedding initialisation.
        if cfg.share_embeddings:
            self.decoder.embed.weight = self.encoder.embed.weight
        if cfg.tie_output_embeddings:
            self.lm_head.weight = self.decoder.embed.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            # std 1/sqrt(d_model): unit scale after the sqrt(d_model) multiplier, and logits of unit scale
            # when the same matrix is the output projection.
            nn.init.normal_(module.weight, std=module.embedding_dim**-0.5)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() lists a tied matrix once

    def shift_right(self, tgt_ids: torch.Tensor) -> torch.Tensor:
        """Decoder input for teacher forcing: BOS, then the targets without their last column."""
        bos = tgt_ids.new_full((tgt_ids.shape[0], 1), self.config.bos_id)
        return torch.cat([bos, tgt_ids[:, :-1]], dim=1)

    def encode(self, src_ids: torch.Tensor) -> torch.Tensor:
        """[B, S] source ids -> [B, S, D] memory (rows at padding positions are meaningless)."""
        return self.encoder(src_ids, src_ids == self.config.pad_id)

    def decode(
        self,
        tgt_in_ids: torch.Tensor,
        memory: torch.Tensor,
        memory_pad_mask: torch.Tensor | None,
        cache: DecoderCache | None = None,
    ) -> torch.Tensor:
        """[B, T] decoder input ids -> [B, T, V] logits; with `cache`, only the new tokens are passed."""
        return self.lm_head(self.decoder(tgt_in_ids, memory, memory_pad_mask, cache))

    def forward(self, src_ids: torch.Tensor, tgt_in_ids: torch.Tensor) -> torch.Tensor:
        """[B, S] source ids and [B, T] decoder input ids (BOS-led) -> [B, T, V] logits."""
        return self.decode(tgt_in_ids, self.encode(src_ids), src_ids == self.config.pad_id)

    def loss(
        self, src_ids: torch.Tensor, tgt_ids: torch.Tensor, label_smoothing: float | None = None
    ) -> torch.Tensor:
        """Mean cross-entropy over the non-pad tokens of `tgt_ids` (EOS-terminated, no BOS), teacher-forced.

        `label_smoothing` defaults to the config's.
        """
        smoothing = self.config.label_smoothing if label_smoothing is None else label_smoothing
        logits = _at_least_fp32(self(src_ids, self.shift_right(tgt_ids)))
        return F.cross_entropy(
            logits.flatten(0, 1), tgt_ids.flatten(), ignore_index=self.config.pad_id,
            label_smoothing=smoothing,
        )

    def _next_token_logits(self, logits: torch.Tensor) -> torch.Tensor:
        # Padding is never a real output, and neither is BOS unless it doubles as EOS.
        logits = _at_least_fp32(logits)
        logits[:, self.config.pad_id] = -math.inf
        if self.config.bos_id != self.config.eos_id:
            logits[:, self.config.bos_id] = -math.inf
        return logits

    @torch.no_grad()
    def generate(
        self,
        src_ids: torch.Tensor,
        max_new_tokens: int,
        num_beams: int = 1,
        length_penalty: float = 1.0,
    ) -> torch.Tensor:
        """Greedy (num_beams=1) or beam-search decoding of each source with a KV cache.

        Returns [B, L] ids, L <= max_new_tokens: each row's tokens up to and including EOS, then pad_id.
        Beam hypotheses are ranked by sum log-prob / length**length_penalty (0 ranks by raw log-prob).
        Call `eval()` first, as dropout would otherwise stay on.
        """
        if not 1 <= max_new_tokens <= self.config.max_len:
            raise ValueError(
                f"max_new_tokens must be in [1, max_len={self.config.max_len}], got {max_new_tokens}"
            )
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        memory = self.encode(src_ids)
        pad_mask = src_ids == self.config.pad_id
        if num_beams == 1:
            return self._greedy(memory, pad_mask, max_new_tokens)
        return self._beam_search(memory, pad_mask, max_new_tokens, num_beams, length_penalty)

    def _greedy(self, memory: torch.Tensor, pad_mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        cfg = self.config
        cache = self.decoder.make_cache(memory, max_new_tokens)
        token = pad_mask.new_full((memory.shape[0], 1), cfg.bos_id, dtype=torch.long)
        done = torch.zeros(memory.shape[0], dtype=torch.bool, device=memory.device)
        out = []
        for _ in range(max_new_tokens):
            logits = self._next_token_logits(self.decode(token, memory, pad_mask, cache)[:, -1])
            # Rows past their EOS keep stepping with the batch (they cost little) but only emit padding.
            token = logits.argmax(-1, keepdim=True).masked_fill(done[:, None], cfg.pad_id)
            out.append(token)
            done |= token[:, 0] == cfg.eos_id
            if done.all():
                break
        return torch.cat(out, dim=1)

    def _beam_search(
        self, memory: torch.Tensor, pad_mask: torch.Tensor, max_new_tokens: int, k: int, length_penalty: float
    ) -> torch.Tensor:
        cfg = self.config
        batch, vocab, device = memory.shape[0], cfg.tgt_vocab_size, memory.device
        memory, pad_mask = memory.repeat_interleave(k, 0), pad_mask.repeat_interleave(k, 0)  # row b*k + j
        cache = self.decoder.make_cache(memory, max_new_tokens)
        # All beams start identical; giving all but one -inf keeps the first top-k from picking duplicates.
        scores = torch.full((batch, k), -math.inf, device=device)
        scores[:, 0] = 0.0
        tokens = torch.empty(batch * k, 0, dtype=torch.long, device=device)
        last = torch.full((batch * k, 1), cfg.bos_id, dtype=torch.long, device=device)
        done = torch.zeros(batch * k, dtype=torch.bool, device=device)
        row_offset = torch.arange(batch, device=device)[:, None] * k
        for _ in range(max_new_tokens):
            logits = self._next_token_logits(self.decode(last, memory, pad_mask, cache)[:, -1])
            logp = F.log_softmax(logits, dim=-1)
            # A finished beam extends only with padding, at no cost: it keeps competing with its final score.
            logp[done] = -math.inf
            logp[done, cfg.pad_id] = 0.0
            candidates = (scores.reshape(-1, 1) + logp).view(batch, k * vocab)
            scores, flat = candidates.topk(k, dim=-1)
            parent = (flat // vocab + row_offset).view(-1)
            last = (flat % vocab).view(-1, 1)
            tokens = torch.cat([tokens[parent], last], dim=1)
            done = done[parent] | (last[:, 0] == cfg.eos_id)
            cache.reorder(parent)
            if done.all():
                break
        lengths = (tokens != cfg.pad_id).sum(-1).clamp(min=1)  # pad only follows EOS, so this counts EOS in
        ranked = scores.reshape(-1) / lengths.float() ** length_penalty
        best = ranked.view(batch, k).argmax(-1) + row_offset[:, 0]
        return tokens[best, : int(lengths[best].max())]
