"""The run configuration and its presets.

The defaults are the paper's mainline run (Nanda et al. 2023, Appendix A; the released ``transformers.py``):
p = 113, training fraction 0.3, a 1-layer transformer with d_model 128, 4 heads of 32, d_mlp 512, full-batch
AdamW (lr 1e-3, weight decay 1.0, betas (0.9, 0.98)), 10-step linear warm-up, 40,000 epochs and a checkpoint
every 100 epochs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechgrok.errors import ConfigError

__all__ = ["Config", "JsonConfig", "OPERATIONS", "PRESETS", "preset", "recorded"]

#: Operations the task module knows, by name: (a + b), (a - b), (a * b) mod p and (a / b) mod p (b = 1..p-1)
#: (``mechgrok.tasks.modular_arithmetic``; for mul and div the Fourier analyses use discrete-log coordinates,
#: ``mechgrok.tasks.discrete_log``).
OPERATIONS = ("add", "sub", "mul", "div")

#: dtypes of the training log-softmax: float64 (the rule), float32 (the released code's, to study slingshots).
LOSS_DTYPES = ("float64", "float32")


class JsonConfig:
    """What every run configuration shares (``Config`` here, ``SequenceConfig`` of the sequence tasks): a frozen
    dataclass written to ``config.json`` as one JSON object, read back refusing unknown keys."""

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a plain dict (betas as a list)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def to_json(self) -> str:
        """The configuration as one JSON string (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str | Path | None = None):
        """Build a configuration from a dict, refusing unknown keys.

        Raises
        ------
        ConfigError
            On unknown keys or invalid values; the message names ``source`` where given.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}", path=source)
        try:
            return cls(**d)
        except ConfigError as e:
            raise ConfigError(e.reason, path=source) from None
        except (TypeError, ValueError, OverflowError) as e:  # a value of the wrong type ("x" for a float, ...)
            raise ConfigError(str(e), path=source) from None

    @classmethod
    def from_json(cls, text: str, *, source: str | Path | None = None):
        """Parse :meth:`to_json` output.

        Raises
        ------
        ConfigError
            If the text is not a JSON object or holds an invalid configuration.
        """
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"not valid JSON: {e}", path=source) from None
        if not isinstance(d, dict):
            raise ConfigError("the config must be a JSON object", path=source)
        return cls.from_dict(d, source=source)

    def replace(self, **changes: Any):
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Config(JsonConfig):
    """Configuration of one training run; JSON-serialisable.

    Attributes
    ----------
    p : int
        The modulus; must be an odd number >= 3. The vocabulary is the p residues plus the ``=`` token (id p).
    frac_train : float
        Fraction of the task's pairs used for training, in (0, 1): ``int(frac_train * n_pairs)`` pairs are kept
        (``n_pairs`` = p^2, or p (p - 1) for div).
    operation : {"add", "sub", "mul", "div"}
        The task: (a + b), (a - b), (a * b) or (a / b) mod p (division: b ranges over 1..p-1, so the grid has
        p (p - 1) pairs; :data:`OPERATIONS`).
    seed : int
        Seed of the train/test split (Python ``random.seed`` then ``shuffle``, the paper's procedure).
    model_seed : int
        Seed of the weight initialisation (``torch.Generator``); the paper's code had none.
    d_model, n_heads, d_head, d_mlp : int
        Widths. ``d_head * n_heads`` need not equal ``d_model`` but does in the paper (4 x 32 = 128).
    lr : float
        AdamW learning rate after warm-up.
    weight_decay : float
        AdamW (decoupled) weight decay, applied to every parameter.
    betas : tuple of float
        AdamW betas.
    warmup_steps : int
        Linear warm-up length: the learning rate is ``lr * min(step / warmup_steps, 1)``.
    num_epochs : int
        Number of full-batch optimiser steps (one per epoch).
    checkpoint_every : int
        A checkpoint is written at epoch 0, every ``checkpoint_every`` epochs and at ``num_epochs``.
    threads : int
        CPU threads torch uses while training (``torch.set_num_threads``; restored afterwards). Part of the
        recipe: bit-identical reruns need the same thread count (and torch build and CPU code path, see
        ``docs/run-directory.md``). Default 1: a resume or a rerun from ``config.json`` then uses the same count
        whatever the machine has, and small models train fastest on one thread of a busy machine.
    attn_coeff : float
        The attention rate alpha in [0, 1] of Zhong et al. (2023, "The Clock and the Pizza", section 5):
        attention = alpha * softmax(scores) + (1 - alpha), so every weight is 1 at alpha = 0 (constant
        attention, Pizza side) and the paper's softmax at alpha = 1 (default).
    equals_token : bool
        Inputs ``[a, b, =]`` read out at ``=`` (True, the paper's) or ``[a, b]`` read out at b (False, the Pizza
        models': no ``=`` token, vocabulary and classes p).
    causal_mask : bool
        Causal attention (True, the paper's) or none (False, the Pizza models'). Recorded for provenance: the
        read-out position is the last one, whose row of the causal mask is all ones, so in a one-layer model
        the logits are the same either way (``docs/algorithms.md``).
    loss_dtype : {"float64", "float32"}
        dtype of the training log-softmax. Default float64 (mechgrok's rule, paper.md 2.3). ``"float32"``
        reproduces the released ``helpers.py`` (a float32 log-softmax, which rounds probabilities within 2^-24 of
        1), only to study the spiky "slingshot" loss curves it gives (``docs/slingshots.md``); the recorded
        ``train_loss``/``test_loss`` are then the float32 losses.
    """

    p: int = 113
    frac_train: float = 0.3
    operation: str = "add"
    seed: int = 0
    model_seed: int = 0
    d_model: int = 128
    n_heads: int = 4
    d_head: int = 32
    d_mlp: int = 512
    lr: float = 1e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 10
    num_epochs: int = 40_000
    checkpoint_every: int = 100
    threads: int = 1
    attn_coeff: float = 1.0
    equals_token: bool = True
    causal_mask: bool = True
    loss_dtype: str = "float64"
    preset: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        self.validate()

    # Derived sizes -------------------------------------------------------------------------------------
    @property
    def d_vocab(self) -> int:
        """Input vocabulary: p residues plus ``=`` (id p); p without the ``=`` token."""
        return self.p + 1 if self.equals_token else self.p

    @property
    def d_vocab_out(self) -> int:
        """Output classes of the unembedding: p + 1, as in the paper (the ``=`` class is trained against); p
        without the ``=`` token (the Pizza models)."""
        return self.p + 1 if self.equals_token else self.p

    @property
    def n_ctx(self) -> int:
        """Sequence length: ``[a, b, =]`` (3) or ``[a, b]`` (2)."""
        return 3 if self.equals_token else 2

    @property
    def n_pairs(self) -> int:
        """Pairs (a, b) of the task: p^2, or p (p - 1) for division (b = 0 left out)."""
        return self.p * (self.p - 1) if self.operation == "div" else self.p**2

    @property
    def n_train(self) -> int:
        """Number of training pairs, ``int(frac_train * n_pairs)`` (``int(frac_train * p**2)`` but for div)."""
        return int(self.frac_train * self.n_pairs)

    def validate(self) -> None:
        """Check the configuration.

        Raises
        ------
        ConfigError
            If p is not an odd integer >= 3, ``frac_train`` is outside (0, 1), the operation is unknown, or a
            size, learning rate or schedule length is not positive.
        """
        if not isinstance(self.p, int) or self.p < 3 or self.p % 2 == 0:
            raise ConfigError(f"p must be an odd integer >= 3, got {self.p!r}")
        if not (0.0 < float(self.frac_train) < 1.0):
            raise ConfigError(f"frac_train must lie strictly between 0 and 1, got {self.frac_train!r}")
        if self.operation not in OPERATIONS:
            raise ConfigError(f"unknown operation {self.operation!r}; known: {', '.join(OPERATIONS)}")
        if self.operation in ("mul", "div"):
            from mechgrok.tasks.discrete_log import is_prime

            if not is_prime(self.p):
                raise ConfigError(f"operation {self.operation} needs a prime p (a field), got p={self.p}")
        if self.loss_dtype not in LOSS_DTYPES:
            raise ConfigError(f"unknown loss_dtype {self.loss_dtype!r}; known: {', '.join(LOSS_DTYPES)}")
        for name in ("d_model", "n_heads", "d_head", "d_mlp", "num_epochs", "checkpoint_every", "threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.attn_coeff, bool) or not isinstance(self.attn_coeff, (int, float)) or not 0 <= self.attn_coeff <= 1:
            raise ConfigError(f"attn_coeff must be a number in [0, 1], got {self.attn_coeff!r}")
        for name in ("equals_token", "causal_mask"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.n_train < 1 or self.n_train >= self.n_pairs:
            raise ConfigError(f"frac_train={self.frac_train} leaves an empty train or test split for p={self.p}")


#: Named configurations. ``paper`` is the mainline run of Nanda et al.; ``quick`` groks in 2-3 minutes on one CPU
#: thread (135-165 s on a busy 2-core machine) with a clear memorisation stretch (train accuracy 100%, test
#: accuracy low) before generalising.
PRESETS: dict[str, Config] = {
    "paper": Config(preset="paper"),
    "quick": Config(
        p=53,
        frac_train=0.4,
        d_model=48,
        n_heads=4,
        d_head=12,
        d_mlp=192,
        lr=3e-3,
        weight_decay=1.0,
        num_epochs=3000,
        checkpoint_every=50,
        preset="quick",
    ),
}


def preset(name: str, **overrides: Any) -> Config:
    """A named preset, optionally with fields overridden.

    Parameters
    ----------
    name : {"paper", "quick"}
        The preset.
    **overrides
        Fields to change, e.g. ``num_epochs=1000``.

    Raises
    ------
    ConfigError
        If the preset is unknown or an override is invalid.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    try:
        return dataclasses.replace(PRESETS[name], **overrides)
    except TypeError as e:
        raise ConfigError(str(e)) from None


def recorded(attrs: Any, name: str, default: Any) -> Any:
    """A configuration value recorded with a trajectory: ``attrs[name]``, else the ``name`` of its
    ``attrs["config_json"]`` (the run's config), else ``default``.

    Examples
    --------
    >>> recorded({"config_json": '{"attn_coeff": 0.0}'}, "attn_coeff", 1.0), recorded({}, "operation", "add")
    (0.0, 'add')
    """
    if name in attrs:
        return attrs[name]
    try:
        cfg = json.loads(attrs.get("config_json", "{}"))
    except (TypeError, json.JSONDecodeError):
        return default
    return cfg.get(name, default) if isinstance(cfg, dict) else default
