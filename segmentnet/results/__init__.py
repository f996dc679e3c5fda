"""Results (Evaluate.py, Predict.py, Report.py): inference, scores, pictures and the report."""
