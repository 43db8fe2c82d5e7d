"""Distillation from the unpruned baseline: the loss, the loop, the pipeline setting.

The loss is checked against its definition; the loop must pull a student towards its teacher
(a property the labels alone would not give); the pipeline must still leave the frozen core
bit-identical when the teacher is on, and refuse a weight outside [0, 1] before training.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from elastiserve_train import loop
from elastiserve_train.data import generated
from elastiserve_train.nested import NestedState
from elastiserve_train.pipeline import Pipeline, PipelineConfig
from tests.training.core_checks import assert_core_unchanged

torch.set_num_threads(1)


def test_weight_zero_is_plain_cross_entropy() -> None:
    student, teacher = torch.randn(8, 5), torch.randn(8, 5)
    labels = torch.randint(0, 5, (8,))
    got = loop.distillation_loss(student, teacher, labels, 0.0, 4.0)
    assert torch.allclose(got, F.cross_entropy(student, labels))


def test_soft_term_matches_its_definition_and_vanishes_on_agreement() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 5), torch.randn(8, 5)
    labels = torch.randint(0, 5, (8,))
    t = 3.0
    p_teacher = F.softmax(teacher / t, dim=1)
    kl = (p_teacher * (p_teacher.log() - F.log_softmax(student / t, dim=1))).sum(1).mean()
    expected = 0.25 * F.cross_entropy(student, labels) + 0.75 * t * t * kl
    assert torch.allclose(loop.distillation_loss(student, teacher, labels, 0.75, t), expected,
                          atol=1e-6)
    assert float(loop.distillation_loss(student, student, labels, 1.0, t)) == pytest.approx(
        0.0, abs=1e-6)


def _disagreement(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.kl_div(F.log_softmax(student(x), 1), F.log_softmax(teacher(x), 1),
                              reduction="batchmean", log_target=True))


def test_training_on_the_teacher_alone_pulls_the_student_towards_it() -> None:
    data = generated(n_train=64, n_test=16, channels=1, size=8)
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    torch.manual_seed(1)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    torch.manual_seed(2)
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    x = next(loop.batches(data.test, mean, std, 16, 0, train=False))[0]
    before = _disagreement(student, teacher, x)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    loop.train(student, data.train, mean, std,
               loop.TrainConfig(epochs=20, lr=0.05, batch_size=16, distill=1.0,
                                temperature=1.0),
               teacher=teacher)
    assert _disagreement(student, teacher, x) < 0.5 * before
    for name, value in teacher.state_dict().items():  # the teacher only teaches
        assert torch.equal(value, teacher_state[name])


def test_loop_refuses_a_weight_without_teacher_or_out_of_range() -> None:
    data = generated(n_train=16, n_test=8, channels=1, size=8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    with pytest.raises(ValueError, match="needs a teacher"):
        loop.train(model, data.train, mean, std, loop.TrainConfig(epochs=1, distill=0.5))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        loop.train(model, data.train, mean, std, loop.TrainConfig(epochs=1, distill=1.5),
                   teacher=model)
    with pytest.raises(ValueError, match="temperature"):
        loop.train(model, data.train, mean, std,
                   loop.TrainConfig(epochs=1, distill=0.5, temperature=0.0), teacher=model)


@pytest.mark.parametrize("weight", [-0.1, 1.01])
def test_pipeline_refuses_an_out_of_range_weight_up_front(weight: float) -> None:
    with pytest.raises(ValueError, match=r"--distill must be in \[0, 1\]"):
        PipelineConfig(distill=weight)


def _config(distill: float) -> PipelineConfig:
    return PipelineConfig(arch="resnet20", arch_args={"in_channels": 1, "num_classes": 4,
                                                      "width_mult": 0.25},
                          baseline_epochs=0.5, core_epochs=0.5, grow_epochs=1.0, batch_size=16,
                          distill=distill)


def test_distilled_growth_keeps_the_core_bit_identical(tmp_path: Path) -> None:
    data = generated(n_train=32, n_test=16, channels=1, size=8)
    pipe = Pipeline(_config(0.7), data, tmp_path)
    pipe.baseline()
    pipe.prune()
    pipe.core()
    before = NestedState.load(tmp_path / "core")
    pipe.grow(1)
    after = NestedState.load(tmp_path / "grow1")
    assert_core_unchanged(before, after)


def test_a_run_written_before_the_setting_existed_resumes(tmp_path: Path) -> None:
    data = generated(n_train=32, n_test=16, channels=1, size=8)
    pipe = Pipeline(_config(0.0), data, tmp_path)
    pipe.baseline()
    state = json.loads((tmp_path / "state.json").read_text())
    del state["config"]["distill"]  # as an older version wrote it
    (tmp_path / "state.json").write_text(json.dumps(state))
    resumed = Pipeline(_config(0.0), data, tmp_path)
    assert resumed.done("baseline")
    with pytest.raises(ValueError, match="different configuration"):
        Pipeline(_config(0.5), data, tmp_path)
