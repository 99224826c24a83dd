"""Evaluation core: students, augmentation, the `hard-label` protocol, distribution metrics and
the real-data classifier. Pure torch/numpy; Ray wraps these functions elsewhere."""
from . import classifier
from .metrics import (diversity, distribution_report, fid, mean_l2, mmd2_rbf_unbiased, prdc,
                      prior_fidelity, prior_fidelity_per_class, representativeness)
from .students import STUDENT_CHOICES, ConvNet, ResNet18, ResNetAP10, build_student
from .train import (PROTOCOL, PROTOCOL_VERSION, TrainConfig, eval_epochs, evaluate, lr_at,
                    lr_milestones, pad_to, protocol_epochs, to_float_images, train_and_evaluate)
from . import soft_label_imagenet  # noqa: E402,F401 - registers the soft-label-imagenet protocol with .train

__all__ = [
    "classifier",
    "ConvNet", "ResNet18", "ResNetAP10", "STUDENT_CHOICES", "build_student",
    "PROTOCOL", "PROTOCOL_VERSION", "TrainConfig", "eval_epochs", "evaluate", "lr_at",
    "lr_milestones", "pad_to", "protocol_epochs", "to_float_images", "train_and_evaluate",
    "diversity", "distribution_report", "fid", "mean_l2", "mmd2_rbf_unbiased", "prdc",
    "prior_fidelity", "prior_fidelity_per_class", "representativeness",
]
