"""Held-out validation prompts for detecting a delta that over-fits its own prompt.

A delta fitted to one prompt should not make the model worse at other text. The validation loss is
the mean, over the validation prompts, of each prompt's mean next-token loss with the delta added.
The prompts' hidden states do not depend on delta, so they are computed once per set and every later
check costs only head work: one softmax pass over the cached validation logits per delta.
"""

import torch

from slot_core.compat import body_of, run_body
from slot_core.head import read_head
from slot_core.objective import PromptObjective, loss_targets
from slot_core.optimize import DEFAULT_MEMORY_BUDGET_MB
from slot_core.prompts import Prompt, encode_prompt, left_pad, pad_token_id


class ValidationSet:
    """Validation prompts prepared for one model: their hidden states and cached logits."""

    def __init__(self, model, tokenizer, prompts: list[Prompt],
                 memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB):
        """Run the transformer body once over the prompts.

        Raises:
            ValueError: `prompts` is empty or a prompt encodes to fewer than two tokens.
        """
        if not prompts:
            raise ValueError("a validation set needs at least one prompt")
        token_lists = [encode_prompt(tokenizer, prompt) for prompt in prompts]
        short = [index for index, tokens in enumerate(token_lists) if len(tokens) < 2]
        if short:
            raise ValueError(f"validation prompts {short} have fewer than two tokens, so they have no loss")

        device = next(model.parameters()).device
        batch = left_pad(token_lists, pad_token_id(tokenizer), device)
        with torch.no_grad():
            hidden, _ = run_body(body_of(model), batch.input_ids, batch.attention_mask,
                                 batch.position_ids)  # [prompts, seq, hidden]

        self.size = len(prompts)
        self.hidden_size = hidden.shape[-1]
        self._device = device
        targets = loss_targets(hidden, batch.input_ids, batch.attention_mask)
        self._objective = PromptObjective(read_head(model), targets, memory_budget_mb * 2**20)
        self.base_loss = float(self.losses(torch.zeros(1, self.hidden_size))[0])

    def losses(self, deltas: torch.Tensor) -> torch.Tensor:
        """Return the validation loss at each delta of [k, hidden], as float32 [k].

        A non-finite delta gets an infinite loss.
        """
        results = torch.empty(deltas.shape[0], dtype=torch.float32)
        with torch.no_grad():
            for index, delta in enumerate(deltas):
                if not bool(torch.isfinite(delta).all()):
                    results[index] = float("inf")
                    continue
                repeated = delta.to(self._device, torch.float32).expand(self.size, -1)  # [prompts, hidden]
                per_prompt, _ = self._objective.evaluate(repeated, with_grad=False)  # [prompts]
                results[index] = per_prompt.mean()
        return results
