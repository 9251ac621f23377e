"""Learned and scheduled loss weighting (``train.weighting``).

- ``choices``: the methods' records (options, checks), Keras-free, read by the recipe (this
  package imports nothing, so that reading a recipe does not start Keras);
- ``state``: each loss-level method's state and update rule, a layer owned by the model;
- ``gradient``: the gradient-level methods' rules (on the Gram matrix of the heads' trunk
  gradients) and state; ``steps``: their training step, one per backend;
- ``model``: ``WeightedModel`` (the total loss from that layer), the model a recipe builds,
  the current weights, and the plain model that ``model.keras`` holds.
"""
