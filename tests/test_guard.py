"""The divergence guard's decisions (training/guard.py; the end-to-end runs are in test_failures.py)."""

from types import SimpleNamespace

import torch

from admin_ds.training.config import FailureConfig
from admin_ds.training.engine import clear_skip, skip_next_step
from admin_ds.training.guard import UpdateGuard, cut_learning_rate


class Fp16Engine:
    """What the guard reads of a DeepSpeed engine in fp16: whether the step was applied, the loss scale."""

    def __init__(self):
        self.applied, self.optimizer = True, SimpleNamespace(cur_scale=2.0 ** 4)

    def was_step_applied(self):
        return self.applied

    def fp16_enabled(self):
        return True


def test_patience_counts_skips_in_a_row_only():
    guard, engine = UpdateGuard(FailureConfig(skip_patience=3), {"fp16": {"min_loss_scale": 1}}), Fp16Engine()
    decisions = []
    for applied in (False, False, True, False, False, False):
        engine.applied = applied
        decisions.append(guard.after_step(engine, len(decisions) + 1))
    assert decisions == [False, False, False, False, False, True]
    assert guard.skipped == 5 and guard.in_a_row == 3


def test_a_skip_at_the_loss_scale_floor_is_divergence_at_once():
    guard, engine = UpdateGuard(FailureConfig(skip_patience=100), {"fp16": {"min_loss_scale": 2}}), Fp16Engine()
    engine.applied = False
    assert not guard.after_step(engine, 1)  # scale 16: still room to go down
    engine.optimizer.cur_scale = 2.0
    assert guard.after_step(engine, 2)


def test_the_guards_own_skip_leaves_weights_and_adam_state_alone():
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([param], lr=0.1)
    param.grad = torch.full((3,), float("inf"))
    engine = SimpleNamespace(optimizer=optimizer)
    skip_next_step(engine)
    optimizer.step()
    assert optimizer.overflow and torch.equal(param.detach(), torch.ones(3)) and not optimizer.state
    clear_skip(engine)
    assert not hasattr(optimizer, "overflow")
    param.grad = torch.ones(3)
    optimizer.step()  # the real step again
    assert not torch.equal(param.detach(), torch.ones(3))


def test_rollback_cuts_base_and_current_learning_rates():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    assert cut_learning_rate(SimpleNamespace(lr_scheduler=schedule), 0.5)
    assert schedule.base_lrs == [0.5] and optimizer.param_groups[0]["lr"] == 0.25
    optimizer.step()  # no gradients: changes nothing, but keeps torch's step order
    schedule.step()
    assert optimizer.param_groups[0]["lr"] == 0.25  # the cut survives the schedule's next step
    assert not cut_learning_rate(SimpleNamespace(lr_scheduler=object()), 0.5)
