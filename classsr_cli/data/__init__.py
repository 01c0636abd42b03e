"""Training and test data: prepare-data, the sub-image dataset, and the Test2K/4K/8K builder."""
