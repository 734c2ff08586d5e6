"""Training the small models that skipstep ships trained (``python -m training.train_wan_tiny``)."""
