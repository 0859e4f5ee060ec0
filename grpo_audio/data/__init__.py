"""Data: the dataset row type, loaders, collators and the synthetic music-theory corpus."""
