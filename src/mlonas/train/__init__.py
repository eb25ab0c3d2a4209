"""Evaluation training: searched cells trained from scratch (CIFAR and ImageNet stages)."""

from mlonas.train.cifar import run_train_cifar
from mlonas.train.imagenet import run_train_imagenet

__all__ = ["run_train_cifar", "run_train_imagenet"]
