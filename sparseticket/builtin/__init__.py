"""Built-in models and data sets: small networks built from configs, digits and files the user points to."""
