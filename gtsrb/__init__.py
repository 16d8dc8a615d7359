"""GTSRB traffic-sign recognition with Lightning and Hydra."""
