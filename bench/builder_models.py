"""The builder `bench/builder_speed.py` times: the course network as a functional model."""

import keras


def course_stack(n_features: int, n_classes: int) -> keras.Model:
    inputs = keras.Input(shape=(n_features,))
    hidden = keras.layers.Dense(50, activation="relu", name="h50")(inputs)
    hidden = keras.layers.Dense(25, activation="relu", name="h25")(hidden)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="out")(hidden)
    return keras.Model(inputs, outputs)
