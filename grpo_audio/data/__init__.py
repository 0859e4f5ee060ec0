"""Data: the dataset row and its validation, the files rows come from (manifests, the field's benchmark layouts,
the synthetic music-theory corpus) and the collators that turn rows into model batches. It knows the model
families (for their audio limits and prompts) and nothing of training.
"""
