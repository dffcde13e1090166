"""The SLOT optimisation loop: AdamW steps on delta against each prompt's own loss."""

from dataclasses import dataclass

import torch

from slot_core.adamw import BatchedAdamW
from slot_core.compat import body_of, run_body
from slot_core.config import SlotConfig
from slot_core.head import LMHead, read_head
from slot_core.objective import BYTES_PER_LOGIT, PromptObjective, loss_targets
from slot_core.prompts import positions_from_mask

#: Memory for cached prompt logits and working buffers of one optimisation, in MiB.
DEFAULT_MEMORY_BUDGET_MB = 512


@dataclass(frozen=True)
class DeltaFit:
    """The result of optimising delta for a batch of prompts.

    Attributes:
        delta: the delta to decode with, float32 [batch, hidden]. On divergence this is the last
            delta whose loss was finite (zeros if there was none).
        loss_trace: prompt loss at delta_0..delta_T, float32 [batch, steps + 1]. Entries after a
            row stopped (fewer steps, or divergence) are NaN.
        history: delta_0..delta_T, float32 [batch, steps + 1, hidden], NaN where loss_trace is.
        steps_run: AdamW steps applied to each row's returned delta.
        diverged_at: per row, the step whose loss or delta was not finite, or None.
        head_path: "closed_form" for heads affine in delta, else "autograd".
    """

    delta: torch.Tensor
    loss_trace: torch.Tensor
    history: torch.Tensor
    steps_run: list[int]
    diverged_at: list[int | None]
    head_path: str


def optimize_delta(model, input_ids, attention_mask=None, config: SlotConfig = SlotConfig(),
                   memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB) -> DeltaFit:
    """Run the transformer body once over the prompts and fit one delta per prompt.

    Args:
        model: a Hugging Face causal LM. It is not modified.
        input_ids: [batch, seq] token ids.
        attention_mask: [batch, seq], 1 for real tokens; left or right padding. None means all real.
        config: SLOT hyperparameters, shared by every prompt of the batch.
        memory_budget_mb: MiB for cached logits and working buffers.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)

    with torch.no_grad():
        hidden, _ = run_body(
            body_of(model), input_ids, attention_mask, positions_from_mask(attention_mask)
        )  # [batch, seq, hidden]

    configs = [config] * input_ids.shape[0]
    return fit_delta(read_head(model), hidden, input_ids, attention_mask, configs, memory_budget_mb)


def fit_delta(head: LMHead, hidden, input_ids, attention_mask, configs: list[SlotConfig],
              memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB) -> DeltaFit:
    """Fit delta from precomputed final hidden states [batch, seq, hidden].

    Each row has its own config. A row stops at its own step count, or at the first step whose
    loss, gradient or new delta is not finite; it then keeps the last delta with a finite loss.

    Rows are independent, so the batch is fitted in consecutive groups of rows whose cached
    logits fit the memory budget together; a large batch then never falls back to recomputing
    its logits at every step.
    """
    budget_bytes = memory_budget_mb * 2**20
    fits = []
    for rows in _row_groups(attention_mask, head.vocab_size, budget_bytes):
        fits.append(_fit_group(head, hidden[rows], input_ids[rows], attention_mask[rows], configs[rows],
                               budget_bytes))
    return _concatenate(fits, max(config.steps for config in configs), head.path)


def _row_groups(attention_mask, vocab_size: int, budget_bytes: int) -> list[slice]:
    """Split rows into consecutive groups whose loss positions' logits fit half the budget each.

    The other half is left for the working buffers. A row too large on its own forms its own
    group, which then streams its logits.
    """
    mask = attention_mask.bool()
    positions = (mask[:, :-1] & mask[:, 1:]).sum(dim=1).tolist()
    limit = budget_bytes // 2
    groups, start, used = [], 0, 0
    for row, count in enumerate(positions):
        size = count * vocab_size * BYTES_PER_LOGIT
        if row > start and used + size > limit:
            groups.append(slice(start, row))
            start, used = row, 0
        used += size
    groups.append(slice(start, len(positions)))
    return groups


def _concatenate(fits: list[DeltaFit], max_steps: int, head_path: str) -> DeltaFit:
    """Join the fits of consecutive row groups, padding shorter traces with NaN."""
    def padded(tensor):
        missing = max_steps + 1 - tensor.shape[1]
        if missing == 0:
            return tensor
        shape = (tensor.shape[0], missing, *tensor.shape[2:])
        return torch.cat([tensor, torch.full(shape, float("nan"), dtype=tensor.dtype)], dim=1)

    return DeltaFit(
        delta=torch.cat([fit.delta for fit in fits]),
        loss_trace=torch.cat([padded(fit.loss_trace) for fit in fits]),
        history=torch.cat([padded(fit.history) for fit in fits]),
        steps_run=[step for fit in fits for step in fit.steps_run],
        diverged_at=[step for fit in fits for step in fit.diverged_at],
        head_path=head_path,
    )


def _fit_group(head: LMHead, hidden, input_ids, attention_mask, configs: list[SlotConfig],
               budget_bytes: int) -> DeltaFit:
    batch = len(configs)
    device = hidden.device
    targets = loss_targets(hidden, input_ids, attention_mask)
    objective = PromptObjective(head, targets, budget_bytes)

    max_steps = max(config.steps for config in configs)
    steps = torch.tensor([config.steps for config in configs], device=device)
    delta = torch.zeros(batch, hidden.shape[-1], dtype=torch.float32, device=device)
    previous = delta
    optimizer = BatchedAdamW(configs, hidden.shape[-1], device)
    trace = torch.full((batch, max_steps + 1), float("nan"), dtype=torch.float32)
    history = torch.full((batch, max_steps + 1, hidden.shape[-1]), float("nan"), dtype=torch.float32)
    active = torch.ones(batch, dtype=torch.bool, device=device)
    steps_run = torch.zeros(batch, dtype=torch.long, device=device)
    diverged_at: list[int | None] = [None] * batch

    with torch.no_grad():
        for step in range(max_steps + 1):
            wants_grad = bool((active & (steps > step)).any())
            loss, grad = objective.evaluate(delta, with_grad=wants_grad)

            finite = torch.isfinite(loss)
            if grad is not None:
                finite &= torch.isfinite(grad).all(dim=1)
            bad_loss = active & ~finite
            _mark_diverged(diverged_at, bad_loss, step)
            # A row whose loss at delta_t is not finite falls back to delta_{t-1} (zeros at t = 0).
            delta = torch.where(bad_loss.unsqueeze(1), previous, delta)
            steps_run = torch.where(bad_loss, (steps_run - 1).clamp(min=0), steps_run)
            active &= finite

            recording = (active & (steps >= step)).cpu()
            trace[recording, step] = loss.cpu()[recording]
            history[recording, step] = delta.cpu()[recording]

            stepping = active & (steps > step)
            if not bool(stepping.any()):
                break
            previous = delta
            delta = optimizer.step(delta, grad, stepping)
            steps_run += stepping.long()

            bad_delta = stepping & ~torch.isfinite(delta).all(dim=1)
            _mark_diverged(diverged_at, bad_delta, step + 1)
            delta = torch.where(bad_delta.unsqueeze(1), previous, delta)
            steps_run -= bad_delta.long()
            active &= ~bad_delta

    return DeltaFit(
        delta=delta,
        loss_trace=trace,
        history=history,
        steps_run=steps_run.tolist(),
        diverged_at=diverged_at,
        head_path=head.path,
    )


def _mark_diverged(diverged_at: list[int | None], rows: torch.Tensor, step: int) -> None:
    for row in rows.nonzero().flatten().tolist():
        diverged_at[row] = step
