"""Data stages: prepare (download or scan), split, and the LightningDataModule."""
