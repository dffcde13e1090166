import torch

from slot_core import SlotConfig
from slot_core.adamw import BatchedAdamW


def test_matches_torch_adamw_per_row():
    configs = [SlotConfig(lr=0.1), SlotConfig(lr=0.003, weight_decay=0.01, betas=(0.8, 0.99), eps=1e-3)]
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(2, 16, generator=generator) for _ in range(6)]

    optimizer = BatchedAdamW(configs, 16, torch.device("cpu"))
    delta = torch.zeros(2, 16)
    for grad in grads:
        delta = optimizer.step(delta, grad, torch.tensor([True, True]))

    for row, config in enumerate(configs):
        expected = torch.zeros(16, requires_grad=True)
        reference = torch.optim.AdamW([expected], lr=config.lr, betas=config.betas, eps=config.eps,
                                      weight_decay=config.weight_decay)
        for grad in grads:
            expected.grad = grad[row].clone()
            reference.step()
        torch.testing.assert_close(delta[row], expected.detach(), rtol=1e-5, atol=1e-7)


def test_inactive_rows_keep_delta_and_state():
    optimizer = BatchedAdamW([SlotConfig(), SlotConfig()], 4, torch.device("cpu"))
    delta = torch.ones(2, 4)
    updated = optimizer.step(delta, torch.ones(2, 4), torch.tensor([True, False]))

    assert torch.equal(updated[1], delta[1])
    assert not torch.equal(updated[0], delta[0])
    assert torch.equal(optimizer.exp_avg[1], torch.zeros(4))
    assert optimizer.step_count[:, 0].tolist() == [1.0, 0.0]


def test_step_leaves_input_unchanged():
    optimizer = BatchedAdamW([SlotConfig()], 4, torch.device("cpu"))
    delta = torch.zeros(1, 4)
    optimizer.step(delta, torch.ones(1, 4), torch.tensor([True]))
    assert torch.equal(delta, torch.zeros(1, 4))
