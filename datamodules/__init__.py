"""LightningDataModules that produce typed batches."""
