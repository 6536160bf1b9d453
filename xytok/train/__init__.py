"""Training: generic trainer (trainer.py) + tasks (stage1.py, stage2.py); see docs/CONTRACTS.md."""
