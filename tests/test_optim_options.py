"""The trainers' fused optimizers: available where torch has them, SGD's steps equal to the loop's
up to the last bits (the fused kernel uses FMA in its vector body)."""

import torch

from brainsparse.train.common import fused_optimizer_options


def test_fused_sgd_takes_the_loops_steps_up_to_rounding():
    options = fused_optimizer_options("cpu", torch.optim.SGD)
    assert options in ({}, {"fused": True})
    gen = torch.Generator().manual_seed(0)
    loop = [torch.randn(257, generator=gen, requires_grad=True) for _ in range(3)]
    fused = [p.detach().clone().requires_grad_() for p in loop]
    settings = {"lr": 0.025, "momentum": 0.9, "weight_decay": 5e-4}
    opt_loop = torch.optim.SGD(loop, **settings)
    opt_fused = torch.optim.SGD(fused, **settings, **options)
    for _ in range(5):
        for a, b in zip(loop, fused):
            g = torch.randn(257, generator=gen)
            a.grad, b.grad = g.clone(), g.clone()
        opt_loop.step()
        opt_fused.step()
    for a, b in zip(loop, fused):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(opt_loop.state[a]["momentum_buffer"], opt_fused.state[b]["momentum_buffer"],
                                   rtol=1e-6, atol=1e-7)
