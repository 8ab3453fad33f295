"""The memory plan of a training run: what one rank's device holds at its peak, before any work starts.

* :func:`make_plan` counts, for a model shape, ``T``, precision and optimizer: the fp32 parameters,
  their gradients, the optimizer state (AdamW 2 moments per parameter; Muon 1 momentum for the
  blocks' 2-D weights and AdamW's 2 for the rest), autocast's low-precision weight copies, and per
  window of ``T`` tokens the activations autograd keeps (with and without activation checkpointing),
  the backward's transient gradients and the fused LM loss's workspace (:mod:`model.loss`).
* Eager counts are tensor by tensor (fp32: 16 (T, C) tensors per block, checked against the saved
  tensors autograd really keeps by :func:`saved_tensor_bytes` in the tests). Compiled counts scale the
  eager ones by :data:`COMPILED_FACTOR`, measured on an H200 (gpt2, T=1024, bf16: 18.8 and 35.2 GiB
  at micro batch 32 and 64, BENCHMARKS.md): inductor keeps more of what it would otherwise recompute.
* ``python -m trainer ... --dry-run`` prints :func:`plan_table` and exits; ``--micro-batch auto``
  (:mod:`trainer.autobatch`) starts probing from :meth:`MemoryPlan.largest_fitting`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from model.config import GPTConfig
from model.loss import DEFAULT_CHUNK_ROWS

GiB = 2**30
COMPILED_FACTOR = 52 / 36  # compiled / eager activation bytes per block, bf16 (H200 peaks above)
FP32_BLOCK_TENSORS = 16  # (T, C)-sized tensors one block keeps for backward in fp32 (see _block_bytes)


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes on one rank's device; ``*_per_window`` figures are for one window of ``seq_len`` tokens."""

    n_params: int
    optimizer_name: str
    precision: str  # fp32, bf16 or fp16
    compiled: bool
    seq_len: int
    params: int  # fp32 master weights
    amp_weights: int  # autocast's bf16/fp16 weight copies, kept for backward (0 in fp32)
    grads: int
    optimizer: int
    act_per_window: int  # activations autograd keeps through one window's forward, no checkpointing
    act_per_window_ckpt: int  # with activation checkpointing: block inputs only
    recompute_per_window: int  # checkpointing: one block's activations, live while it is recomputed
    transient_per_window: int  # backward's working gradients of one block
    loss_saved: int  # the fused loss's (V, C) weight gradient, kept for backward (model.loss)
    loss_workspace: int  # one chunk of fp32 logits and their gradient, the fp32 (V, C) accumulator
    chunk_rows: int

    @property
    def static(self) -> int:
        """What does not grow with the micro batch: weights, gradients, optimizer state."""
        return self.params + self.amp_weights + self.grads + self.optimizer

    def activations(self, micro_batch: int, checkpointing: bool) -> int:
        """Activations kept through the forward of one micro batch (the loss's saved weight gradient
        is in :meth:`peak`, not here: it does not grow with the micro batch)."""
        if checkpointing:
            return micro_batch * (self.act_per_window_ckpt + self.recompute_per_window)
        return micro_batch * self.act_per_window

    def peak(self, micro_batch: int, checkpointing: bool) -> int:
        """The device's predicted peak allocation during a training step at this micro batch."""
        rows = min(micro_batch * self.seq_len, self.chunk_rows)
        loss = (
            self.loss_workspace * rows // self.chunk_rows if rows < self.chunk_rows else self.loss_workspace
        )
        return (
            self.static
            + self.loss_saved
            + self.activations(micro_batch, checkpointing)
            + micro_batch * self.transient_per_window
            + loss
        )

    def largest_fitting(self, candidates: Iterable[int], budget: int, checkpointing: bool) -> int | None:
        """The largest candidate micro batch whose predicted peak is within ``budget`` bytes (None: none)."""
        fits = [b for b in candidates if self.peak(b, checkpointing) <= budget]
        return max(fits) if fits else None


def _optimizer_bytes(model_config: GPTConfig, optimizer: str, n_params: int) -> int:
    """AdamW: 2 fp32 moments per parameter. Muon: 1 momentum for the blocks' 2-D weights, AdamW's 2 for
    the rest (embeddings, LayerNorms, biases)."""
    if optimizer != "muon":
        return 8 * n_params
    C, L = model_config.n_embd, model_config.n_layer
    block_2d = L * (C * 3 * C + C * C + C * 4 * C + 4 * C * C)  # c_attn, attn c_proj, c_fc, mlp c_proj
    return 4 * block_2d + 8 * (n_params - block_2d)


def _block_bytes(C: int, n_head: int, amp: bool, dropout: bool) -> int:
    """Bytes one block keeps per token for backward, eager.

    fp32: ln_1 input and output, q/k/v (3), attention output (shared with the head merge), c_proj
    input, ln_2 input and output, c_fc output (4), GELU output (4) = 16 C; plus the attention's
    log-sum-exp (n_head). Under autocast the residual stream and LayerNorm inputs stay fp32 (2 x 4C)
    and the matmul inputs are bf16/fp16 copies (2 + 6 + 2 + 2 + 8 + 8 = 28 C bytes). Dropout keeps a
    bool mask per dropped tensor (two (T, C) ones per block).
    """
    per = (8 * C + 28 * C) if amp else 4 * FP32_BLOCK_TENSORS * C
    per += 4 * n_head
    if dropout:
        per += 2 * C
    return per


def make_plan(
    model_config: GPTConfig,
    seq_len: int,
    precision: str = "fp32",
    compiled: bool = False,
    optimizer: str = "adamw",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> MemoryPlan:
    """The :class:`MemoryPlan` of one rank training ``model_config`` at ``seq_len`` tokens per window."""
    cfg = model_config
    C, L, V, T = cfg.n_embd, cfg.n_layer, cfg.padded_vocab_size, seq_len
    n = V * C + cfg.block_size * C + C * 2  # wte (tied lm_head), wpe, ln_f
    # per block: ln_1 and ln_2 (4C), c_attn (3C^2 + 3C), attn c_proj (C^2 + C), c_fc (4C^2 + 4C), c_proj
    n += L * (4 * C + 3 * C * C + 3 * C + C * C + C + 4 * C * C + 4 * C + 4 * C * C + C)
    if not cfg.bias:
        n -= L * (2 * C + 3 * C + C + 4 * C + C) + C
    amp = precision in ("bf16", "fp16")
    act_bytes = 2 if amp else 4
    block = _block_bytes(C, cfg.n_head, amp, cfg.dropout > 0)
    if compiled:
        block = int(block * COMPILED_FACTOR)
    # outside the blocks, per token: the token ids (int64), ln_f's fp32 input, the loss's saved
    # gradient of the hidden states (N, C) in the compute dtype, the embedding dropout's mask
    outside = 8 + 4 * C + act_bytes * C + (C if cfg.dropout > 0 else 0)
    act = T * (L * block + outside)
    act_ckpt = T * (L * 4 * C + outside)  # each block's fp32 input
    transient = T * 4 * (4 * C) * 4  # four fp32 (T, 4C) gradients of the block in backward
    # a chunk's fp32 logits (softmax in place) and, under autocast, their low-precision copy; the fp32
    # weight-gradient accumulator, cast to the compute dtype when saved (the same tensor in fp32)
    loss = chunk_rows * V * (4 + (act_bytes if amp else 0)) + (V * C * 4 if amp else 0)
    return MemoryPlan(
        n_params=n,
        optimizer_name=optimizer,
        precision=precision,
        compiled=compiled,
        seq_len=T,
        params=4 * n,
        amp_weights=act_bytes * n if amp else 0,
        grads=4 * n,
        optimizer=_optimizer_bytes(cfg, optimizer, n),
        act_per_window=act,
        act_per_window_ckpt=act_ckpt,
        recompute_per_window=T * block,
        transient_per_window=transient,
        loss_saved=V * C * act_bytes,
        loss_workspace=loss,
        chunk_rows=chunk_rows,
    )


def _gib(b: float) -> str:
    return f"{b / GiB:,.2f} GiB"


def plan_rows(
    plan: MemoryPlan, micro_batch: int, device_bytes: int | None, device_label: str
) -> list[tuple[str, str, str]]:
    """(item, without checkpointing, with checkpointing) rows of the ``--dry-run`` table."""
    opt = "AdamW: 2 moments" if plan.optimizer_name != "muon" else "Muon: 1 momentum (blocks' 2-D), 2 rest"
    both = lambda v: (_gib(v), _gib(v))  # noqa: E731
    rows = [
        (f"parameters ({plan.n_params / 1e6:,.1f}M, fp32)", *both(plan.params)),
        ("gradients (fp32)", *both(plan.grads)),
        (f"optimizer state ({opt})", *both(plan.optimizer)),
    ]
    if plan.amp_weights:
        rows.append((f"{plan.precision} weight copies (autocast)", *both(plan.amp_weights)))
    rows.append(
        (
            f"activations per window (T={plan.seq_len}{', compiled' if plan.compiled else ''})",
            _gib(plan.act_per_window),
            _gib(plan.act_per_window_ckpt + plan.recompute_per_window),
        )
    )
    rows.append(
        (
            f"activations at micro batch {micro_batch}",
            _gib(plan.activations(micro_batch, False)),
            _gib(plan.activations(micro_batch, True)),
        )
    )
    peak_off, peak_on = plan.peak(micro_batch, False), plan.peak(micro_batch, True)
    rows.append(("total at peak (with backward and loss workspace)", _gib(peak_off), _gib(peak_on)))
    if device_bytes:
        fit = lambda p: f"{100 * p / device_bytes:.0f}% ({'fits' if p <= device_bytes else 'does not fit'})"  # noqa: E731
        rows.append((f"of {device_label} ({_gib(device_bytes)})", fit(peak_off), fit(peak_on)))
    return rows


def saved_tensor_bytes(step: Callable[[], torch.Tensor], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``step()`` runs a forward.

    Tensors sharing storage count once; storages of ``exclude`` (the parameters) do not count. Used to
    check :func:`make_plan`'s activation counts against what autograd really keeps.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())
