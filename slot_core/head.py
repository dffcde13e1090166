"""The language-model head seen as a function of the final hidden states.

SLOT adds delta in front of the head, so the engine needs the head on its own: the output-embedding
weight W [vocab, hidden], its bias b [vocab] if any, and any transform the model applies to the logits
after the projection. A head is affine in delta when that transform is a constant scale (or none):
then logits(H + delta) = logits(H) + s * delta @ W.T, and the engine takes the closed-form path.
"""

from dataclasses import dataclass

import torch

from slot_core.errors import UnsupportedModelError

CLOSED_FORM = "closed_form"
AUTOGRAD = "autograd"


@dataclass(frozen=True)
class LMHead:
    """The head of one model, read without modifying the model.

    Attributes:
        weight: output-embedding matrix W, [vocab, hidden], in the model's dtype, detached.
        bias: head bias b, [vocab], or None.
        scale: constant the logits are multiplied by after the projection (1.0 for most models).
        softcap: final-logit soft-capping value c (logits = c * tanh(logits / c)), or None.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    scale: float
    softcap: float | None

    @property
    def is_affine(self) -> bool:
        return self.softcap is None

    @property
    def path(self) -> str:
        return CLOSED_FORM if self.is_affine else AUTOGRAD

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Compute scaled logits before soft-capping, in float32. hidden: [..., hidden]."""
        logits = torch.matmul(hidden.to(self.weight.dtype), self.weight.T).float()  # [..., vocab]
        if self.bias is not None:
            logits = logits + self.bias.float()
        if self.scale != 1.0:
            logits = logits * self.scale
        return logits

    def finish(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply the model's non-linear logit transform (soft-capping) to projected logits."""
        if self.softcap is None:
            return logits
        return torch.tanh(logits / self.softcap) * self.softcap

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Compute the model's own logits from final hidden states, in float32."""
        return self.finish(self.project(hidden))

    def delta_logits(self, delta: torch.Tensor) -> torch.Tensor:
        """Compute s * delta @ W.T, the logit shift that delta causes on an affine head.

        delta: [batch, hidden] float32. Returns [batch, vocab] float32. W is cast to float32 one
        block of rows at a time, so a half-precision head never needs a full float32 copy.
        """
        blocks = []
        for start in range(0, self.vocab_size, _VOCAB_BLOCK):
            block = self.weight[start : start + _VOCAB_BLOCK].float()  # [block, hidden]
            blocks.append(delta @ block.T)
        shift = torch.cat(blocks, dim=-1)  # [batch, vocab]
        return shift * self.scale if self.scale != 1.0 else shift

    def grad_from_logit_grad(self, logit_grad: torch.Tensor) -> torch.Tensor:
        """Map d loss / d logits summed over positions, [batch, vocab], to d loss / d delta, [batch, hidden]."""
        grad = torch.zeros(
            logit_grad.shape[0], self.weight.shape[1], dtype=torch.float32, device=logit_grad.device
        )
        for start in range(0, self.vocab_size, _VOCAB_BLOCK):
            block = self.weight[start : start + _VOCAB_BLOCK].float()  # [block, hidden]
            grad += logit_grad[:, start : start + _VOCAB_BLOCK] @ block
        return grad * self.scale if self.scale != 1.0 else grad


# Rows of W cast to float32 at once: 8192 rows of a 4096-wide head are 128 MiB.
_VOCAB_BLOCK = 8192


def read_head(model: torch.nn.Module) -> LMHead:
    """Read the head of a Hugging Face causal LM.

    Raises:
        UnsupportedModelError: the model has no output-embedding layer with a weight.
    """
    layer = model.get_output_embeddings()
    weight = getattr(layer, "weight", None)
    if weight is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no output-embedding layer with a weight; "
            "SLOT needs a linear language-model head"
        )

    bias = getattr(layer, "bias", None)
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return LMHead(
        weight=weight.detach(),
        bias=None if bias is None else bias.detach(),
        scale=_logit_scale(text_config),
        softcap=getattr(text_config, "final_logit_softcapping", None) or None,
    )


def _logit_scale(config) -> float:
    # Cohere multiplies the logits by `logit_scale`; Granite divides them by `logits_scaling`.
    scale = getattr(config, "logit_scale", None)
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        return float(scale)
    divisor = getattr(config, "logits_scaling", None)
    if isinstance(divisor, (int, float)) and not isinstance(divisor, bool) and divisor:
        return 1.0 / float(divisor)
    return 1.0
