"""hpo from a notebook: a study on a pandas DataFrame, then the winner trained your own way.

Run it as a script (`python examples/notebook.py`) or paste the cells into Jupyter. It uses
scikit-learn's wine data as a DataFrame, so it runs offline in about a minute on 2 cores.
(The built-in model trains in this process. A study on the reference engine, or with your own
`[model] builder`, trains in a child process that imports this file again: in a script, put
the calls under `if __name__ == "__main__":`.)
"""

# %% A DataFrame, as you would have it in a notebook
import logging

import pandas as pd
from sklearn.datasets import load_wine

import hpo

logging.basicConfig(level=logging.INFO, format="%(message)s")  # hpo's progress lines
logging.getLogger("hpo.worker").setLevel(logging.WARNING)  # ... but not one line per trial

wine = load_wine(as_frame=True)
frame = wine.frame.assign(target=[wine.target_names[i] for i in wine.target])

# %% The study: the same keys as a study file, as a dict (a path or a StudySpec work too)
study_definition = {
    "study": {"name": "wine-notebook"},
    "data": {"dataset": "sklearn:wine", "target": "target"},  # `data=` below wins
    "cv": {"folds": 5, "seed": 42},
    "model": {"hidden": [32, 16], "epochs": 40},
    "search": {"l1": [1e-6, 1e-2], "l2": [1e-6, 1e-2]},
}
study = hpo.optimize(
    study_definition, data=frame, n_trials=10, storage="sqlite:///notebook.db"
)  # an optuna.Study: resume it, `hpo dashboard`, `hpo report wine-notebook` as usual

print(f"best trial {study.best_trial.number}: CV accuracy {study.best_value:.4f}")
print(study.trials_dataframe(attrs=("number", "value", "params"))[["number", "value"]])

# %% The winner's plan, re-scored with another training seed (how noisy is the winner?)
plan = hpo.best_plan("wine-notebook", storage="sqlite:///notebook.db")
again = hpo.evaluate_plan(study_definition, plan, frame, seed=7)
print(
    f"same plan, seed 7: {again.accuracy:.4f} (folds {', '.join(f'{a:.3f}' for a in again.fold_accuracies)})"
)

# %% The winner as a Keras model, to train your own way on your own preprocessing
features = pd.get_dummies(frame.drop(columns="target")).astype("float32")
features = (features - features.mean()) / features.std()
labels = frame["target"].astype("category").cat.codes.to_numpy()
model = hpo.build_model(study_definition, plan, n_features=features.shape[1], n_classes=3)
model.fit(features.to_numpy(), labels, epochs=40, batch_size=32, verbose=0)
print(
    f"winner trained on all rows: training accuracy {model.evaluate(features.to_numpy(), labels, verbose=0)[1]:.4f}"
)
