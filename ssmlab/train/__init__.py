"""Training: one trainer for every (model, task) pair."""

from ssmlab.train.trainer import TrainConfig, TrainResult, make_optimizer, train
