"""Training on several devices or machines (``train.distribute``), by the backends' own engines.

``choices`` holds the options and the checks the recipe reader asks (Keras-free); ``engines``
starts them for training (``multiseg.trainer``). See docs/distribution.md.

Nothing is imported here: the recipe reader imports ``choices``, which must stay Keras-free.
"""
