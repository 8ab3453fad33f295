"""GPT-2, exactly as OpenAI built it, as one ``nn.Module`` with GPT-2's parameter names.

* ``forward(idx)`` returns ``(logits (B, T, padded_vocab_size), None)``; ``forward(idx, targets)`` returns
  ``(None, mean fp32 cross-entropy)`` without building the logits (:mod:`model.loss`); target -1 is ignored.
* Parameter names are GPT-2's (``transformer.h.N.attn.c_attn``, ``ln_f``, ...), so :mod:`model.hf` maps
  OpenAI / Hugging Face checkpoints by name (HF stores the Linear weights transposed, as ``Conv1D``).
* A KV cache comes in as a plain ``cache`` argument (:mod:`model.kvcache`). Generation is a function of
  the model, ``model.generate.generate(model, idx, n)``, which drives this module and is never imported by it.
* ``activation_checkpointing = True`` keeps only each block's input through a training forward and
  recomputes the rest in backward (``torch.utils.checkpoint``, non-reentrant; dropout masks are
  replayed from the saved RNG state, so the losses and gradients are the same bits).

README.md ("Design", Model) has the rest.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.config import GPTConfig
from model.loss import linear_cross_entropy

if TYPE_CHECKING:
    from model.kvcache import KVCache


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # q, k, v for all heads in one matmul: (C) -> (3C)
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.size()
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        if cache is None:
            # training / uncached path: the fused causal kernel (flash / memory-efficient on CUDA), no
            # mask and no data-dependent branch, so torch.compile captures it as one graph
            dropout_p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            y = cache.attend(layer, q, k, v)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)  # (C) -> (4C)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)  # (4C) -> (C)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.ModuleDict):
    """``GPT.transformer``: a plain ``nn.ModuleDict`` whose entries are declared, so that type checkers know
    ``transformer.wte`` is an ``nn.Embedding`` (``nn.Module.__getattr__`` says only ``Tensor | Module``)."""

    wte: nn.Embedding  # (V_padded, C)
    wpe: nn.Embedding  # (block_size, C)
    drop: nn.Dropout
    h: nn.ModuleList  # of Block
    ln_f: nn.LayerNorm


class GPT(nn.Module):
    """GPT-2 language model; ``lm_head.weight`` *is* ``transformer.wte.weight``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT(config) needs a GPTConfig, got {type(config).__name__}")
        self.config = config
        V = config.padded_vocab_size
        self.transformer = Transformer(
            dict(
                wte=nn.Embedding(V, config.n_embd),  # (V_padded, C)
                wpe=nn.Embedding(config.block_size, config.n_embd),  # (block_size, C)
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, V, bias=False)
        # weight tying (GPT-2): one (V_padded, C) matrix is both the input embedding and the output
        # projection. Assigning the Parameter makes state_dict list it under both names.
        self.transformer.wte.weight = self.lm_head.weight
        # a training setting, not part of the architecture (not in GPTConfig, not in checkpoints)
        self.activation_checkpointing = False
        self.reset_parameters()

    # ------------------------------------------------------------------ init / counting

    def reset_parameters(self) -> None:
        """GPT-2's init: weights normal(0, 0.02), biases 0, LayerNorm (1, 0); the residual output
        projections (``c_proj``) normal(0, 0.02/sqrt(2*n_layer)), so the residual stream's variance
        does not grow with depth."""
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = residual_std if name.endswith("c_proj") else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count, the tied ``wte``/``lm_head`` counted once (as nanoGPT and HF count).

        ``non_embedding=True`` subtracts the position embeddings only: the token embedding is also
        the output projection, so its weights do real matmul work every token (nanoGPT's rule).
        Padded rows are included (they are part of the LM-head matmul).
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a shared tensor once
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token, llm.c's estimate ``6N + 6*L*C*T``.

        ``N`` is every parameter (tied embedding once, padded rows included: they are in the LM-head
        matmul): 2 FLOPs per weight per token forward, 4 backward. ``6*L*C*T`` is the attention
        score and value matmuls (12*L*C*T if dense, halved because causal attention only needs the
        lower triangle, which the flash kernel exploits). ``T`` defaults to ``block_size``.
        """
        cfg = self.config
        T = cfg.block_size if seq_len is None else int(seq_len)
        return 6 * self.num_params(non_embedding=False) + 6 * cfg.n_layer * cfg.n_embd * T

    # ------------------------------------------------------------------ forward

    def _check_length(self, length: int) -> None:
        if length > self.config.block_size:
            raise ValueError(
                f"sequence length {length} exceeds the model's block_size {self.config.block_size} "
                "(the number of learned positions); crop the input to the last block_size tokens "
                "or train with a larger --block-size"
            )

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final hidden states after ``ln_f``: idx (B, T) -> (B, T, C).

        With a ``cache``, ``idx`` are the tokens at positions ``cache.pos .. cache.pos+T-1``; their
        keys/values are appended to the cache (see :mod:`model.kvcache`).
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, time) token ids, got shape {tuple(idx.shape)}")
        T = idx.size(1)
        self._check_length(T if cache is None else cache.pos + T)
        # (T,); a cache gives absolute positions (a static cache's decode step reads them on the device)
        pos = torch.arange(T, device=idx.device) if cache is None else cache.positions(T, idx.device)
        tok_emb = self.transformer.wte(idx)  # (B, T, C)
        pos_emb = self.transformer.wpe(pos)  # (T, C), broadcast over B
        x = self.transformer.drop(tok_emb + pos_emb)
        recompute = self.activation_checkpointing and cache is None and torch.is_grad_enabled()
        for i, block in enumerate(self.transformer.h):
            # checkpointed: keep only x (B, T, C); the block's insides are recomputed in backward
            x = checkpoint(block, x, None, i, use_reentrant=False) if recompute else block(x, cache, i)
        if cache is not None:
            cache.advance(T)
        return self.transformer.ln_f(x)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx (B, T) int64 -> ``(logits (B, T, padded_vocab_size), None)``, or with targets (B, T)
        ``(None, mean CE loss in fp32)``: the loss path never materialises the logits (model.loss)."""
        x = self.hidden_states(idx)  # (B, T, C)
        if targets is None:
            return self.lm_head(x), None  # (B, T, V_padded)
        # fp32 log-sum-exp per chunk even under bf16 autocast: over 50k columns bf16 loses digits.
        # Targets are real ids (< vocab_size): the padded columns only get gradient pushing their logits
        # down, which is harmless (sampling masks them) and keeps the head a matmul-friendly width.
        loss = linear_cross_entropy(x.reshape(-1, x.size(-1)), self.lm_head.weight, targets.reshape(-1))
        return None, loss
