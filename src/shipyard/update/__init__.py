"""The `update` stage: retrain from production data, gate, canary, promote or roll back."""
