"""A deliberately plain SLOT: full forward passes with autograd and torch.optim.AdamW.

It adds delta through a forward pre-hook on the output-embedding layer, so the model's own forward
applies every head transform (bias, scaling, soft-capping). It runs one prompt at a time.
"""

import torch

import slot_core


def reference_fit(model, input_ids: torch.Tensor, config: slot_core.SlotConfig):
    """Fit delta for one unpadded prompt [seq]; return (delta [hidden], loss trace [steps + 1])."""
    hidden_size = model.get_output_embeddings().weight.shape[1]
    delta = torch.zeros(1, hidden_size, requires_grad=True)
    optimizer = torch.optim.AdamW(
        [delta], lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
    )
    trace = []
    for step in range(config.steps + 1):
        loss = reference_loss(model, input_ids, delta)
        trace.append(loss.detach().item())
        if step == config.steps:
            break
        # autograd.grad leaves the model's parameters without .grad, unlike loss.backward().
        (delta.grad,) = torch.autograd.grad(loss, delta)
        optimizer.step()
    return delta.detach()[0], trace


def reference_loss(model, input_ids: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    handle = model.get_output_embeddings().register_forward_pre_hook(
        lambda module, args: (args[0] + delta,)
    )
    try:
        logits = model(input_ids=input_ids.unsqueeze(0)).logits[0]  # [seq, vocab]
    finally:
        handle.remove()
    return torch.nn.functional.cross_entropy(logits[:-1].float(), input_ids[1:])
