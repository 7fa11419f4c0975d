"""The error types a user can cause; the CLI prints them as one clear line instead of a traceback."""
from .checkpoint import CheckpointError
from .config import ConfigError
from .data import DataError
from .images import ImageError
from .metrics import MetricsError
from .train import TrainingError

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DataError, CheckpointError, ImageError, MetricsError, TrainingError, FileNotFoundError)

__all__ = ["USER_ERRORS", "CheckpointError", "ConfigError", "DataError", "ImageError"]
