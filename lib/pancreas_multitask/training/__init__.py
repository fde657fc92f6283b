"""Training: the multitask trainer (``trainers/``, the folder nnUNet_extTrainer points at) and its parts."""
