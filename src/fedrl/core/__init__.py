"""Pure maths on flat float32 parameter vectors: layouts, updates and server strategies.

Nothing here imports torch, a transport or the file system.
"""

from fedrl.core.aggregation import Rejection, Screened, screen
from fedrl.core.params import ParamSpec
from fedrl.core.scaffold import scaffold_client_control
from fedrl.core.strategies import STRATEGY_CONFIGS, Strategy, StrategyConfig, make_strategy
from fedrl.core.update import Update

__all__ = [
    "STRATEGY_CONFIGS",
    "ParamSpec",
    "Rejection",
    "Screened",
    "Strategy",
    "StrategyConfig",
    "Update",
    "make_strategy",
    "scaffold_client_control",
    "screen",
]
