"""Using a trained run: evaluation reports, predictions, the Predictor and exports."""
