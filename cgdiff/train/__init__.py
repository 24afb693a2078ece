"""Training: state (params, optimizer, EMA, step), the pmapped step, checkpoints, writers and the loop."""

from cgdiff.train.loop import Preempted, TrainLoopConfig, train
from cgdiff.train.state import TrainState, create_state, make_optimizer

__all__ = ["Preempted", "TrainLoopConfig", "TrainState", "create_state", "make_optimizer", "train"]
