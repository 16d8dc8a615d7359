"""Datasets and the LightningDataModule that serves them."""
