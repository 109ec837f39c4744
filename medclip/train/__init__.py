"""Training: a Lightning module and data module for the dual encoder, and ``fit`` from a YAML config.

``fit(config)`` trains and returns the exported model folder; ``load_config(path, overrides)`` reads a
config with dotted ``key=value`` overrides. See ``medclip/train/README.md`` for single CPU/GPU,
multi-GPU, multi-node (torchrun, SLURM), bf16, FSDP and resume.
"""

from medclip.train.config import DEFAULTS, ConfigError, load_config
from medclip.train.data import MedClipDataModule, ReportCollator
from medclip.train.fit import fit
from medclip.train.module import DualEncoderModule

__all__ = [
    "DEFAULTS",
    "ConfigError",
    "DualEncoderModule",
    "MedClipDataModule",
    "ReportCollator",
    "fit",
    "load_config",
]
