"""Built-in models and data for experiments: scikit-learn's digits, small CNNs and a transformer."""
