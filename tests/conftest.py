import os

import pytest

# Tests never reach for the network: wandb stays offline unless a test asks otherwise.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def compose_cfg():
    """Compose the real configs with overrides, as the app does."""
    from hydra import compose, initialize_config_dir

    from cortexnet.train.app import CONF_DIR

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("config", overrides=list(overrides))

    return _compose


# Shrunk settings that keep a training run to about a second on two cores.
TINY = [
    "model.blocks_per_stage=[1,2]",
    "model.widths=[8,16]",
    "trainer.epochs=2",
    "trainer.batch_size=64",
    "schedule.warmup_epochs=0",
    "trainer.progress=false",
    "logger=none",
]


def pytest_configure(config):
    import torch

    # Tiny test models run fastest on one thread, and stay fast on a loaded machine.
    torch.set_num_threads(1)
