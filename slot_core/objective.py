"""The prompt's next-token loss as a function of delta, with its gradient.

For a prompt x_1..x_n the loss is the mean cross-entropy of positions 1..n-1 predicting x_2..x_n,
with logits = head(H + delta). Only positions whose token and next token are both real (attention
mask 1) count, so left or right padding never enters a prompt's loss.

On an affine head, logits(delta) = base + shift with base = head(H) and shift = s * delta @ W.T,
and the gradient is s * W.T @ sum(softmax - one_hot) / N. The engine caches E = exp(base - m), with
m each position's largest base logit. With u = exp(shift - max(shift)), each position's softmax
normaliser is the dot product Z = E @ u, and the summed softmax is u * (1/Z) @ E. A step then costs
two matrix-vector products over E and one [vocab, hidden] product, with no [positions, vocab]
temporary. When E does not fit the memory budget, or a normaliser underflows (a delta so large
that the probability mass moves to tokens whose cached E is below float32's range), the step
recomputes the logits chunk by chunk and takes an exact softmax pass instead.
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

        self.cache = None
        if head.is_affine and cache_fits and positions > 0:
            self.cache = _ExpCache.build(self._project(slice(0, positions)), targets)

    def evaluate(self, delta: torch.Tensor, with_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (loss [batch], grad [batch, hidden] or None) at delta [batch, hidden] float32."""
        if not self.head.is_affine:
            return self._autograd(delta, with_grad)
        shift = self.head.delta_logits(delta)  # [batch, vocab]
        if self.cache is not None:
            cached = self.cache.evaluate(shift, self.targets, with_grad)
            if cached is not None:
                loss, logit_grad = cached
                return self._finish(loss, logit_grad)
        return self._streamed(shift, with_grad)

    def _finish(self, loss, logit_grad):
        counts = self.targets.counts
        if logit_grad is None:
            return loss / counts, None
        grad = self.head.grad_from_logit_grad(logit_grad / counts.unsqueeze(1))  # [batch, hidden]
        return loss / counts, grad

    def _streamed(self, shift, with_grad):
        """Exact softmax passes over logits recomputed chunk by chunk from the hidden states."""
        batch = self.targets.batch_size
        loss = torch.zeros(batch, dtype=torch.float32, device=shift.device)
        logit_grad = torch.zeros_like(shift) if with_grad else None

        for chunk in self._chunks():
            rows = self.targets.rows[chunk]
            targets = self.targets.targets[chunk].unsqueeze(1)  # [chunk, 1]
            logits = shift.index_select(0, rows).add_(self._project(chunk))  # [chunk, vocab]

            log_normaliser = torch.logsumexp(logits, dim=-1, keepdim=True)  # [chunk, 1]
            token_loss = (log_normaliser - logits.gather(1, targets)).squeeze(1)  # [chunk]
            loss.index_add_(0, rows, token_loss)

            if with_grad:
                probabilities = logits.sub_(log_normaliser).exp_()  # softmax, [chunk, vocab]
                probabilities.scatter_add_(1, targets, torch.full_like(targets, -1.0, dtype=torch.float32))
                logit_grad.index_add_(0, rows, probabilities)

        return self._finish(loss, logit_grad)

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


#: Smallest softmax normaliser Z trusted on the cached path. Terms of E * u below float32's
#: smallest normal number (about 1.2e-38) are lost; over 2**20 tokens they add at most about 1e-32,
#: a relative error below 1e-12 of a normaliser above this bound.
_MIN_NORMALISER = 1e-20


@dataclass(frozen=True)
class _ExpCache:
    """Base logits of an affine head stored as E = exp(base - m), for the matrix-vector path.

    Attributes:
        exp_base: E, [positions, vocab] float32, every entry in [0, 1].
        max_logit: m, each position's largest base logit, [positions].
        target_logit: each position's base logit of its target token, [positions].
        segments: (row, start, end) per prompt: its positions are exp_base[start:end].
    """

    exp_base: torch.Tensor
    max_logit: torch.Tensor
    target_logit: torch.Tensor
    segments: list[tuple[int, int, int]]

    @classmethod
    def build(cls, base: torch.Tensor, targets: LossTargets) -> "_ExpCache":
        """Turn base logits [positions, vocab] into the cache, reusing their memory."""
        max_logit = base.max(dim=-1).values  # [positions]
        target_logit = base.gather(1, targets.targets.unsqueeze(1)).squeeze(1)  # [positions]
        exp_base = base.sub_(max_logit.unsqueeze(1)).exp_()  # [positions, vocab]

        # loss_targets lists positions row by row, so each prompt's positions are contiguous.
        segments = []
        start = 0
        for row, count in enumerate(torch.bincount(targets.rows, minlength=targets.batch_size).tolist()):
            if count:
                segments.append((row, start, start + count))
            start += count
        return cls(exp_base, max_logit, target_logit, segments)

    def evaluate(self, shift: torch.Tensor, targets: LossTargets, with_grad: bool):
        """Return (summed loss [batch], summed d loss / d logits [batch, vocab] or None).

        Returns None when a normaliser underflows, so the caller takes the exact path.
        """
        shift_max = shift.max(dim=-1, keepdim=True).values  # [batch, 1]
        scaled = torch.exp(shift - shift_max)  # u, [batch, vocab]
        loss = torch.zeros(shift.shape[0], dtype=torch.float32, device=shift.device)
        logit_grad = torch.zeros_like(shift) if with_grad else None

        for row, start, end in self.segments:
            exp_base = self.exp_base[start:end]  # [n, vocab]
            normaliser = exp_base @ scaled[row]  # Z, [n]
            if not bool((normaliser > _MIN_NORMALISER).all()):
                return None

            row_targets = targets.targets[start:end]
            log_normaliser = self.max_logit[start:end] + normaliser.log() + shift_max[row]
            token_loss = log_normaliser - self.target_logit[start:end] - shift[row, row_targets]
            loss[row] = token_loss.sum()

            if with_grad:
                summed_softmax = (normaliser.reciprocal() @ exp_base) * scaled[row]  # [vocab]
                summed_softmax.index_add_(0, row_targets, torch.full_like(token_loss, -1.0))
                logit_grad[row] = summed_softmax

        return loss, logit_grad
