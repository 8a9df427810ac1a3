"""Structured config schemas of the training app.

Hydra merges the YAML files under ``conf/`` into these dataclasses, so a misspelt key or a value
of the wrong type fails at composition, before any work. Values that a type cannot check (a
model name, a solver, a precision) are checked by :func:`validate`, which names the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, ListConfig, OmegaConf

PRECISIONS = ("32", "bf16")
LOSSES = ("last", "mean", "progressive")
SCHEDULES = ("cosine", "multistep", "constant")
LOGGER_MODES = ("auto", "online", "offline", "disabled")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ODEConfig:
    """Solver settings of ODE stages; None keeps the model's default."""

    t_end: float | None = None  # integration end time of the trained steps
    solver: str | None = None  # a torchdiffeq method: euler, rk4, dopri5, ...
    rtol: float | None = None  # adaptive solvers' relative tolerance
    atol: float | None = None  # adaptive solvers' absolute tolerance
    step_size: float | None = None  # fixed-step solvers' step (None: one step per readout)
    adjoint: bool | None = None  # backpropagate by solving the adjoint ODE (O(1) memory)
    max_nfe: int | None = None  # stop a solve past this many evaluations (0: no cap)


@dataclass
class ModelConfig:
    """A registered model by name, or a ResNet from arguments; None keeps the default."""

    name: str | None = None  # registered name (cortexnet.list_models()); None: build a ResNet
    blocks_per_stage: list[int] | None = None  # depth of each stage
    widths: list[int] | None = None  # output channels of each stage
    block: str | None = None  # basic, bottleneck, preact_basic, preact_bottleneck
    dynamics: Any = None  # feedforward, recurrent, ode, or a list with one per stage
    num_steps: Any = None  # unroll length of recurrent/ODE stages (int or list)
    shared_blocks: int | None = None  # shared blocks per recurrent stage
    norm: str | None = None  # batch, group, none, step_batch
    ode_norm: str | None = None  # norm inside ODE functions
    stem: str | None = None  # cifar (3x3) or imagenet (7x7 + max-pool)
    stem_width: int | None = None  # channels after the stem
    shortcut: str | None = None  # A (zero-pad identity) or B (1x1 projection)
    recall: bool | None = None  # re-inject a recurrent stage's input at every step
    head: str | None = None  # classify (pool + linear) or pixel (per-pixel logits)
    checkpoint_every: int | None = None  # activation checkpointing interval (0: off)
    # Cortex models (conf/model/cortex.yaml)
    area_names: list[str] | None = None  # names of the areas, bottom to top
    strides: list[int] | None = None  # stride into each area
    connections: str | None = None  # B, BL, BT or BLT
    ode: ODEConfig = field(default_factory=ODEConfig)


@dataclass
class DataConfig:
    """Where the data come from."""

    name: str = "digits"  # digits, cifar10, cifar100, mnist, fashion_mnist, mazes
    root: str | None = None  # folder of the real image sets (default ./data)
    download: bool = False  # fetch the published archive when missing
    augment: str | None = None  # none, shift, crop, crop_flip (None: the set's usual one)
    # Mazes only
    train_size: int = 5  # cells per side of training mazes
    test_sizes: list[int] = field(default_factory=lambda: [5, 7, 9])  # evaluated sizes
    num_test: int = 200  # mazes per test size
    batches_per_epoch: int = 50  # fresh training mazes are drawn for every batch


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, stepped every batch: linear warm-up, then a decay."""

    name: str = "cosine"  # cosine, multistep, constant
    warmup_epochs: float = 0.0  # linear warm-up from 0 (fractions allowed)
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # multistep, as
    # fractions of training
    gamma: float = 0.1  # multistep decay factor
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of the peak


@dataclass
class TrainerConfig:
    """The loop: length, device, precision, evaluation and checkpoints."""

    epochs: int = 15
    batch_size: int = 64
    device: str = "auto"  # auto (cuda when present), cpu, cuda
    precision: str = "32"  # 32 or bf16 (autocast; meant for CUDA)
    deterministic: bool = False  # torch deterministic algorithms (slower on CUDA)
    eval_every: int = 1  # evaluate every this many epochs (and after the last)
    checkpoint_every: int = 1  # write last.pt every this many epochs (and after the last)
    eval_steps: int | None = None  # steps recurrent/ODE models run at evaluation (None: trained)
    loss: str = "last"  # last: the last step's readout; mean: the mean over every step's readout;
    # progressive: Bansal et al. 2022, for a recurrent last stage (cortexnet.train.recurrent)
    progressive_weight: float = 0.5  # weight of the progressive term (loss=progressive)
    tbptt: int | None = None  # gradient through only the last this many steps (None: all)
    grad_clip: float = 0.0  # clip the gradient norm to this (0: off)
    resume: bool = False  # continue from checkpoints/last.pt in the run directory
    stop_after: int | None = None  # end this process after this many epochs (resume later)
    progress: bool = True  # show a progress bar
    threads: int | None = None  # torch CPU threads (None: torch's default)
    channels_last: bool = False  # channels-last memory format for model and inputs
    compile: bool = False  # torch.compile the model (tens of seconds cold on a CPU)
    fused_optimizer: bool = True  # fused optimizer kernel on CUDA, foreach elsewhere
    cudnn_benchmark: bool = True  # let cuDNN pick convolution algorithms (CUDA only)
    sync_bn: bool = False  # synchronize batch-norm statistics over DDP ranks (GPUs only)
    handle_signals: bool = True  # SIGUSR2/SIGTERM: finish the batch, write last.pt, then exit


@dataclass
class LoggerConfig:
    """Weights & Biases; metrics always go to metrics.jsonl first."""

    mode: str = "auto"  # auto (online with a key, else offline), online, offline, disabled
    project: str = "cortexnet"
    entity: str | None = None
    group: str | None = None  # default: the sweep's name in a multirun
    job_type: str | None = None  # default: the model choice
    name: str | None = None  # default: the run's overrides
    tags: list[str] = field(default_factory=list)
    init_timeout: float = 60.0  # seconds wandb may take to start before it is skipped


@dataclass
class Config:
    """The whole configuration; ``optim`` is checked by its own schema (conf/optim/*)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: Any = MISSING
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0  # seeds weights, data order and augmentation
    out_dir: str | None = None  # run directory (default: Hydra's)


@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4


@dataclass
class AdamWConfig:
    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    lr: float = 3e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01


def pick(key: str, options: dict[str, Any]) -> Any:
    """The ``pick`` resolver: ``${pick:KEY,{a: ..., b: ...}}`` is the option named KEY.

    With KEY a config-group choice (``${hydra:runtime.choices.model}``) one swept key can set
    other keys per variant, as conf/experiment/compare_params.yaml does.

    Raises:
        ConfigError: when KEY is not one of the options.
    """
    if key not in options:
        raise ConfigError(f"pick: {key!r} is not one of the options; valid: {', '.join(options)}")
    return options[key]


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore and the ``pick`` resolver (idempotent)."""
    if not OmegaConf.has_resolver("pick"):
        OmegaConf.register_new_resolver("pick", pick)
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="optim", name="sgd_schema", node=SGDConfig)
    cs.store(group="optim", name="adamw_schema", node=AdamWConfig)


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the key."""


def _choice(key: str, value: Any, valid: tuple[str, ...] | list[str]) -> None:
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is not valid; valid: {', '.join(map(str, valid))}")


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]


def validate(cfg: Any) -> None:
    """Check the values that types cannot: names, ranges and combinations.

    Raises:
        ConfigError: naming the key, the bad value and the valid ones.
    """
    from cortexnet.data.datasets import DATASETS
    from cortexnet.models import BLOCKS, DYNAMICS, NORMS, SOLVERS, list_models

    m, t, d = cfg.model, cfg.trainer, cfg.data
    if m.name is not None:
        _choice("model.name", m.name, list_models())
    if m.block is not None:
        _choice("model.block", m.block, BLOCKS)
    for key in ("norm", "ode_norm"):
        if m[key] is not None:
            _choice(f"model.{key}", m[key], NORMS)
    for value in _as_list(m.dynamics):
        if value is not None:
            _choice("model.dynamics", value, DYNAMICS)
    for value in _as_list(m.num_steps):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"model.num_steps={value!r} is not valid; it must be an integer >= 1")
    if m.ode.solver is not None:
        _choice("model.ode.solver", m.ode.solver, SOLVERS)
    if m.ode.t_end is not None and m.ode.t_end <= 0:
        raise ConfigError(f"model.ode.t_end={m.ode.t_end} is not valid; it must be > 0")
    if m.connections is not None:
        _choice("model.connections", m.connections, ("B", "BL", "BT", "BLT"))
    if m.head is not None:
        _choice("model.head", m.head, ("classify", "pixel"))
    _choice("data.name", d.name, [*DATASETS, "mazes"])
    if d.augment is not None:
        _choice("data.augment", d.augment, ("none", "shift", "crop", "crop_flip"))
    _choice("trainer.precision", t.precision, PRECISIONS)
    _choice("trainer.device", t.device, DEVICES)
    _choice("trainer.loss", t.loss, LOSSES)
    _choice("schedule.name", cfg.schedule.name, SCHEDULES)
    _choice("logger.mode", cfg.logger.mode, LOGGER_MODES)
    for key, value, low in (
        ("trainer.epochs", t.epochs, 1),
        ("trainer.batch_size", t.batch_size, 1),
        ("trainer.eval_every", t.eval_every, 1),
        ("trainer.checkpoint_every", t.checkpoint_every, 1),
        ("trainer.eval_steps", t.eval_steps, 1),
        ("trainer.tbptt", t.tbptt, 1),
        ("trainer.stop_after", t.stop_after, 1),
        ("seed", cfg.seed, 0),
    ):
        if value is not None and value < low:
            raise ConfigError(f"{key}={value} is not valid; it must be >= {low}")
    if t.grad_clip < 0:
        raise ConfigError(f"trainer.grad_clip={t.grad_clip} is not valid; it must be >= 0 (0: off)")
    if not 0 <= t.progressive_weight <= 1:
        raise ConfigError(
            f"trainer.progressive_weight={t.progressive_weight} is not valid; it must be in [0, 1]"
        )
    if t.tbptt is not None and t.loss == "mean":
        raise ConfigError(
            "trainer.tbptt is not valid with trainer.loss=mean (the readouts of the truncated "
            "steps would carry no gradient); use trainer.loss=last or progressive"
        )
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr={cfg.optim.lr} is not valid; it must be > 0")
