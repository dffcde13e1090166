"""AdamW over a batch of independent delta vectors, one row per prompt.

Follows the single-tensor update of `torch.optim.AdamW` (decoupled weight decay, bias-corrected
moments, eps added after the square root), but every row has its own hyperparameters and can be
frozen, so one batch can carry jobs with different learning rates and step counts. The update is
element-wise, so a row's result does not depend on the other rows in the batch.
"""

import torch

from slot_core.config import SlotConfig


class BatchedAdamW:
    """Optimiser state for `delta` of shape [batch, hidden], float32."""

    def __init__(self, configs: list[SlotConfig], hidden_size: int, device: torch.device):
        def column(values: list[float], dtype=torch.float32) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device).unsqueeze(1)  # [batch, 1]

        self.lr = column([c.lr for c in configs])
        self.weight_decay = column([c.weight_decay for c in configs])
        self.eps = column([c.eps for c in configs])
        self.beta1 = column([c.betas[0] for c in configs])
        self.beta2 = column([c.betas[1] for c in configs])
        # Bias corrections in float64, as torch computes them from Python floats: in float32,
        # 1 - 0.999 ** 1 is off by about 1e-5 relative.
        self.beta1_f64 = column([c.betas[0] for c in configs], torch.float64)
        self.beta2_f64 = column([c.betas[1] for c in configs], torch.float64)

        shape = (len(configs), hidden_size)
        self.exp_avg = torch.zeros(shape, dtype=torch.float32, device=device)
        self.exp_avg_sq = torch.zeros(shape, dtype=torch.float32, device=device)
        self.step_count = torch.zeros((len(configs), 1), dtype=torch.float32, device=device)

    def step(self, delta: torch.Tensor, grad: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Return delta after one AdamW step on the rows where `active` [batch] is true.

        Inactive rows keep their delta and optimiser state unchanged. `delta` is not modified.
        """
        rows = active.unsqueeze(1)  # [batch, 1]
        step_count = torch.where(rows, self.step_count + 1, self.step_count)

        decayed = delta * (1 - self.lr * self.weight_decay)
        exp_avg = self.exp_avg + (grad - self.exp_avg) * (1 - self.beta1)
        exp_avg_sq = self.exp_avg_sq * self.beta2 + grad * grad * (1 - self.beta2)

        # Rows that never stepped have step_count 0; clamping keeps their (unused) corrections finite.
        safe_count = step_count.clamp(min=1).double()
        bias_correction1 = (1 - self.beta1_f64**safe_count).float()
        bias_correction2 = (1 - self.beta2_f64**safe_count).float()
        denominator = exp_avg_sq.sqrt() / bias_correction2.sqrt() + self.eps
        updated = decayed - (self.lr / bias_correction1) * exp_avg / denominator

        self.exp_avg = torch.where(rows, exp_avg, self.exp_avg)
        self.exp_avg_sq = torch.where(rows, exp_avg_sq, self.exp_avg_sq)
        self.step_count = step_count
        return torch.where(rows, updated, delta)
