"""The order a run draws its prompts in: a seeded permutation of the training rows per epoch, walked by every
process alike, so that each takes its own slice of the same global batch and a resumed run goes on where it was.
"""

from __future__ import annotations

import numpy as np


class PromptOrder:
    """Where a run is in its walk over ``n_rows`` training rows: ``epoch`` (whose permutation, from ``seed`` and the
    epoch, is walked) and ``cursor`` (the next position in it); a checkpoint keeps the two.

    >>> order = PromptOrder(3, seed=0)
    >>> first = order.take(3)
    >>> sorted(first), (order.epoch, order.cursor)
    ([0, 1, 2], (0, 3))
    >>> len(order.take(2)), (order.epoch, order.cursor)
    (2, (1, 2))
    """

    def __init__(self, n_rows: int, seed: int, epoch: int = 0, cursor: int = 0):
        self.n_rows, self.seed = n_rows, seed
        self.epoch, self.cursor = epoch, cursor
        self.order = self.permutation(epoch)

    def permutation(self, epoch: int) -> list[int]:
        """The rows' order in ``epoch``."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_rows).tolist()

    def take(self, count: int) -> list[int]:
        """The next ``count`` row indices, an epoch's order followed by the next's where it runs out."""
        indices = []
        while len(indices) < count:
            if self.cursor >= len(self.order):
                self.epoch, self.cursor = self.epoch + 1, 0
                self.order = self.permutation(self.epoch)
            indices.append(self.order[self.cursor])
            self.cursor += 1
        return indices
