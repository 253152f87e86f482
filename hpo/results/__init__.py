"""The results layer: what people read from a study's storage.

``spec_text`` (the study file in plain words) ← ``artifacts`` (model, confusion matrix and fold
table of the best trials), ``dashboard`` (optuna-dashboard on the storage), ``rerun`` (are the
best trials better beyond seed noise?), ``report`` (one offline HTML page).
"""
