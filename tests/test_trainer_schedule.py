"""LR schedules and the per-optimizer scheduler override used by two-optimizer (GAN) tasks."""
import pytest

from xytok.train.trainer import lr_lambda_factory, scheduler_conf_for


def test_warmup_then_cosine_to_floor():
    f = lr_lambda_factory({"type": "cosine", "warmup_steps": 4, "min_lr_ratio": 0.1}, max_steps=14)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(4) == pytest.approx(1.0)
    assert f(9) == pytest.approx(0.55)          # half-way: floor + (1 - floor) / 2
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="unknown scheduler type 'step'"):
        lr_lambda_factory({"type": "step"}, max_steps=10)


def test_per_optimizer_scheduler_overrides_the_shared_one():
    config = {
        "scheduler": {"type": "cosine", "warmup_steps": 0, "min_lr_ratio": 0.0},
        "optim": {
            "generator": {"lr": 1e-4, "scheduler": {"type": "constant", "warmup_steps": 10}},
            "discriminator": {"lr": 2e-4},
        },
    }
    gen = scheduler_conf_for(config, "generator")
    disc = scheduler_conf_for(config, "discriminator")
    assert gen == {"type": "constant", "warmup_steps": 10, "min_lr_ratio": 0.0}
    assert disc == config["scheduler"]
    assert lr_lambda_factory(gen, 100)(4) == pytest.approx(0.5)
    assert lr_lambda_factory(disc, 100)(4) == pytest.approx(lr_lambda_factory(config["scheduler"], 100)(4))
    # a single-optimizer task whose optim section is flat keeps the shared schedule
    assert scheduler_conf_for({"scheduler": {"type": "linear"}, "optim": {"lr": 1.0}}, "stage1") == {"type": "linear"}
