"""The scoring code both kinds of endpoint run.

protocol.py (MLflow's scoring protocol, routing rows to partitions, predicting; standalone),
azureml_score.py (the scoring script of the Azure ML many-models deployment) and
environment.yml (its conda environment). shared/deploy/azureml_v2.py ships this folder as
that deployment's code; the local scoring server imports protocol.py.
"""
