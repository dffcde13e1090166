"""The prompt's next-token loss as a function of delta, with its gradient.

For a prompt x_1..x_n the loss is the mean cross-entropy of positions 1..n-1 predicting x_2..x_n,
with logits = head(H + delta). Only positions whose token and next token are both real (attention
mask 1) count, so left or right padding never enters a prompt's loss.

On an affine head, logits(delta) = base + s * delta @ W.T with base = head(H), and the gradient is
s * W.T @ sum(softmax - one_hot) / N. A step then costs one [vocab, hidden] product and one softmax
pass over the cached base logits. Positions are processed in chunks so that the cache and the
working buffers stay within a memory budget; when the cache does not fit, base logits are
recomputed chunk by chunk at every step.
"""

from dataclasses import dataclass

import torch

from slot_core.head import LMHead

BYTES_PER_LOGIT = 4  # float32


@dataclass(frozen=True)
class LossTargets:
    """The positions that enter each prompt's loss, flattened across the batch.

    Attributes:
        hidden: final hidden states at those positions, [positions, hidden].
        targets: the next token at each position, [positions].
        rows: which prompt of the batch each position belongs to, [positions].
        counts: positions per prompt, [batch], at least 1 so an empty prompt has loss 0.
    """

    hidden: torch.Tensor
    targets: torch.Tensor
    rows: torch.Tensor
    counts: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.counts.shape[0]


def loss_targets(hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> LossTargets:
    """Select the positions of each prompt that predict a real next token.

    hidden: [batch, seq, hidden]; input_ids and attention_mask: [batch, seq].
    """
    mask = attention_mask.bool()
    pairs = mask[:, :-1] & mask[:, 1:]  # [batch, seq - 1]
    rows, positions = pairs.nonzero(as_tuple=True)  # [positions] each

    counts = pairs.sum(dim=1).clamp(min=1).to(torch.float32)  # [batch]
    return LossTargets(
        hidden=hidden[rows, positions],  # [positions, hidden]
        targets=input_ids[rows, positions + 1],  # [positions]
        rows=rows,
        counts=counts,
    )


class PromptObjective:
    """Evaluates each prompt's loss, and optionally its gradient, at a batch of deltas."""

    def __init__(self, head: LMHead, targets: LossTargets, memory_budget_bytes: int):
        self.head = head
        self.targets = targets

        positions = targets.targets.shape[0]
        row_bytes = head.vocab_size * BYTES_PER_LOGIT
        # A chunk needs about three [chunk, vocab] buffers (logits, probabilities, a gather copy).
        working_rows = max(1, memory_budget_bytes // (8 * row_bytes))
        self.chunk_rows = max(1, min(positions, working_rows))
        cache_fits = positions * row_bytes + 3 * self.chunk_rows * row_bytes <= memory_budget_bytes

        self.base = None
        if head.is_affine and cache_fits and positions > 0:
            self.base = self._project(slice(0, positions))  # [positions, vocab]

    def evaluate(self, delta: torch.Tensor, with_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (loss [batch], grad [batch, hidden] or None) at delta [batch, hidden] float32."""
        if self.head.is_affine:
            return self._closed_form(delta, with_grad)
        return self._autograd(delta, with_grad)

    def _closed_form(self, delta, with_grad):
        shift = self.head.delta_logits(delta)  # [batch, vocab]
        batch = self.targets.batch_size
        loss = torch.zeros(batch, dtype=torch.float32, device=delta.device)
        logit_grad = torch.zeros_like(shift) if with_grad else None

        for chunk in self._chunks():
            rows = self.targets.rows[chunk]
            targets = self.targets.targets[chunk].unsqueeze(1)  # [chunk, 1]
            base = self.base[chunk] if self.base is not None else self._project(chunk)
            logits = shift.index_select(0, rows).add_(base)  # [chunk, vocab]

            log_normaliser = torch.logsumexp(logits, dim=-1, keepdim=True)  # [chunk, 1]
            token_loss = (log_normaliser - logits.gather(1, targets)).squeeze(1)  # [chunk]
            loss.index_add_(0, rows, token_loss)

            if with_grad:
                probabilities = logits.sub_(log_normaliser).exp_()  # softmax, [chunk, vocab]
                probabilities.scatter_add_(1, targets, torch.full_like(targets, -1.0, dtype=torch.float32))
                logit_grad.index_add_(0, rows, probabilities)

        counts = self.targets.counts
        if not with_grad:
            return loss / counts, None
        grad = self.head.grad_from_logit_grad(logit_grad / counts.unsqueeze(1))  # [batch, hidden]
        return loss / counts, grad

    def _autograd(self, delta, with_grad):
        batch = self.targets.batch_size
        counts = self.targets.counts
        loss = torch.zeros(batch, dtype=torch.float32, device=delta.device)
        grad = torch.zeros_like(delta) if with_grad else None

        for chunk in self._chunks():
            rows = self.targets.rows[chunk]
            with torch.enable_grad():
                leaf = delta.detach().requires_grad_(with_grad)
                hidden = self.targets.hidden[chunk].float() + leaf[rows]  # [chunk, hidden]
                logits = self.head.logits(hidden)  # [chunk, vocab]
                token_loss = torch.nn.functional.cross_entropy(
                    logits, self.targets.targets[chunk], reduction="none"
                )  # [chunk]
                chunk_loss = torch.zeros_like(loss).index_add(0, rows, token_loss) / counts
                if with_grad:
                    (chunk_grad,) = torch.autograd.grad(chunk_loss.sum(), leaf)
                    grad += chunk_grad
            loss += chunk_loss.detach()

        return loss, grad

    def _project(self, chunk: slice) -> torch.Tensor:
        return self.head.project(self.targets.hidden[chunk])  # [chunk, vocab]

    def _chunks(self):
        positions = self.targets.targets.shape[0]
        for start in range(0, positions, self.chunk_rows):
            yield slice(start, min(start + self.chunk_rows, positions))
