"""curate training: data pipeline, model, training loop, evaluation and prediction."""
