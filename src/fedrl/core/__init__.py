"""Pure maths on flat float32 parameter vectors: layouts, updates and server strategies.

Nothing here imports torch, a transport or the file system.
"""

from fedrl.core.params import ParamSpec
from fedrl.core.strategies import Strategy, StrategyConfig, make_strategy
from fedrl.core.update import Update

__all__ = ["ParamSpec", "Strategy", "StrategyConfig", "Update", "make_strategy"]
