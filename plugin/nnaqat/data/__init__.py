"""Data: corpus preparers, features, tokens and lhotse data loaders."""
