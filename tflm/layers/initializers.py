"""Giving every sublayer an initializer of its own."""

import keras


def clone_initializer(initializer):
    """A fresh copy of `initializer`, to hand to one sublayer.

    A Keras 3 initializer without a seed draws one seed when it is constructed, so one
    instance shared by several sublayers gives them all the same starting values. A copy
    made from the config draws a new seed (reproducibly under
    `keras.utils.set_random_seed`). Strings and seeded initializers are returned as they
    are: a string is resolved anew by each layer, and a seed is the caller's choice.
    """
    if not isinstance(initializer, keras.initializers.Initializer):
        return initializer
    config = initializer.get_config()
    if config.get("seed") is not None:
        return initializer
    return initializer.__class__.from_config(config)
