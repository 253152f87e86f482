"""A model of your own for hpo: `[model] builder = "models:wide_and_deep"` in a study file.

hpo calls the function with the data's shape and searches an L1/L2 penalty (alphas and
activity/kernel placement) for every Dense and Conv layer except the output one, by layer name:
here `wide`, `deep_1` and `deep_2` (parameters `wide_l1`, `deep_1_placement`, ...). Keep the
names unique; return the model uncompiled to use the study's optimizer, or compiled to keep
yours.
"""

import keras


def wide_and_deep(n_features: int, n_classes: int) -> keras.Model:
    inputs = keras.Input(shape=(n_features,), name="features")
    wide = keras.layers.Dense(32, activation="relu", name="wide")(inputs)
    deep = keras.layers.Dense(32, activation="relu", name="deep_1")(wide)
    deep = keras.layers.BatchNormalization(name="norm")(deep)
    deep = keras.layers.Dense(32, activation="relu", name="deep_2")(deep)
    joined = keras.layers.Add(name="skip")([wide, deep])
    joined = keras.layers.Dropout(0.1, name="dropout")(joined)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="classes")(joined)
    return keras.Model(inputs, outputs, name="wide_and_deep")
